/**
 * Store-growth bench (issue #14 item 4): fills a store directly in SQLite with synthetic
 * content (the real schema, created by dist/storage/db.js), then measures the real server
 * process (dist/cli.js serve) and the offline tools against it, and the same against a
 * near-empty store filled by the same code:
 *   start-up time; manifest HEAD by tag and by digest (req/s, p50/p99); tag list and
 *   `_catalog` pages (first and deep); `gc --evict` with cache.maxBytes forcing eviction and
 *   plain `gc` (wall time, peak RSS from VmHWM, HEAD latency on the server meanwhile);
 *   `fsck` (rows/s and MB/s over the blobs that have files).
 *
 * Blob rows are synthetic (no file) except a sample of SCALE_FILES blobs with real content,
 * so fsck reports the rest as missing (expected; counted separately). Half the repositories
 * are pushed (tags), half cached (upstream tags): only cached content is evictable.
 *
 * Env: SCALE_REPOS (10000) SCALE_MANIFESTS (100000) SCALE_BLOBS (1000000) SCALE_FILES (2000)
 * SCALE_FILE_KIB (256) SCALE_BIG_TAGS (10000, extra tags on one repository for deep tag
 * pages) SCALE_SECONDS (5 per HEAD run) SCALE_CONNS (16) SCALE_QUICK=1 (all counts / 20)
 * SCALE_LABEL (result file name suffix) SCALE_KEEP=1 (keep the temp dirs).
 * Results: bench/results/scale/<date>-<label>.json and latest-<label>.md.
 *
 * SCALE_MODE=head-ab: only manifest HEAD, empty and full store served side by side (two
 * server processes) and measured in alternating slices (E F F E ..., SCALE_SLICES, 6), so
 * load from other work on the machine lands on both alike; then the eviction pass on the
 * full store with HEAD load on it (worst latency = the serving stall). SCALE_STORE=<dir>
 * reuses a full store filled before (its `storage/`; `SCALE_KEEP=1` keeps one): filling a
 * million blobs takes minutes to tens of minutes on a busy machine. SCALE_PATHS (20000):
 * distinct HEAD paths per store, capped to what both stores have (the same count on both).
 * SCALE_MODE=fill SCALE_STORE=<new dir>: only fill a full store there (copy it per run: an
 * eviction pass changes it). SCALE_DIST=<dir>: run another build's dist/ (A/B).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import {
  MANIFEST_ACCEPT, MT, ROOT, cleanup, configure, envNum, freePort, genBuffer, installExitHandlers, log, median, request,
  sha256, startProcess, stopProcess, tempDirs, waitReady,
} from './lib.mjs';

const QUICK = process.env.SCALE_QUICK === '1';
const div = QUICK ? 20 : 1;
const FULL = {
  repos: envNum('SCALE_REPOS', 10_000 / div, 2, 1e6),
  manifests: envNum('SCALE_MANIFESTS', 100_000 / div, 2, 1e7),
  blobs: envNum('SCALE_BLOBS', 1_000_000 / div, 4, 1e8),
  files: envNum('SCALE_FILES', 2000 / div, 0, 1e6),
  bigTags: envNum('SCALE_BIG_TAGS', 10_000 / div, 0, 1e6),
};
const FILE_KIB = envNum('SCALE_FILE_KIB', 256, 1, 65536);
FULL.fileKib = FILE_KIB;
// Near-empty: every blob has a file (4 MiB), so its fsck gives the hashing rate in MB/s.
const EMPTY = { repos: 2, manifests: 4, blobs: 40, files: 40, fileKib: 4096, bigTags: Math.min(FULL.bigTags, 200) };
const EVICT_FRACTION = envNum('SCALE_EVICT_FRACTION', 0.02, 0.001, 0.9);
const SECONDS = envNum('SCALE_SECONDS', 5, 1, 600);
const CONNS = envNum('SCALE_CONNS', 16, 1, 256);
const LABEL = (process.env.SCALE_LABEL ?? (QUICK ? 'quick' : 'full')).replace(/[^\w.-]/g, '_');
const RESULTS = path.join(ROOT, 'bench', 'results', 'scale');
const HARD_LIMIT_MS = envNum('SCALE_LIMIT_S', 3600, 60, 6 * 3600) * 1000;
const NODE = process.execPath;
// SCALE_DIST: another build's dist/ (A/B of two builds against the same stores).
const CLI = path.join(process.env.SCALE_DIST ? path.resolve(process.env.SCALE_DIST) : path.join(ROOT, 'dist'), 'cli.js');
const hex = (s) => createHash('sha256').update(s).digest('hex');
const repoName = (i) => `scale/r${String(i).padStart(6, '0')}`;

/** Fills `<dir>/storage` with n.repos repositories of n.manifests/n.repos images each; returns what to request. */
async function fill(dir, n) {
  const storage = path.join(dir, 'storage');
  fs.mkdirSync(storage, { recursive: true });
  const dbFile = path.join(storage, 'regmirror.db');
  const { MetadataDb } = await import(path.join(ROOT, 'dist', 'storage', 'db.js'));
  new MetadataDb(dbFile).close(); // the real schema, through its migrations
  const db = new Database(dbFile);
  db.pragma('synchronous = OFF');
  const perRepo = Math.max(1, Math.floor(n.manifests / n.repos));
  const perImage = Math.max(2, Math.floor(n.blobs / (perRepo * n.repos)));
  const now = Date.now();
  const st = {
    repo: db.prepare('INSERT INTO repositories(id, name, created_at) VALUES (?, ?, ?)'),
    blob: db.prepare('INSERT INTO blobs(digest, size, created_at, last_access) VALUES (?, ?, ?, ?)'),
    link: db.prepare('INSERT INTO repo_blobs(repo_id, digest, provenance, created_at) VALUES (?, ?, ?, ?)'),
    content: db.prepare('INSERT INTO manifest_content(digest, media_type, size, body) VALUES (?, ?, ?, ?)'),
    ref: db.prepare('INSERT OR IGNORE INTO manifest_refs(digest, child, kind) VALUES (?, ?, ?)'),
    manifest: db.prepare('INSERT INTO manifests(repo_id, digest, provenance, created_at, last_access) VALUES (?, ?, ?, ?, ?)'),
    tag: db.prepare('INSERT INTO tags(repo_id, name, digest, provenance, updated_at, checked_at) VALUES (?, ?, ?, ?, ?, ?)'),
    utag: db.prepare('INSERT INTO upstream_tags(repo_id, name, accept_key, digest, checked_at) VALUES (?, ?, ?, ?, ?)'),
  };
  const fileBytes = n.fileKib * 1024;
  let blobNo = 0;
  let files = 0;
  let cachedBytes = 0;
  const pushedTags = [];
  const pushedDigests = [];
  const writeBlobFile = (k) => {
    const buf = genBuffer(`scale-${k}`, fileBytes);
    const d = sha256(buf);
    const h = d.slice(7);
    const p = path.join(storage, 'blobs', 'sha256', h.slice(0, 2), h);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, buf);
    return d;
  };
  const t0 = Date.now();
  db.transaction(() => {
    for (let r = 0; r < n.repos; r++) {
      const repoId = r + 1;
      const pushed = r % 2 === 0;
      const prov = pushed ? 'pushed' : 'cached';
      st.repo.run(repoId, repoName(r), now);
      for (let m = 0; m < perRepo; m++) {
        const layers = [];
        for (let b = 0; b < perImage; b++, blobNo++) {
          // Files for pushed repositories' blobs first (eviction and gc keep them), up to n.files.
          const withFile = files < n.files && (pushed || n.files >= n.blobs);
          const digest = withFile ? writeBlobFile(blobNo) : `sha256:${hex(`blob-${blobNo}`)}`;
          const size = withFile ? fileBytes : 1024 * 1024;
          if (withFile) files++;
          if (!pushed) cachedBytes += size;
          const access = now - (blobNo % 100_000) * 60_000;
          st.blob.run(digest, size, now - 90 * 86400_000, access);
          st.link.run(repoId, digest, prov, now - 90 * 86400_000);
          layers.push({ digest, size });
        }
        const [config, ...rest] = layers;
        const body = Buffer.from(JSON.stringify({
          schemaVersion: 2,
          mediaType: MT.ociManifest,
          config: { mediaType: MT.ociConfig, digest: config.digest, size: config.size },
          layers: rest.map((l) => ({ mediaType: MT.ociLayer, digest: l.digest, size: l.size })),
        }));
        const digest = sha256(body);
        st.content.run(digest, MT.ociManifest, body.length, body);
        for (const l of layers) st.ref.run(digest, l.digest, 'blob');
        const access = now - ((r * perRepo + m) % 100_000) * 60_000;
        st.manifest.run(repoId, digest, prov, now - 90 * 86400_000, access);
        if (pushed) {
          st.tag.run(repoId, `v${m}`, digest, prov, now, now);
          pushedTags.push([repoName(r), `v${m}`]);
          pushedDigests.push([repoName(r), digest]);
        } else st.utag.run(repoId, `v${m}`, `upstream|${repoName(r)}|k`, digest, now);
      }
    }
    // One repository with many tags (deep tag-list pages); all point at its first image.
    const first = pushedDigests[0][1];
    for (let t = 0; t < n.bigTags; t++) st.tag.run(1, `t${String(t).padStart(7, '0')}`, first, 'pushed', now, now);
  })();
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.close();
  // Rows written behind db.ts's back: builds that maintain counters (schema v7) set them from the rows.
  const mdb = new MetadataDb(dbFile);
  mdb.checkCounters?.(true);
  mdb.close();
  const sizeMiB = fs.statSync(dbFile).size / 1024 / 1024;
  const counts = { repos: n.repos, manifests: perRepo * n.repos, blobs: blobNo, files, tags: perRepo * n.repos + n.bigTags };
  log(`filled ${JSON.stringify(counts)} in ${Date.now() - t0} ms, db ${sizeMiB.toFixed(1)} MiB`);
  return { storage, counts, cachedBytes, fillMs: Date.now() - t0, dbMiB: sizeMiB, pushedTags, pushedDigests, lastRepo: repoName(n.repos - 1) };
}

/** With `maxBytes`: an eviction pass every second (only the first finds anything over budget), logged at info. */
function writeConfig(dir, storage, port, maxBytes = null) {
  const file = path.join(dir, maxBytes === null ? 'regmirror.yml' : 'regmirror-evict.yml');
  const cache = maxBytes === null ? '' : `cache:\n  maxBytes: ${maxBytes}\n  maxAge: null\n  evictInterval: 1s\n`;
  const level = maxBytes === null ? 'warn' : 'info';
  fs.writeFileSync(file, `listen: 127.0.0.1:${port}\nstorage: ${storage}\nlog:\n  level: ${level}\n${cache}`);
  return file;
}

/** The server's first 'cache eviction' log line that evicted something, or null after `maxMs`. */
async function evictionLine(logFile, maxMs) {
  const deadline = Date.now() + maxMs;
  while (Date.now() < deadline) {
    for (const line of fs.readFileSync(logFile, 'utf8').split('\n')) {
      if (!line.includes('"cache eviction"')) continue;
      const j = JSON.parse(line);
      if (j.images > 0 || j.blobs > 0) return j;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return null;
}

/** HEAD requests from `conns` loops until `until()` says stop (bounded by `maxMs`); latencies in ms. */
async function headLoad(base, paths, conns, until, maxMs) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: conns });
  const lat = [];
  let errors = 0;
  const t0 = performance.now();
  const deadline = t0 + maxMs;
  let next = 0;
  const worst = { ms: 0, atS: null };
  await Promise.all(Array.from({ length: conns }, async () => {
    while (!until() && performance.now() < deadline && lat.length < 10_000_000) {
      const p = paths[next++ % paths.length];
      const s = performance.now();
      try {
        const r = await request('HEAD', `${base}${p}`, { headers: { accept: MANIFEST_ACCEPT }, agent, timeoutMs: 60_000 });
        if (r.status !== 200) errors++;
        const ms = performance.now() - s;
        lat.push(ms);
        // When the slowest request started (seconds into the load): which phase stalled serving.
        if (ms > worst.ms) Object.assign(worst, { ms, atS: Math.round((s - t0) / 100) / 10 });
      } catch {
        errors++;
      }
    }
  }));
  const secs = (performance.now() - t0) / 1000;
  agent.destroy();
  const sorted = lat.sort((a, b) => a - b);
  const pct = (q) => (sorted.length ? Math.round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] * 100) / 100 : null);
  return { requests: lat.length, errors, reqPerS: Math.round(lat.length / secs), p50Ms: pct(0.5), p99Ms: pct(0.99), maxMs: pct(1), maxAtS: worst.atS, seconds: Math.round(secs * 10) / 10 };
}

function shuffled(xs, seed) {
  const a = xs.slice();
  let s = seed;
  for (let i = a.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    const j = s % (i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

async function timedGet(base, p, reps = 20) {
  const ms = [];
  let status = 0;
  for (let i = 0; i < reps; i++) {
    const s = performance.now();
    const r = await request('GET', `${base}${p}`);
    ms.push(performance.now() - s);
    status = r.status;
    if (r.status !== 200) throw new Error(`GET ${p}: HTTP ${r.status}`);
  }
  return { medianMs: Math.round(median(ms) * 100) / 100, status };
}

function vmHwmKiB(pid) {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Runs a CLI tool to its end while HEAD load (4 conns) runs on the server; wall time, VmHWM, latencies. */
async function toolDuringLoad(dir, name, args, base, paths) {
  const logFile = path.join(dir, `${name}.log`);
  const t0 = performance.now();
  const p = startProcess(name, NODE, [CLI, ...args], logFile);
  let hwm = 0;
  const sampler = setInterval(() => (hwm = Math.max(hwm, vmHwmKiB(p.pid) ?? 0)), 50);
  const load = headLoad(base, paths, 4, () => p.done, HARD_LIMIT_MS);
  const exit = await p.exited;
  const wallS = (performance.now() - t0) / 1000;
  clearInterval(sampler);
  const during = await load;
  const out = fs.readFileSync(logFile, 'utf8');
  log(`${name}: exit ${JSON.stringify(exit)} in ${wallS.toFixed(1)} s, peak RSS ${(hwm / 1024).toFixed(0)} MiB`);
  // fsck: rows it checked and bytes it hashed (eviction and gc ran before it).
  const checked = Number(/"checked":(\d+)/.exec(out)?.[1] ?? NaN);
  const bytes = Number(/"bytes":(\d+)/.exec(out)?.[1] ?? NaN);
  return { wallS: Math.round(wallS * 100) / 100, exit, peakRssMiB: Math.round(hwm / 1024), headDuring: during, checked, bytes, output: out.slice(-2000) };
}

async function measureStore(label, n) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `regmirror-scale-${label}-`));
  tempDirs.push(dir);
  const f = await fill(dir, n);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const cfg = writeConfig(dir, f.storage, port);
  const t0 = performance.now();
  const srv = startProcess(`regmirror-${label}`, NODE, [CLI, 'serve', '--config', cfg], path.join(dir, 'server.log'));
  await waitReady(base, srv, 600_000);
  const startupMs = Math.round(performance.now() - t0);
  log(`${label}: ready in ${startupMs} ms`);
  const byTag = shuffled(f.pushedTags, 7).slice(0, 20_000).map(([r, t]) => `/v2/${r}/manifests/${t}`);
  const byDigest = shuffled(f.pushedDigests, 11).slice(0, 20_000).map(([r, d]) => `/v2/${r}/manifests/${d}`);
  const res = { label, counts: f.counts, fillMs: f.fillMs, dbMiB: Math.round(f.dbMiB), startupMs };
  res.headByTag = await headLoad(base, byTag, CONNS, () => false, SECONDS * 1000);
  res.headByDigest = await headLoad(base, byDigest, CONNS, () => false, SECONDS * 1000);
  log(`${label}: HEAD by tag ${JSON.stringify(res.headByTag)}, by digest ${JSON.stringify(res.headByDigest)}`);
  const big = repoName(0);
  const deepTag = `t${String(Math.max(0, n.bigTags - 150)).padStart(7, '0')}`;
  res.listing = {
    tagsFirst: await timedGet(base, `/v2/${big}/tags/list?n=100`),
    tagsDeep: await timedGet(base, `/v2/${big}/tags/list?n=100&last=${deepTag}`),
    catalogFirst: await timedGet(base, '/v2/_catalog?n=100'),
    catalogDeep: await timedGet(base, `/v2/_catalog?n=100&last=${encodeURIComponent(repoName(Math.max(0, n.repos - 150)))}`),
    catalogAll: await timedGet(base, '/v2/_catalog', 3),
  };
  log(`${label}: listing ${JSON.stringify(res.listing)}`);
  // An eviction pass forcing ~10% of the cached bytes out, then gc, while the server serves.
  await stopProcess(srv);
  // The running server's eviction pass (cache.maxBytes under the cached bytes by EVICT_FRACTION), with
  // HEAD load (4 connections) until its log line; the server's peak RSS over it.
  const evictCfg = writeConfig(dir, f.storage, port, Math.floor(f.cachedBytes * (1 - EVICT_FRACTION)));
  const evictLog = path.join(dir, 'server-evict.log');
  const srv2 = startProcess(`regmirror-${label}-evict`, NODE, [CLI, 'serve', '--config', evictCfg], evictLog);
  await waitReady(base, srv2, 600_000);
  const mixed = byTag.slice(0, 5000);
  let line = null;
  const loadDuring = headLoad(base, mixed, 4, () => line !== null, HARD_LIMIT_MS);
  line = await evictionLine(evictLog, HARD_LIMIT_MS);
  res.eviction = { log: line, evictMs: line?.ms ?? null, headDuring: await loadDuring, serverPeakRssMiB: Math.round((vmHwmKiB(srv2.pid) ?? 0) / 1024) };
  log(`${label}: eviction ${JSON.stringify(res.eviction)}`);
  await stopProcess(srv2);
  // gc is an offline tool (an upload could race it); read-only HEAD traffic from a server on
  // the same storage is safe, and shows whether its SQLite work holds serving up.
  const srv3 = startProcess(`regmirror-${label}-gc`, NODE, [CLI, 'serve', '--config', cfg], path.join(dir, 'server-gc.log'));
  await waitReady(base, srv3, 600_000);
  res.gc = await toolDuringLoad(dir, 'gc', ['gc', '--config', cfg], base, mixed);
  await stopProcess(srv3);
  const fsckRun = await toolDuringLoad(dir, 'fsck', ['fsck', '--config', cfg], base, ['/v2/']);
  const verifiedMiB = fsckRun.bytes / 1024 / 1024;
  res.fsck = { ...fsckRun, headDuring: undefined, rowsPerS: Math.round(fsckRun.checked / fsckRun.wallS), MBPerS: Math.round(((verifiedMiB * 1.048576) / fsckRun.wallS) * 10) / 10, filesVerifiedMiB: verifiedMiB };
  return res;
}

/** What fill() returns, read back from a store it filled earlier (SCALE_STORE). */
function filledStore(dir) {
  const storage = path.join(dir, 'storage');
  const db = new Database(path.join(storage, 'regmirror.db'), { readonly: true });
  const rows = (sql) => db.prepare(sql).raw().all();
  const pushedTags = rows("SELECT r.name, t.name FROM tags t JOIN repositories r ON r.id = t.repo_id WHERE t.name LIKE 'v%'");
  const pushedDigests = rows("SELECT r.name, m.digest FROM manifests m JOIN repositories r ON r.id = m.repo_id WHERE m.provenance = 'pushed'");
  const cachedBytes = db.prepare("SELECT SUM(b.size) AS n FROM blobs b JOIN repo_blobs rb ON rb.digest = b.digest WHERE rb.provenance = 'cached'").get().n;
  const count = (t) => db.prepare(`SELECT COUNT(*) AS n FROM ${t}`).get().n;
  const counts = { repos: count('repositories'), manifests: count('manifests'), blobs: count('blobs'), tags: count('tags') };
  db.close();
  return { storage, counts, cachedBytes, fillMs: 0, dbMiB: fs.statSync(path.join(storage, 'regmirror.db')).size / 1024 / 1024, pushedTags, pushedDigests };
}

/** SCALE_MODE=head-ab (see the top): HEAD on both stores in alternating slices, then eviction on the full one. */
async function headAb() {
  const slices = envNum('SCALE_SLICES', 6, 2, 40);
  const PATHS = envNum('SCALE_PATHS', 20_000, 1, 1e6);
  const stores = {};
  for (const [label, n] of [['empty', EMPTY], ['full', FULL]]) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `regmirror-scale-${label}-`));
    tempDirs.push(dir);
    const f = label === 'full' && process.env.SCALE_STORE ? filledStore(process.env.SCALE_STORE) : await fill(dir, n);
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const t0 = performance.now();
    const srv = startProcess(`regmirror-${label}`, NODE, [CLI, 'serve', '--config', writeConfig(dir, f.storage, port)], path.join(dir, 'server.log'));
    await waitReady(base, srv, 600_000);
    const startupMs = Math.round(performance.now() - t0);
    log(`${label}: ${JSON.stringify(f.counts)}, ready in ${startupMs} ms`);
    // SCALE_PATHS: as many distinct paths on both stores (the empty one has 2 images), so the
    // hot read cache serves both alike and only the store's size differs.
    const byTag = shuffled(f.pushedTags, 7).map(([r, t]) => `/v2/${r}/manifests/${t}`);
    const byDigest = shuffled(f.pushedDigests, 11).map(([r, d]) => `/v2/${r}/manifests/${d}`);
    stores[label] = { dir, f, port, base, srv, startupMs, byTag, byDigest, slices: { byTag: [], byDigest: [] } };
  }
  // The same number of distinct paths per kind on both stores (at most SCALE_PATHS; the
  // empty store has ~200 tags and 2 pushed digests): the working set, and so the hot read
  // cache's and SQLite page cache's hit rates, is alike and only the store's size differs.
  const pathCount = {};
  for (const kind of ['byTag', 'byDigest']) {
    pathCount[kind] = Math.min(PATHS, stores.empty[kind].length, stores.full[kind].length);
    for (const st of Object.values(stores)) st[kind] = st[kind].slice(0, pathCount[kind]);
  }
  // Warm-up (not measured): JIT, the read caches and the pages of the working set.
  for (const st of Object.values(stores)) for (const kind of ['byTag', 'byDigest']) await headLoad(st.base, st[kind], CONNS, () => false, 2000);
  for (let i = 0; i < slices; i++) {
    for (const label of i % 2 === 0 ? ['empty', 'full'] : ['full', 'empty']) {
      const st = stores[label];
      for (const kind of ['byTag', 'byDigest']) st.slices[kind].push(await headLoad(st.base, st[kind], CONNS, () => false, SECONDS * 1000));
    }
    log(`slice ${i + 1}/${slices}: ${['empty', 'full'].map((l) => `${l} tag ${stores[l].slices.byTag.at(-1).reqPerS} req/s p99 ${stores[l].slices.byTag.at(-1).p99Ms} ms`).join(', ')}`);
  }
  const med = (xs) => median(xs.filter((x) => x !== null));
  const res = { label: LABEL, date: new Date().toISOString(), settings: { slices, paths: PATHS, pathCount, loadavgStart: os.loadavg(), SECONDS, CONNS, FULL, EMPTY, reusedStore: process.env.SCALE_STORE ?? null }, stores: {} };
  for (const label of ['empty', 'full']) {
    const st = stores[label];
    res.stores[label] = { counts: st.f.counts, startupMs: st.startupMs, slices: st.slices };
    for (const kind of ['byTag', 'byDigest']) {
      res.stores[label][kind] = { reqPerS: med(st.slices[kind].map((x) => x.reqPerS)), p99Ms: med(st.slices[kind].map((x) => x.p99Ms)) };
    }
  }
  // Per-slice-pair ratios (same moment, same load), then their median.
  res.ratio = {};
  for (const kind of ['byTag', 'byDigest']) {
    const e = stores.empty.slices[kind];
    const f = stores.full.slices[kind];
    res.ratio[kind] = {
      reqPerS: Math.round(med(e.map((x, i) => f[i].reqPerS / x.reqPerS)) * 100) / 100,
      p99: Math.round(med(e.map((x, i) => f[i].p99Ms / x.p99Ms)) * 100) / 100,
    };
  }
  await stopProcess(stores.empty.srv);
  // Eviction on the full store with HEAD load (4 connections) until its log line.
  const full = stores.full;
  await stopProcess(full.srv);
  const evictLog = path.join(full.dir, 'server-evict.log');
  const srv2 = startProcess('regmirror-full-evict', NODE, [CLI, 'serve', '--config', writeConfig(full.dir, full.f.storage, full.port, Math.floor(full.f.cachedBytes * (1 - EVICT_FRACTION)))], evictLog);
  await waitReady(full.base, srv2, 600_000);
  let line = null;
  const during = headLoad(full.base, full.byTag.slice(0, 5000), 4, () => line !== null, HARD_LIMIT_MS);
  line = await evictionLine(evictLog, HARD_LIMIT_MS);
  res.eviction = { log: line, evictMs: line?.ms ?? null, headDuring: await during, serverPeakRssMiB: Math.round((vmHwmKiB(srv2.pid) ?? 0) / 1024) };
  res.loadavgEnd = os.loadavg();
  log(`full: eviction ${JSON.stringify(res.eviction)}`);
  await stopProcess(srv2);
  const md = [
    `# Scale bench, HEAD side by side (${res.label}, ${res.date})`,
    '',
    `Empty ${JSON.stringify(res.stores.empty.counts)} vs full ${JSON.stringify(res.stores.full.counts)}; both servers up at once, HEAD (${CONNS} connections, ${SECONDS} s per slice, ${pathCount.byTag} tag and ${pathCount.byDigest} digest paths on each store, after a 2 s warm-up each) in ${slices} alternating slices each (E F, F E, ...). Medians over slices; ratios are per slice pair, then the median.`,
    '',
    '| measure | empty store | full store | full/empty (per-pair median) |',
    '| --- | ---: | ---: | ---: |',
    `| start-up (ms) | ${res.stores.empty.startupMs} | ${res.stores.full.startupMs} | |`,
    ...['byTag', 'byDigest'].flatMap((k) => [
      `| HEAD ${k === 'byTag' ? 'by tag' : 'by digest'} req/s | ${res.stores.empty[k].reqPerS} | ${res.stores.full[k].reqPerS} | ${res.ratio[k].reqPerS} |`,
      `| HEAD ${k === 'byTag' ? 'by tag' : 'by digest'} p99 (ms) | ${res.stores.empty[k].p99Ms} | ${res.stores.full[k].p99Ms} | ${res.ratio[k].p99} |`,
    ]),
    `| eviction pass (ms, server log) | | ${res.eviction.evictMs} | |`,
    `| HEAD during eviction p50 / p99 / max (ms) | | ${res.eviction.headDuring.p50Ms} / ${res.eviction.headDuring.p99Ms} / ${res.eviction.headDuring.maxMs} | |`,
    `| server peak RSS incl. eviction (MiB) | | ${res.eviction.serverPeakRssMiB} | |`,
    '',
    `Load average (1/5/15 min) at start ${res.settings.loadavgStart.map((x) => x.toFixed(2)).join(' ')}, at end ${res.loadavgEnd.map((x) => x.toFixed(2)).join(' ')}; build ${CLI}.`,
    '',
  ].join('\n');
  fs.mkdirSync(RESULTS, { recursive: true });
  fs.writeFileSync(path.join(RESULTS, `${res.date.slice(0, 10)}-${LABEL}.json`), `${JSON.stringify(res, null, 2)}\n`);
  fs.writeFileSync(path.join(RESULTS, `latest-${LABEL}.md`), md);
  console.log(md);
}

function markdown(doc) {
  const [e, s] = doc.stores;
  const rel = (a, b) => (a && b ? `${Math.round((b / a) * 100)}%` : '-');
  const rows = [
    ['start-up (ms)', e.startupMs, s.startupMs, rel(e.startupMs, s.startupMs)],
    ['HEAD by tag req/s', e.headByTag.reqPerS, s.headByTag.reqPerS, rel(e.headByTag.reqPerS, s.headByTag.reqPerS)],
    ['HEAD by tag p99 (ms)', e.headByTag.p99Ms, s.headByTag.p99Ms, rel(e.headByTag.p99Ms, s.headByTag.p99Ms)],
    ['HEAD by digest req/s', e.headByDigest.reqPerS, s.headByDigest.reqPerS, rel(e.headByDigest.reqPerS, s.headByDigest.reqPerS)],
    ['HEAD by digest p99 (ms)', e.headByDigest.p99Ms, s.headByDigest.p99Ms, rel(e.headByDigest.p99Ms, s.headByDigest.p99Ms)],
    ...Object.keys(s.listing).map((k) => [`${k} median (ms)`, e.listing[k].medianMs, s.listing[k].medianMs, rel(e.listing[k].medianMs, s.listing[k].medianMs)]),
    ['eviction pass (ms, server log)', e.eviction.evictMs, s.eviction.evictMs, ''],
    ['HEAD p99 during eviction (ms) / max', `${e.eviction.headDuring.p99Ms} / ${e.eviction.headDuring.maxMs}`, `${s.eviction.headDuring.p99Ms} / ${s.eviction.headDuring.maxMs}`, ''],
    ['server peak RSS incl. eviction (MiB)', e.eviction.serverPeakRssMiB, s.eviction.serverPeakRssMiB, ''],
    ...['gc', 'fsck'].flatMap((k) => [
      [`${k} wall (s)`, e[k].wallS, s[k].wallS, ''],
      [`${k} peak RSS (MiB)`, e[k].peakRssMiB, s[k].peakRssMiB, ''],
      ...(k === 'fsck' ? [] : [[`HEAD p99 during ${k} (ms) / max`, `${e[k].headDuring.p99Ms} / ${e[k].headDuring.maxMs}`, `${s[k].headDuring.p99Ms} / ${s[k].headDuring.maxMs}`, '']]),
    ]),
    ['fsck rows/s (full: mostly rows without a file)', e.fsck.rowsPerS, s.fsck.rowsPerS, ''],
    ['fsck MB/s over files present (empty: all 40 files, 4 MiB each)', e.fsck.MBPerS, s.fsck.MBPerS, ''],
  ];
  return [
    `# Scale bench (${doc.label}, ${doc.date})`,
    '',
    `Stores: empty ${JSON.stringify(e.counts)}; full ${JSON.stringify(s.counts)} (db ${s.dbMiB} MiB, filled in ${(s.fillMs / 1000).toFixed(1)} s). HEAD: ${CONNS} connections, ${SECONDS} s each; during gc: 4 connections.`,
    '',
    '| measure | empty store | full store | full/empty |',
    '| --- | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.join(' | ')} |`),
    '',
  ].join('\n');
}

async function main() {
  configure({ name: 'scale', keep: process.env.SCALE_KEEP === '1' });
  installExitHandlers();
  setTimeout(() => {
    log(`hard limit ${HARD_LIMIT_MS / 1000} s reached`);
    cleanup().finally(() => process.exit(2));
  }, HARD_LIMIT_MS).unref();
  if (!fs.existsSync(CLI)) throw new Error('dist/cli.js missing: npm run build first');
  if (process.env.SCALE_MODE === 'head-ab') return headAb();
  if (process.env.SCALE_MODE === 'fill') {
    // Only fill SCALE_STORE (a new directory) with the full store, for later runs to copy and reuse.
    const dir = process.env.SCALE_STORE;
    if (!dir || fs.existsSync(path.join(dir, 'storage'))) throw new Error('SCALE_MODE=fill needs SCALE_STORE=<new dir>');
    const f = await fill(dir, FULL);
    return log(`filled ${dir}: ${JSON.stringify(f.counts)} in ${Math.round(f.fillMs / 1000)} s`);
  }
  const stores = [];
  stores.push(await measureStore('empty', EMPTY));
  stores.push(await measureStore('full', FULL));
  const doc = { label: LABEL, date: new Date().toISOString(), settings: { QUICK, FULL, EMPTY, FILE_KIB, SECONDS, CONNS, ncpu: os.cpus().length }, stores };
  fs.mkdirSync(RESULTS, { recursive: true });
  fs.writeFileSync(path.join(RESULTS, `${doc.date.slice(0, 10)}-${LABEL}.json`), `${JSON.stringify(doc, null, 2)}\n`);
  const md = markdown(doc);
  fs.writeFileSync(path.join(RESULTS, `latest-${LABEL}.md`), md);
  console.log(md);
}

main()
  .catch((err) => {
    log('failed:', err);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
