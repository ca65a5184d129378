/**
 * Where an eviction pass holds the event loop (issue #14 item 4): runs one pass of the real
 * Evictor over a store filled by bench/scale.mjs (SCALE_MODE=fill; pass a copy: the pass
 * evicts) in this process, with a 1 ms timer measuring event-loop gaps, each attributed to
 * the metadata call in progress (or last finished) when it happened. Also the wall time of
 * each step. Usage: node bench/evict-stalls.mjs <storage dir> [evict fraction 0.02] [dist dir]
 * (EVICT_NO_AUTOCHECKPOINT=1: see below)
 */
import path from 'node:path';
import os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';

const [storage, fractionArg, distArg] = process.argv.slice(2);
if (!storage) throw new Error('usage: evict-stalls.mjs <storage dir> [fraction] [dist]');
const dist = path.resolve(distArg ?? path.join(import.meta.dirname, '..', 'dist'));
const { openLocalStorage } = await import(path.join(dist, 'storage', 'local', 'index.js'));
const { Evictor } = await import(path.join(dist, 'cache', 'eviction.js'));
const { storagePaths } = await import(path.join(dist, 'storage', 'paths.js'));
const fraction = Number(fractionArg ?? 0.02);

const paths = storagePaths(storage);
let t = performance.now();
const st = openLocalStorage(paths);
const openMs = performance.now() - t;
const meta = st.metadata;
// EVICT_NO_AUTOCHECKPOINT=1: no WAL checkpoint inside a commit on this connection (is a
// unit's stall the checkpoint's write + fsync?). The WAL then grows for the run; experiment only.
if (process.env.EVICT_NO_AUTOCHECKPOINT === '1') meta.db.db.pragma('wal_autocheckpoint = 0');

let phase = 'idle';
const steps = {};
const gaps = [];
for (const name of ['cachedBytes', 'cachedImages', 'looseBlobs', 'evictImage', 'evictLooseBlob']) {
  const orig = meta[name].bind(meta);
  meta[name] = async (...a) => {
    phase = name;
    const s = performance.now();
    try {
      return await orig(...a);
    } finally {
      const ms = performance.now() - s;
      const x = (steps[name] ??= { n: 0, ms: 0, maxMs: 0 });
      x.n++;
      x.ms += ms;
      x.maxMs = Math.max(x.maxMs, ms);
      phase = `after ${name}`;
    }
  };
}
let last = performance.now();
const tick = setInterval(() => {
  const now = performance.now();
  if (now - last > 20) gaps.push({ ms: Math.round(now - last), phase });
  last = now;
}, 1);
const h = monitorEventLoopDelay({ resolution: 1 });
h.enable();
t = performance.now();
const total = await meta.cachedBytes();
const countMs = performance.now() - t;
const ev = new Evictor(meta, st.blobs, { maxBytes: Math.floor(total * (1 - fraction)), maxAgeMs: null }, {});
phase = 'idle';
t = performance.now();
const r = await ev.run();
const passMs = performance.now() - t;
h.disable();
clearInterval(tick);
gaps.sort((a, b) => b.ms - a.ms);
const byPhase = {};
for (const g of gaps) (byPhase[g.phase] ??= []).push(g.ms);
console.log(JSON.stringify({
  dist, noAutocheckpoint: process.env.EVICT_NO_AUTOCHECKPOINT === '1', openMs: Math.round(openMs), countMs: Math.round(countMs), passMs: Math.round(passMs),
  result: { images: r.images, blobs: r.blobs, bytes: r.bytes },
  steps: Object.fromEntries(Object.entries(steps).map(([k, v]) => [k, { n: v.n, totalMs: Math.round(v.ms), maxMs: Math.round(v.maxMs) }])),
  loopDelayMs: { p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6 },
  gapsOver20ms: gaps.length, worstGaps: gaps.slice(0, 10), gapsByPhase: Object.fromEntries(Object.entries(byPhase).map(([k, v]) => [k, { n: v.length, maxMs: v[0], sumMs: v.reduce((a, b) => a + b, 0) }])),
  loadavg: os.loadavg(),
}, null, 1));
await meta.close();
