/**
 * Where an eviction pass holds the event loop (issue #14 item 4): runs one pass of the real
 * Evictor over a store filled by bench/scale.mjs (SCALE_MODE=fill; pass a copy: the pass
 * evicts) in this process, with a 1 ms timer measuring event-loop gaps, each attributed to
 * the metadata call in progress (or last finished) when it happened. Also the wall time of
 * each step. Usage: node bench/evict-stalls.mjs <storage dir> [evict fraction 0.02] [dist dir]
 * (EVICT_NO_AUTOCHECKPOINT=1: see below; EVICT_BASELINE_MS: idle measurement before the pass, 5000)
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

// The main thread's own CPU time (Node >= 23.9; else the process's, which is the main
// thread's while the scan worker is idle, i.e. during units): near a gap's or a call's
// length, this thread was working (our code, GC); near zero, it was waiting or not scheduled.
const threadCpu = () => {
  const u = process.threadCpuUsage?.() ?? process.cpuUsage();
  return u ? (u.user + u.system) / 1000 : Number.NaN;
};
let phase = 'idle';
// Start and end of each whole-store step, and each gap, in ms since the probe started
// measuring: where a gap falls relative to a scan's answer.
const timeline = [];
const t0 = performance.now();
const steps = {};
const gaps = [];
// evictionCandidates: both scans, ordered in the worker and transferred as columns (absent
// in builds before it: the Evictor then calls cachedImages and looseBlobs itself).
for (const name of ['cachedBytes', 'cachedImages', 'looseBlobs', 'evictionCandidates', 'evictImage', 'evictLooseBlob']) {
  if (typeof meta[name] !== 'function') continue;
  const orig = meta[name].bind(meta);
  const unit = name.startsWith('evict') && name !== 'evictionCandidates';
  meta[name] = async (...a) => {
    phase = name;
    const s = performance.now();
    const c = threadCpu();
    if (!unit) timeline.push({ at: Math.round(s - t0), step: `${name} start` });
    try {
      return await orig(...a);
    } finally {
      if (!unit) timeline.push({ at: Math.round(performance.now() - t0), step: `${name} end` });
      const ms = performance.now() - s;
      const x = (steps[name] ??= { n: 0, ms: 0, maxMs: 0, cpuMs: 0, over20: 0, over20CpuMs: 0, over20Ms: 0 });
      x.n++;
      x.ms += ms;
      // Main-thread CPU in the call: a unit far longer than its CPU waited (fsync, I/O) or was not scheduled.
      const cpu = threadCpu() - c;
      x.cpuMs += cpu;
      if (ms > 20) (x.over20++, (x.over20Ms += ms), (x.over20CpuMs += cpu));
      x.maxMs = Math.max(x.maxMs, ms);
      phase = `after ${name}`;
    }
  };
}
let last = performance.now();
let lastCpu = threadCpu();
const tick = setInterval(() => {
  const now = performance.now();
  const cpu = threadCpu();
  if (now - last > 20) gaps.push({ ms: Math.round(now - last), cpuMs: Math.round(cpu - lastCpu), phase, at: Math.round(last - t0) });
  last = now;
  lastCpu = cpu;
}, 1);
// An idle stretch first: the gaps this machine's load makes without any work of ours.
const BASELINE_MS = Number(process.env.EVICT_BASELINE_MS ?? 5000);
phase = 'idle baseline';
const h0 = monitorEventLoopDelay({ resolution: 1 });
h0.enable();
await new Promise((resolve) => setTimeout(resolve, BASELINE_MS));
h0.disable();
phase = 'idle';
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
for (const g of gaps) (byPhase[g.phase] ??= []).push(g);
console.log(JSON.stringify({
  dist, noAutocheckpoint: process.env.EVICT_NO_AUTOCHECKPOINT === '1', openMs: Math.round(openMs), countMs: Math.round(countMs), passMs: Math.round(passMs),
  result: { images: r.images, blobs: r.blobs, bytes: r.bytes },
  steps: Object.fromEntries(Object.entries(steps).map(([k, v]) => [k, { n: v.n, totalMs: Math.round(v.ms), cpuMs: Math.round(v.cpuMs), maxMs: Math.round(v.maxMs), over20: v.over20, over20Ms: Math.round(v.over20Ms), over20CpuMs: Math.round(v.over20CpuMs) }])),
  loopDelayMs: { p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6 },
  idleLoopDelayMs: { ms: BASELINE_MS, p50: h0.percentile(50) / 1e6, p99: h0.percentile(99) / 1e6, max: h0.max / 1e6 },
  timeline, gapsOver100ms: gaps.filter((g) => g.ms > 100).sort((a, b) => a.at - b.at),
  gapsOver20ms: gaps.length, worstGaps: gaps.slice(0, 10), gapsByPhase: Object.fromEntries(Object.entries(byPhase).map(([k, v]) => [k, { n: v.length, maxMs: v[0].ms, sumMs: v.reduce((a, g) => a + g.ms, 0), cpuMs: v.reduce((a, g) => a + g.cpuMs, 0) }])),
  loadavg: os.loadavg(),
}, null, 1));
await meta.close();
