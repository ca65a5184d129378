/**
 * The status page: one server-rendered HTML document, no scripts and no external assets.
 * It refreshes itself with `<meta http-equiv="refresh">`, so it works without JavaScript.
 */
import type { StatusSnapshot, UpstreamStatus } from '../ops/status.js';

/** Seconds between reloads of the page. */
export const REFRESH_SECONDS = 5;

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

function formatDuration(seconds: number): string {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return d > 0 ? `${d}d ${h}h ${m}m` : h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${s}s` : `${s}s`;
}

function percent(r: number | null): string {
  return r === null ? '–' : `${(r * 100).toFixed(1)}%`;
}

function stateCell(u: UpstreamStatus): string {
  let text: string = u.state;
  if (u.state === 'offline') text = `offline window${u.offlineSince ? ` since ${u.offlineSince.slice(11, 19)}Z` : ''}`;
  if (u.rateLimit) text += ` · ${u.rateLimit.remaining}${u.rateLimit.limit !== null ? `/${u.rateLimit.limit}` : ''} pulls left`;
  return `<td class="state ${esc(u.state)}" data-state="${esc(u.state)}">${esc(text)}</td>`;
}

function upstreamRow(u: UpstreamStatus): string {
  const served = u.bytesServed.disk + u.bytesServed.fill;
  return `<tr data-upstream="${esc(u.name)}"><td>${esc(u.name)}</td>${stateCell(u)}<td>${u.requests}</td><td>${u.errors}</td>`
    + `<td>${percent(u.hitRatio)} <small>(${u.hits}/${u.lookups})</small></td><td>${formatBytes(served)}</td>`
    + `<td>${formatBytes(u.bytesFetched)}</td><td>${formatBytes(u.bytesSaved)}</td></tr>`;
}

function fillRows(s: StatusSnapshot): string {
  if (s.fills.length === 0) return '<p class="empty">No downloads in progress.</p>';
  const rows = s.fills.map((f) => {
    const what = f.repository === null ? '<em>(not visible to you)</em>' : `${esc(f.repository)} <small>${esc(f.digest ?? '')}</small>`;
    const of = f.size === null ? 'unknown size' : `${formatBytes(f.size)} (${((f.bytes / Math.max(1, f.size)) * 100).toFixed(0)}%)`;
    return `<tr class="fill"><td>${what}</td><td>${esc(f.upstream)}</td><td>${formatBytes(f.bytes)} of ${of}</td><td>${esc(f.startedAt.slice(11, 19))}Z</td></tr>`;
  });
  return `<table id="fills"><thead><tr><th>Blob</th><th>Upstream</th><th>Downloaded</th><th>Started</th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

function errorRows(s: StatusSnapshot): string {
  if (s.recentErrors.length === 0) return '<p class="empty">No upstream errors since start.</p>';
  const rows = s.recentErrors.map((e) => `<tr><td>${esc(e.at.slice(11, 19))}Z</td><td>${esc(e.upstream)}</td><td>${esc(e.message)}</td></tr>`);
  return `<table id="errors"><thead><tr><th>Time</th><th>Upstream</th><th>Error</th></tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

const STYLE = `body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd}
th{background:#f4f4f4}small,.meta,.empty{color:#666}.state.ok{color:#17702f}.state.offline{color:#b00020;font-weight:600}
.state.rate-limited{color:#a15c00;font-weight:600}meter{width:16em}`;

export function renderStatusPage(s: StatusSnapshot): string {
  const max = s.cache.maxBytes;
  const budget = max === null
    ? `${formatBytes(s.cache.bytes)} cached (no cache.maxBytes budget)`
    : `<meter min="0" max="${max}" value="${Math.min(s.cache.bytes, max)}"></meter> ${formatBytes(s.cache.bytes)} of ${formatBytes(max)} (${((s.cache.bytes / max) * 100).toFixed(1)}%)`;
  const ev = s.cache.lastEviction;
  const eviction = ev ? `Last eviction ${esc(ev.at.replace('T', ' ').slice(0, 19))}Z: ${formatBytes(ev.bytes)}, ${ev.blobs} blobs, ${ev.images} images.` : 'No eviction since start.';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="${REFRESH_SECONDS}"><title>regmirror status</title><style>${STYLE}</style></head>
<body><h1>regmirror</h1>
<p class="meta">version ${esc(s.version)} · up ${formatDuration(s.uptimeSeconds)} (since ${esc(s.startedAt.replace('T', ' ').slice(0, 19))}Z) · refreshes every ${REFRESH_SECONDS}s · <a href="/api/v1/status">JSON</a> · <a href="/metrics">metrics</a></p>
<h2>Upstreams</h2>
<table id="upstreams"><thead><tr><th>Upstream</th><th>State</th><th>Requests</th><th>Errors</th><th>Hit ratio</th><th>Served</th><th>Fetched</th><th>Saved</th></tr></thead>
<tbody>${s.upstreams.map(upstreamRow).join('')}</tbody></table>
<p class="meta">Local content (no upstream): ${s.local.lookups} lookups, ${formatBytes(s.local.bytesServed)} served.</p>
<h2>Cache</h2><p id="cache">${budget}</p><p class="meta">${eviction}</p>
<h2>Downloads in progress</h2>${fillRows(s)}
<h2>Recent upstream errors</h2>${errorRows(s)}
</body></html>
`;
}
