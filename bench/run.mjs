#!/usr/bin/env node
/**
 * Core benchmark: regmirror vs Debian's docker-registry (CNCF distribution 2.8) as a plain
 * registry (no proxy), both on loopback with filesystem storage in temp dirs.
 *
 *   npm run bench          (= npm run build && node bench/run.mjs)
 *
 * Seeds both registries identically over HTTP, then measures with autocannon:
 *   blob GET throughput (256 MiB blob, 4 conns; 64 x 1 MiB blobs, 16 conns),
 *   manifest HEAD / GET by tag (64 conns), push throughput (256 MiB, POST+PATCH+PUT),
 *   server RSS during the 256 MiB GET run.
 * Writes bench/results/<YYYY-MM-DD>-core.json and bench/results/latest-core.md.
 *
 * Settings (env): BENCH_SECONDS (10), BENCH_WARMUP (2), BENCH_PUSH_REPS (3),
 * BENCH_BIG_MIB (256), BENCH_DOCKER_REGISTRY=0 (skip it), BENCH_PROFILE=1 (regmirror
 * under --cpu-prof, prints the hottest functions), BENCH_KEEP=1 (keep temp dirs),
 * BENCH_TIMEOUT (hard limit for the whole run, seconds), BENCH_RESULTS_DIR,
 * BENCH_ONLY=blobGetBig,blobGetSmall,manifestHead,manifestGet,push (a subset),
 * BENCH_REGMIRROR_CLI=/path/to/dist/cli.js (measure another build),
 * BENCH_SLICES (2: each measurement as A B B A slices), BENCH_WAIT_QUIET=seconds (first wait, at most that long, for other CPU load to stop).
 * See bench/README.md. Only 127.0.0.1 is ever contacted.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import autocannon from 'autocannon';
import {
  HERE,
  ROOT,
  MIB,
  MT,
  MANIFEST_ACCEPT,
  agent,
  cleanup,
  CLK_TCK,
  configure,
  envNum,
  expectStatus,
  freePort,
  genBuffer,
  genStream,
  installExitHandlers,
  log,
  machineBusyTicks,
  median,
  NCPU,
  onPath,
  mib1,
  nodeFlagsOf,
  pidCpuTicks,
  readHwmKiB,
  readRssKiB,
  request,
  rssSampler,
  rssSummary,
  sha256,
  startDockerRegistry,
  startReferenceServer,
  startedPids,
  startProcess,
  stopProcess,
  streamDigest,
  summarizeProfiles,
  tempDirs,
  versionOf,
  waitQuiet,
  waitReady,
} from './lib.mjs';

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

const ALL_METRICS = ['blobGetBig', 'blobGetSmall', 'manifestHead', 'manifestGet', 'manifestHeadDigest', 'manifestGetDigest', 'blobGetTiny', 'push'];
// The small requests, each also measured against the bare node:http reference (issue #14 item 2).
const SMALL_METRICS = ['manifestHead', 'manifestGet', 'manifestHeadDigest', 'manifestGetDigest', 'blobGetTiny'];
// `small` stands for SMALL_METRICS: the quick mode for working on the small-request path.
const ONLY = (process.env.BENCH_ONLY || ALL_METRICS.join(','))
  .split(',')
  .map((x) => x.trim())
  .filter(Boolean)
  .flatMap((x) => (x === 'small' ? SMALL_METRICS : [x]));
for (const m of ONLY) if (!ALL_METRICS.includes(m)) throw new Error(`BENCH_ONLY: unknown metric ${m} (known: small, ${ALL_METRICS.join(', ')})`);
const SMALL_ONLY = ONLY.every((m) => SMALL_METRICS.includes(m));
const SECONDS = envNum('BENCH_SECONDS', 10, 1, 120);
const WARMUP = envNum('BENCH_WARMUP', 2, 0, 30);
const PUSH_REPS = Math.round(envNum('BENCH_PUSH_REPS', 3, 1, 10));
// Only the small requests: the big blob is never fetched, so keep its seeding short.
const BIG_MIB = Math.round(envNum('BENCH_BIG_MIB', SMALL_ONLY ? 1 : 256, 1, 4096));
const SMALL_COUNT = 64;
const BIG_SIZE = BIG_MIB * MIB;
const SMALL_SIZE = MIB;
const WITH_DISTRIBUTION = process.env.BENCH_DOCKER_REGISTRY !== '0';
const PROFILE = process.env.BENCH_PROFILE === '1';
const KEEP = process.env.BENCH_KEEP === '1' || PROFILE;
configure({ name: 'bench', keep: KEEP });
// The bare node:http reference (0: not started; the small-request ratios are then n/a).
const WITH_REFERENCE = process.env.BENCH_REFERENCE !== '0';
// Another build of regmirror to measure (A/B experiments); default: this checkout's dist/.
const REGMIRROR_CLI = path.resolve(process.env.BENCH_REGMIRROR_CLI || path.join(ROOT, 'dist/cli.js'));
const SLICES = Math.round(envNum('BENCH_SLICES', 2, 1, 10));
const WAIT_QUIET_S = envNum('BENCH_WAIT_QUIET', 0, 0, 1800);
const RESULTS_DIR = path.resolve(process.env.BENCH_RESULTS_DIR || path.join(HERE, 'results'));
// 4 timed runs x 2 servers, plus seeding, pushes and start-up; generous but finite.
const HARD_LIMIT_S = envNum('BENCH_TIMEOUT', 240 + 3 * ONLY.length * (SECONDS + WARMUP) + PUSH_REPS * 30, 30, 3600);

const REPO = 'bench/core';
const TAG = 'bench';
const TAG_V2S2 = 'bench-v2s2';

// ---------------------------------------------------------------------------------------
// Processes (bench/lib.mjs) and CPU accounting
// ---------------------------------------------------------------------------------------

installExitHandlers();

// CPU accounting from /proc: the server's own CPU time for a run, and how much CPU the
// rest of the machine (other people's work, not this benchmark) took meanwhile.
function cpuTicks(pid) {
  const t = pidCpuTicks(pid);
  return t.user + t.sys;
}

function cpuSnapshot(serverPid) {
  const ours = {};
  for (const p of [process.pid, ...startedPids]) ours[p] = cpuTicks(p);
  return { at: process.hrtime.bigint(), busy: machineBusyTicks(), server: cpuTicks(serverPid), ours };
}

function cpuDelta(a, b) {
  const secs = Number(b.at - a.at) / 1e9;
  let ours = 0;
  for (const p of Object.keys(b.ours)) ours += b.ours[p] - (a.ours[p] ?? 0);
  const busy = b.busy - a.busy;
  return {
    serverCpuSeconds: Math.round(((b.server - a.server) / CLK_TCK) * 100) / 100,
    benchCpuSeconds: Math.round(((ours - (b.server - a.server)) / CLK_TCK) * 100) / 100,
    // Kernel work on our behalf (softirq for loopback) is not in any process: a few % is normal.
    foreignCpuShare: Math.max(0, Math.round(((busy - ours) / CLK_TCK / (secs * NCPU)) * 1000) / 1000),
  };
}

// ---------------------------------------------------------------------------------------
// Registry operations used for seeding and pushing
// ---------------------------------------------------------------------------------------

async function startSession(base, repo) {
  const r = expectStatus(await request('POST', `${base}/v2/${repo}/blobs/uploads/`, { headers: { 'content-length': '0' } }), 202, 'POST upload');
  if (!r.headers.location) throw new Error('POST upload: no Location');
  return new URL(r.headers.location, base).toString();
}

function withDigest(location, digest) {
  const u = new URL(location);
  u.searchParams.set('digest', digest);
  return u.toString();
}

/** POST session + PUT ?digest= with the whole (small) body. */
async function pushSmallBlob(base, repo, buf, digest) {
  const loc = await startSession(base, repo);
  const r = await request('PUT', withDigest(loc, digest), {
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(buf.length) },
    body: buf,
  });
  expectStatus(r, 201, `PUT blob ${digest}`);
}

/** POST session + one streamed PATCH + PUT ?digest= (no body). Returns seconds taken. */
async function pushStreamedBlob(base, repo, label, size, digest) {
  const start = process.hrtime.bigint();
  const loc = await startSession(base, repo);
  const patchStart = process.hrtime.bigint();
  const p = await request('PATCH', loc, {
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
    body: genStream(label, size),
    timeoutMs: 300_000,
  });
  expectStatus(p, 202, 'PATCH upload');
  const putStart = process.hrtime.bigint();
  const next = new URL(p.headers.location ?? loc, base).toString();
  const put = await request('PUT', withDigest(next, digest), { headers: { 'content-length': '0' }, timeoutMs: 120_000 });
  expectStatus(put, 201, 'PUT upload');
  if (put.headers['docker-content-digest'] && put.headers['docker-content-digest'] !== digest) {
    throw new Error(`PUT upload: server says ${put.headers['docker-content-digest']}, expected ${digest}`);
  }
  const end = process.hrtime.bigint();
  const s = (a, b) => Math.round((Number(b - a) / 1e9) * 1000) / 1000;
  return { seconds: Number(end - start) / 1e9, postSeconds: s(start, patchStart), patchSeconds: s(patchStart, putStart), putSeconds: s(putStart, end) };
}

async function putManifest(base, repo, ref, mediaType, body) {
  const r = await request('PUT', `${base}/v2/${repo}/manifests/${ref}`, {
    headers: { 'content-type': mediaType, 'content-length': String(body.length) },
    body,
  });
  expectStatus(r, 201, `PUT manifest ${ref}`);
  return r.headers['docker-content-digest'];
}

/** Everything both registries receive, computed once. */
function buildSeed() {
  const big = { label: 'big-0', size: BIG_SIZE, digest: streamDigest('big-0', BIG_SIZE) };
  const small = [];
  for (let i = 0; i < SMALL_COUNT; i++) {
    const buf = genBuffer(`small-${i}`, SMALL_SIZE);
    small.push({ label: `small-${i}`, size: SMALL_SIZE, digest: sha256(buf) });
  }
  const layers = [big, ...small];
  const configDoc = {
    architecture: 'amd64',
    os: 'linux',
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) }, // layers are uncompressed
    history: [{ created: '2024-01-01T00:00:00Z', created_by: 'regmirror bench' }],
  };
  const config = Buffer.from(JSON.stringify(configDoc));
  const configDigest = sha256(config);
  const oci = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: configDigest, size: config.length },
      layers: layers.map((l) => ({ mediaType: MT.ociLayer, digest: l.digest, size: l.size })),
      annotations: { 'org.opencontainers.image.title': 'regmirror bench' },
    }),
  );
  const docker = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.dockerManifest,
      config: { mediaType: MT.dockerConfig, digest: configDigest, size: config.length },
      layers: layers.map((l) => ({ mediaType: MT.dockerLayer, digest: l.digest, size: l.size })),
    }),
  );
  const pushes = [];
  for (let i = 0; ONLY.includes('push') && i < PUSH_REPS; i++) pushes.push({ label: `push-${i}`, size: BIG_SIZE, digest: streamDigest(`push-${i}`, BIG_SIZE) });
  return { big, small, config, configDigest, oci, ociDigest: sha256(oci), docker, dockerDigest: sha256(docker), pushes };
}

async function seed(srv, s) {
  const start = Date.now();
  await pushStreamedBlob(srv.base, REPO, s.big.label, s.big.size, s.big.digest);
  for (const b of s.small) await pushSmallBlob(srv.base, REPO, genBuffer(b.label, b.size), b.digest);
  await pushSmallBlob(srv.base, REPO, s.config, s.configDigest);
  const d1 = await putManifest(srv.base, REPO, TAG, MT.ociManifest, s.oci);
  const d2 = await putManifest(srv.base, REPO, TAG_V2S2, MT.dockerManifest, s.docker);
  if (d1 !== s.ociDigest || d2 !== s.dockerDigest) throw new Error(`${srv.name}: manifest digests differ from the pushed bytes`);
  // Check what the benchmark will ask for answers as expected.
  for (const [tag, digest] of [
    [TAG, s.ociDigest],
    [TAG_V2S2, s.dockerDigest],
  ]) {
    const h = expectStatus(await request('HEAD', `${srv.base}/v2/${REPO}/manifests/${tag}`, { headers: { accept: MANIFEST_ACCEPT } }), 200, `HEAD ${tag}`);
    if (h.headers['docker-content-digest'] !== digest) throw new Error(`${srv.name}: HEAD ${tag} digest ${h.headers['docker-content-digest']}, want ${digest}`);
  }
  const g = expectStatus(await request('GET', `${srv.base}/v2/${REPO}/manifests/${TAG}`, { headers: { accept: MANIFEST_ACCEPT } }), 200, 'GET manifest');
  if (!g.body.equals(s.oci)) throw new Error(`${srv.name}: GET manifest body differs from what was pushed`);
  const gd = expectStatus(await request('GET', `${srv.base}/v2/${REPO}/manifests/${s.ociDigest}`, { headers: { accept: MANIFEST_ACCEPT } }), 200, 'GET manifest by digest');
  if (!gd.body.equals(s.oci)) throw new Error(`${srv.name}: GET manifest by digest: body differs from what was pushed`);
  const gc = expectStatus(await request('GET', `${srv.base}/v2/${REPO}/blobs/${s.configDigest}`), 200, 'GET config blob');
  if (!gc.body.equals(s.config)) throw new Error(`${srv.name}: GET config blob: body differs from what was pushed`);
  const hb = expectStatus(await request('HEAD', `${srv.base}/v2/${REPO}/blobs/${s.big.digest}`), 200, 'HEAD big blob');
  if (Number(hb.headers['content-length']) !== s.big.size) throw new Error(`${srv.name}: big blob has content-length ${hb.headers['content-length']}`);
  return (Date.now() - start) / 1000;
}

/** The small-request paths (manifest by tag and by digest, the config blob as the small blob). */
function smallPaths(s) {
  return {
    manifestTag: `/v2/${REPO}/manifests/${TAG}`,
    manifestDigest: `/v2/${REPO}/manifests/${s.ociDigest}`,
    tinyBlob: `/v2/${REPO}/blobs/${s.configDigest}`,
  };
}

/**
 * What the reference server answers: regmirror's own headers and body for each small
 * path (GET with the benchmark's Accept), minus what node:http sets per response itself.
 */
async function referenceRoutes(srv, s) {
  const routes = {};
  for (const p of Object.values(smallPaths(s))) {
    const r = expectStatus(await request('GET', `${srv.base}${p}`, { headers: { accept: MANIFEST_ACCEPT } }), 200, `GET ${p}`);
    const headers = { ...r.headers };
    for (const h of ['date', 'connection', 'keep-alive', 'transfer-encoding']) delete headers[h];
    routes[p] = { headers, body: r.body };
  }
  return routes;
}

// ---------------------------------------------------------------------------------------
// autocannon, with two adjustments made per client in setupClient:
//  - the response body is counted, not accumulated: autocannon appends every body to a
//    string (pipelinedRequestsQueue.addBody), which for a 256 MiB blob costs more client
//    CPU than the server spends and approaches V8's string limit;
//  - HEAD responses are told to have no body: autocannon's HTTP parser (http-parser-js)
//    otherwise waits for Content-Length bytes after a HEAD and every request times out.
// ---------------------------------------------------------------------------------------

// The parser autocannon uses; its handler slot for "headers complete" (2 in 0.5.x).
const K_ON_HEADERS_COMPLETE = (() => {
  try {
    const req = createRequire(createRequire(import.meta.url).resolve('autocannon'));
    return req('http-parser-js').HTTPParser.kOnHeadersComplete ?? 2;
  } catch {
    return 2;
  }
})();

function makeSetupClient({ head, requests, counter }) {
  let n = 0;
  return (client) => {
    const index = n++;
    client.pipelinedRequests.addBody = (data) => {
      counter.bodyBytes += data.length;
    };
    if (head) {
      // autocannon assigns its handler after setupClient; wrap whatever is (or will be) there.
      const wrap = (f) =>
        typeof f === 'function'
          ? (...args) => {
              f(...args);
              return 1; // skipBody
            }
          : f;
      let fn = wrap(client.parser[K_ON_HEADERS_COMPLETE]);
      Object.defineProperty(client.parser, K_ON_HEADERS_COMPLETE, { configurable: true, get: () => fn, set: (f) => (fn = wrap(f)) });
    }
    if (requests && requests.length > 1) {
      // Start each connection at a different blob so they do not move in lockstep.
      const off = (index * 7) % requests.length;
      client.setRequests([...requests.slice(off), ...requests.slice(0, off)]);
    }
  };
}

function cannonOnce(opts, { head = false, requests } = {}) {
  const counter = { bodyBytes: 0 };
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const inst = autocannon(
      {
        ...opts,
        requests,
        setupClient: makeSetupClient({ head, requests, counter }),
      },
      (err, res) => {
        if (err) return reject(err);
        const secs = Number(process.hrtime.bigint() - started) / 1e9;
        resolve({ res, secs, bodyBytes: counter.bodyBytes });
      },
    );
    inst.on('error', reject);
  });
}

/** One measured slice (after an optional warm-up run that is discarded): raw counts. */
async function cannonSlice(srv, opts, extra, seconds, warm) {
  const base = { url: srv.base, headers: {}, timeout: 30, ...opts };
  if (warm && WARMUP > 0) await cannonOnce({ ...base, duration: WARMUP }, extra);
  const before = cpuSnapshot(srv.pid);
  const { res, secs, bodyBytes } = await cannonOnce({ ...base, duration: seconds }, extra);
  const cpu = cpuDelta(before, cpuSnapshot(srv.pid));
  if (srv.entry.done) throw new Error(`${srv.name} (pid ${srv.pid}) exited during a run: ${JSON.stringify(srv.entry.exitInfo)}`);
  return {
    secs,
    bodyBytes,
    requests: res.requests.total,
    latencyMs: { p50: res.latency.p50, p90: res.latency.p90, p99: res.latency.p99, max: res.latency.max },
    errors: res.errors,
    timeouts: res.timeouts,
    non2xx: res.non2xx,
    ...cpu,
  };
}

/** Sum the slices of one server's measurement into the reported numbers. */
function combineSlices(name, srv, connections, slices) {
  const sum = (k) => slices.reduce((n, x) => n + x[k], 0);
  const secs = sum('secs');
  const requests = sum('requests');
  const bodyBytes = sum('bodyBytes');
  const serverCpu = Math.round(sum('serverCpuSeconds') * 100) / 100;
  // Latency percentiles of the slices, weighted by their request counts (max: the max).
  const lat = (k) => (requests ? Math.round(slices.reduce((n, x) => n + x.latencyMs[k] * x.requests, 0) / requests) : null);
  const out = {
    connections,
    slices: slices.length,
    seconds: Math.round(secs * 100) / 100,
    requests,
    reqPerSec: Math.round(requests / secs),
    bodyMBps: Math.round((bodyBytes / 1e6 / secs) * 10) / 10,
    bodyBytes,
    latencyMs: { p50: lat('p50'), p90: lat('p90'), p99: lat('p99'), max: Math.max(...slices.map((x) => x.latencyMs.max)) },
    errors: sum('errors'),
    timeouts: sum('timeouts'),
    non2xx: sum('non2xx'),
    serverCpuSeconds: serverCpu,
    benchCpuSeconds: Math.round(sum('benchCpuSeconds') * 100) / 100,
    foreignCpuShare: Math.round((slices.reduce((n, x) => n + x.foreignCpuShare * x.secs, 0) / secs) * 1000) / 1000,
    foreignCpuShareMax: Math.max(...slices.map((x) => x.foreignCpuShare)),
    serverCpuUsPerRequest: requests ? Math.round((serverCpu / requests) * 1e6 * 10) / 10 : null,
    serverCpuSecondsPerGB: bodyBytes > 1e8 ? Math.round((serverCpu / (bodyBytes / 1e9)) * 1000) / 1000 : null,
    perSlice: slices.map((x) => ({ seconds: Math.round(x.secs * 100) / 100, reqPerSec: Math.round(x.requests / x.secs), bodyMBps: Math.round((x.bodyBytes / 1e6 / x.secs) * 10) / 10, foreignCpuShare: x.foreignCpuShare })),
  };
  out.valid = out.errors + out.timeouts + out.non2xx === 0 && requests > 0;
  log(
    `${srv.name} ${name}: ${out.reqPerSec} req/s, ${out.bodyMBps} MB/s body, p99 ${out.latencyMs.p99} ms, ` +
      `server CPU ${out.serverCpuSeconds} s, bench CPU ${out.benchCpuSeconds} s, foreign CPU ${(out.foreignCpuShare * 100).toFixed(0)}%` +
      (out.valid ? '' : `  [INVALID: ${out.errors} errors, ${out.timeouts} timeouts, ${out.non2xx} non-2xx]`),
  );
  return out;
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

async function startRegmirror(dir) {
  const port = await freePort();
  const storage = path.join(dir, 'storage');
  const cfg = path.join(dir, 'regmirror.yml');
  fs.writeFileSync(cfg, `listen: 127.0.0.1:${port}\nstorage: ${storage}\nlog:\n  level: warn\n`);
  const args = nodeFlagsOf(REGMIRROR_CLI);
  let profileDir;
  if (PROFILE) {
    profileDir = path.join(dir, 'cpu-profile');
    args.push('--cpu-prof', `--cpu-prof-dir=${profileDir}`);
  }
  args.push(REGMIRROR_CLI, 'serve', '--config', cfg);
  const entry = startProcess('regmirror', process.execPath, args, path.join(dir, 'server.log'));
  const base = `http://127.0.0.1:${port}`;
  await waitReady(base, entry);
  return { name: 'regmirror', base, entry, pid: entry.pid, dir, profileDir };
}

async function startDistribution(dir) {
  const { base, entry, pid } = await startDockerRegistry(dir, 'docker-registry');
  return { name: 'docker-registry', base, entry, pid, dir };
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

function fmt(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(v)) return 'n/a';
  return Number(v).toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function ratio(a, b) {
  if (a === null || b === null || a === undefined || b === undefined || !b) return null;
  return Math.round((a / b) * 100) / 100;
}

/** Issue #14 item 3 (regmirror): RSS right after start and the high-water mark through the bench. */
const RSS_START_AIM_MIB = 80;
const HWM_AIM_MIB = 160;
/** VmHWM rows, in run order: the peak after each of these loads (cumulative). */
const HWM_METRICS = [
  ['blobGetBig', `${BIG_MIB} MiB blob GETs`],
  ['blobGetSmall', '1 MiB blob GETs, 16 conns'],
  ['manifestGet', 'manifest GET by tag, 64 conns'],
  ['blobGetTiny', 'small blob GETs'],
  ['push', 'pushes'],
];
const RSS_FLAT_MIB = 64; // "flat": peak - start below this while serving a 256 MiB blob

function buildRows(results) {
  const r = results.regmirror;
  const d = results['docker-registry'];
  const val = (x, k) => (x && x[k] && x[k].valid ? x[k] : null);
  const row = (metric, get, digits = 0) => {
    const a = r ? get(r) : null;
    const b = d ? get(d) : null;
    return { metric, regmirror: a ?? null, distribution: b ?? null, ratio: ratio(a, b), digits };
  };
  return {
    main: [
      row(`Blob GET ${BIG_MIB} MiB, 4 conns (MB/s)`, (x) => val(x, 'blobGetBig')?.bodyMBps, 1),
      row(`Blob GET 1 MiB x${SMALL_COUNT}, 16 conns (MB/s)`, (x) => val(x, 'blobGetSmall')?.bodyMBps, 1),
      row('Manifest HEAD by tag, 64 conns (req/s)', (x) => val(x, 'manifestHead')?.reqPerSec),
      row('Manifest HEAD p99 latency (ms)', (x) => val(x, 'manifestHead')?.latencyMs.p99),
      row('Manifest GET by tag, 64 conns (req/s)', (x) => val(x, 'manifestGet')?.reqPerSec),
      row('Manifest GET p99 latency (ms)', (x) => val(x, 'manifestGet')?.latencyMs.p99),
      row(`Push ${BIG_MIB} MiB POST+PATCH+PUT, median of ${PUSH_REPS} (MB/s)`, (x) => x.push?.medianMBps, 1),
      row(`RSS start, ${BIG_MIB} MiB GET run (MiB)`, (x) => x.rssBigGet?.startMiB, 1),
      row(`RSS peak, ${BIG_MIB} MiB GET run (MiB)`, (x) => x.rssBigGet?.peakMiB, 1),
      row(`RSS end, ${BIG_MIB} MiB GET run (MiB)`, (x) => x.rssBigGet?.endMiB, 1),
      row('RSS peak during push (MiB)', (x) => x.rssPush?.peakMiB, 1),
      // Issue #14 item 3: RSS after start <= 80 MiB, VmHWM through the bench <= 160 MiB.
      row('RSS after start (MiB)', (x) => x.rssAfterStartMiB, 1),
      row('VmHWM after seeding (MiB)', (x) => x.hwmAfterSeedMiB, 1),
      ...HWM_METRICS.map(([k, label]) => row(`VmHWM after ${label} (MiB)`, (x) => x.hwmAfterMiB?.[k], 1)),
      row('VmHWM at the end of the run (MiB)', (x) => x.hwmEndMiB, 1),
    ],
    // Server CPU per unit of work: robust against other load on the machine.
    cpu: [
      row(`Blob GET ${BIG_MIB} MiB (server CPU s per GB)`, (x) => val(x, 'blobGetBig')?.serverCpuSecondsPerGB, 3),
      row('Blob GET 1 MiB (server CPU s per GB)', (x) => val(x, 'blobGetSmall')?.serverCpuSecondsPerGB, 3),
      row('Manifest HEAD (server CPU µs per request)', (x) => val(x, 'manifestHead')?.serverCpuUsPerRequest, 1),
      row('Manifest GET (server CPU µs per request)', (x) => val(x, 'manifestGet')?.serverCpuUsPerRequest, 1),
      row(`Push ${BIG_MIB} MiB (server CPU s per GB, median)`, (x) => x.push?.medianServerCpuSecondsPerGB, 3),
    ],
    small: smallRowsOf(results),
  };
}

const SMALL_LABELS = {
  manifestHead: 'Manifest HEAD by tag, 64 conns',
  manifestGet: 'Manifest GET by tag, 64 conns',
  manifestHeadDigest: 'Manifest HEAD by digest, 64 conns',
  manifestGetDigest: 'Manifest GET by digest, 64 conns',
  blobGetTiny: 'Small blob GET (config), 16 conns',
};
const SMALL_AIM = 0.5; // issue #14 item 2: at least half the bare node:http server

/** regmirror vs the bare node:http reference on the same requests, same run. */
function smallRowsOf(results) {
  const r = results.regmirror;
  const n = results['node-http'];
  const val = (x, k) => (x && x[k] && x[k].valid ? x[k] : null);
  return SMALL_METRICS.filter((k) => r?.[k]).map((k) => {
    const a = val(r, k);
    const b = val(n, k);
    return {
      metric: SMALL_LABELS[k],
      key: k,
      regmirror: a?.reqPerSec ?? null,
      reference: b?.reqPerSec ?? null,
      ratio: ratio(a?.reqPerSec, b?.reqPerSec),
      regmirrorCpuUs: a?.serverCpuUsPerRequest ?? null,
      referenceCpuUs: b?.serverCpuUsPerRequest ?? null,
      cpuRatio: ratio(b?.serverCpuUsPerRequest, a?.serverCpuUsPerRequest),
    };
  });
}

function aimsOf(results) {
  const r = results.regmirror;
  const d = results['docker-registry'];
  const aims = [];
  const measured = (k) => ONLY.includes(k) && d;
  const head = ratio(r?.manifestHead?.valid ? r.manifestHead.reqPerSec : null, d?.manifestHead?.valid ? d.manifestHead.reqPerSec : null);
  if (measured('manifestHead')) aims.push({ aim: 'manifest HEAD req/s >= 2x docker-registry', value: head === null ? 'n/a' : `${head}x`, pass: head === null ? null : head >= 2 });
  for (const [k, label] of [
    ['blobGetBig', `blob GET ${BIG_MIB} MiB MB/s >= docker-registry`],
    ['blobGetSmall', 'blob GET 1 MiB MB/s >= docker-registry'],
  ]) {
    if (!measured(k)) continue;
    const x = ratio(r?.[k]?.valid ? r[k].bodyMBps : null, d?.[k]?.valid ? d[k].bodyMBps : null);
    aims.push({ aim: label, value: x === null ? 'n/a' : `${x}x`, pass: x === null ? null : x >= 1 });
  }
  for (const row of smallRowsOf(results)) {
    aims.push({ aim: `${row.metric}: req/s >= ${SMALL_AIM}x bare node:http`, value: row.ratio === null ? 'n/a' : `${row.ratio}x`, pass: row.ratio === null ? null : row.ratio >= SMALL_AIM });
  }
  if (r?.rssAfterStartMiB) aims.push({ aim: `regmirror RSS after start <= ${RSS_START_AIM_MIB} MiB`, value: `${r.rssAfterStartMiB} MiB`, pass: r.rssAfterStartMiB <= RSS_START_AIM_MIB });
  if (r?.hwmEndMiB) aims.push({ aim: `regmirror VmHWM through the run <= ${HWM_AIM_MIB} MiB`, value: `${r.hwmEndMiB} MiB`, pass: r.hwmEndMiB <= HWM_AIM_MIB });
  const rs = r?.rssBigGet;
  if (rs) {
    const growth = Math.round((rs.peakMiB - rs.startMiB) * 10) / 10;
    aims.push({ aim: `regmirror RSS flat while serving ${BIG_MIB} MiB blobs (peak - start < ${RSS_FLAT_MIB} MiB)`, value: `+${growth} MiB`, pass: growth < RSS_FLAT_MIB });
  }
  return aims;
}

function table(lines, rows, title) {
  lines.push(`| ${title} | regmirror | docker-registry | ratio regmirror/docker-registry |`);
  lines.push('| --- | ---: | ---: | ---: |');
  // Rows nobody measured (metrics left out with BENCH_ONLY) are left out.
  for (const r of rows.filter((x) => x.regmirror !== null || x.distribution !== null)) lines.push(`| ${r.metric} | ${fmt(r.regmirror, r.digits)} | ${fmt(r.distribution, r.digits)} | ${r.ratio === null ? 'n/a' : `${r.ratio.toFixed(2)}`} |`);
  lines.push('');
}

function markdown(meta, rows, aims, notes) {
  const lines = [];
  lines.push(`# regmirror core benchmark (${meta.date})`);
  lines.push('');
  lines.push(
    `${meta.settings.seconds} s per measurement and server (${meta.settings.slices} interleaved slices) after ${meta.settings.warmup} s warm-up; ${meta.machine.cpus} x ${meta.machine.cpuModel}; ` +
      `node ${meta.node}; regmirror ${meta.regmirror.commit ?? '?'}${meta.regmirror.dirty ? ' (+ uncommitted changes in src/)' : ''}; ${meta.distribution ?? 'docker-registry not run'}; ` +
      `manifest ${meta.settings.manifestBytes} bytes (OCI, ${meta.settings.smallCount + 1} layers). ` +
      'Client and servers share the machine: compare ratios, not absolute numbers.',
  );
  lines.push('');
  table(lines, rows.main, 'metric');
  lines.push('Server CPU per unit of work (lower is better; less sensitive to other load on the machine):');
  lines.push('');
  table(lines, rows.cpu, 'cost');
  if (rows.small.length) {
    lines.push('Small requests vs a bare `node:http` server answering the same headers and body (bench/refserver.mjs), same load, same run:');
    lines.push('');
    lines.push('| request | regmirror req/s | node:http req/s | ratio | regmirror CPU µs/req | node:http CPU µs/req | CPU ratio node:http/regmirror |');
    lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
    const x = (v) => (v === null ? 'n/a' : v.toFixed(2));
    for (const r of rows.small) lines.push(`| ${r.metric} | ${fmt(r.regmirror)} | ${fmt(r.reference)} | ${x(r.ratio)} | ${fmt(r.regmirrorCpuUs, 1)} | ${fmt(r.referenceCpuUs, 1)} | ${x(r.cpuRatio)} |`);
    lines.push('');
  }
  lines.push('| aim | measured | result |');
  lines.push('| --- | ---: | --- |');
  for (const a of aims) lines.push(`| ${a.aim} | ${a.value} | ${a.pass === null ? 'n/a' : a.pass ? 'met' : 'NOT met'} |`);
  if (notes.length) {
    lines.push('');
    for (const n of notes) lines.push(`- ${n}`);
  }
  lines.push('');
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

/**
 * The four autocannon measurements, interleaved: each metric's time is cut into
 * BENCH_SLICES slices per server, run in the order A B B A A B ... (flipped for every
 * other metric), so background load that comes and goes lands on both servers alike.
 */
async function benchAll(registries, reference, seedData, results) {
  const bigPath = `/v2/${REPO}/blobs/${seedData.big.digest}`;
  const smallReqs = seedData.small.map((b) => ({ method: 'GET', path: `/v2/${REPO}/blobs/${b.digest}` }));
  const paths = smallPaths(seedData);
  const manifestPath = paths.manifestTag;
  const accept = { accept: MANIFEST_ACCEPT };
  const manifestBytes = seedData.oci.length;
  const metrics = [
    // A 256 MiB request takes ~BIG_SIZE / (bandwidth / 4); allow a slow one without a timeout.
    { key: 'blobGetBig', name: `GET ${BIG_MIB} MiB blob`, rss: true, opts: { connections: 4, method: 'GET', timeout: Math.max(30, SECONDS * 3) }, extra: { requests: [{ method: 'GET', path: bigPath }] } },
    { key: 'blobGetSmall', name: 'GET 1 MiB blobs', opts: { connections: 16, method: 'GET' }, extra: { requests: smallReqs }, minBodyPerRequest: SMALL_SIZE },
    { key: 'manifestHead', name: 'HEAD manifest', opts: { connections: 64, method: 'HEAD', headers: accept }, extra: { head: true, requests: [{ method: 'HEAD', path: manifestPath }] } },
    // Each response must carry the whole manifest.
    { key: 'manifestGet', name: 'GET manifest', opts: { connections: 64, method: 'GET', headers: accept }, extra: { requests: [{ method: 'GET', path: manifestPath }] }, minBodyPerRequest: manifestBytes },
    { key: 'manifestHeadDigest', name: 'HEAD manifest by digest', opts: { connections: 64, method: 'HEAD', headers: accept }, extra: { head: true, requests: [{ method: 'HEAD', path: paths.manifestDigest }] } },
    { key: 'manifestGetDigest', name: 'GET manifest by digest', opts: { connections: 64, method: 'GET', headers: accept }, extra: { requests: [{ method: 'GET', path: paths.manifestDigest }] }, minBodyPerRequest: manifestBytes },
    // The config blob (a few KB): per-request cost of the blob path, not bandwidth.
    { key: 'blobGetTiny', name: `GET ${seedData.config.length} B blob`, opts: { connections: 16, method: 'GET' }, extra: { requests: [{ method: 'GET', path: paths.tinyBlob }] }, minBodyPerRequest: seedData.config.length },
  ];
  const sliceSeconds = SECONDS / SLICES;
  for (const [i, m] of metrics.filter((x) => ONLY.includes(x.key)).entries()) {
    // The reference answers only the small requests, and it is measured the same way.
    const servers = reference && SMALL_METRICS.includes(m.key) ? [...registries, reference] : registries;
    const slices = new Map(servers.map((srv) => [srv.name, []]));
    const rss = new Map();
    for (let k = 0; k < SLICES; k++) {
      const order = (i + k) % 2 === 0 ? servers : [...servers].reverse();
      for (const srv of order) {
        const sampler = m.rss ? rssSampler(srv.pid) : null;
        slices.get(srv.name).push(await cannonSlice(srv, m.opts, m.extra, sliceSeconds, k === 0));
        if (sampler) {
          const samples = sampler.stop();
          const r = { ...rssSummary(samples), samples: samples.length };
          const prev = rss.get(srv.name);
          rss.set(srv.name, prev ? { startMiB: prev.startMiB, peakMiB: Math.max(prev.peakMiB, r.peakMiB), endMiB: r.endMiB, samples: prev.samples + r.samples } : r);
        }
      }
    }
    for (const srv of servers) {
      const out = combineSlices(m.name, srv, m.opts.connections, slices.get(srv.name));
      if (out.valid && m.minBodyPerRequest && out.bodyBytes < out.requests * m.minBodyPerRequest) {
        out.valid = false;
        log(`${srv.name} ${m.name}: response bodies shorter than expected`);
      }
      results[srv.name][m.key] = out;
      // VmHWM is the peak over the process's life: read after each metric, it shows which load raised it.
      (results[srv.name].hwmAfterMiB ??= {})[m.key] = mib1(readHwmKiB(srv.pid));
      if (m.rss) {
        const r = rss.get(srv.name);
        results[srv.name].rssBigGet = r;
        log(`${srv.name} RSS during ${BIG_MIB} MiB GET: start ${r.startMiB} MiB, peak ${r.peakMiB} MiB, end ${r.endMiB} MiB`);
      }
    }
  }
}

async function benchPushes(servers, seedData, results) {
  // Interleaved (A B, B A, ...) with `sync` before each, so one server's dirty pages are
  // not written back during the other's push.
  const budgetMs = 40_000 * servers.length;
  const started = Date.now();
  for (const srv of servers) results[srv.name].push = { runs: [] };
  for (const [i, p] of seedData.pushes.entries()) {
    for (const srv of i % 2 === 0 ? servers : [...servers].reverse()) {
      if (Date.now() - started > budgetMs) {
        log(`push budget of ${budgetMs / 1000} s used up; skipping remaining repetitions`);
        break;
      }
      try {
        execFileSync('sync', [], { timeout: 60_000 });
      } catch {
        /* best effort */
      }
      const sampler = rssSampler(srv.pid);
      const before = cpuSnapshot(srv.pid);
      const t = await pushStreamedBlob(srv.base, `${REPO}-push`, p.label, p.size, p.digest);
      const cpu = cpuDelta(before, cpuSnapshot(srv.pid));
      const rss = rssSummary(sampler.stop());
      const out = results[srv.name].push;
      const MBps = Math.round((p.size / 1e6 / t.seconds) * 10) / 10;
      out.runs.push({ ...t, seconds: Math.round(t.seconds * 1000) / 1000, MBps, ...cpu, serverCpuSecondsPerGB: Math.round((cpu.serverCpuSeconds / (p.size / 1e9)) * 1000) / 1000 });
      out.rssPeakMiB = Math.max(out.rssPeakMiB ?? 0, rss.peakMiB);
      log(
        `${srv.name} push ${p.label}: ${MBps} MB/s (${t.seconds.toFixed(2)} s: PATCH ${t.patchSeconds} s, PUT ${t.putSeconds} s), ` +
          `server CPU ${cpu.serverCpuSeconds} s, foreign CPU ${(cpu.foreignCpuShare * 100).toFixed(0)}%`,
      );
    }
  }
  for (const srv of servers) {
    const out = results[srv.name].push;
    out.medianMBps = median(out.runs.map((r) => r.MBps));
    out.medianServerCpuSecondsPerGB = median(out.runs.map((r) => r.serverCpuSecondsPerGB));
    results[srv.name].rssPush = { peakMiB: out.rssPeakMiB ?? null };
    (results[srv.name].hwmAfterMiB ??= {}).push = mib1(readHwmKiB(srv.pid));
  }
}

async function main() {
  const hard = setTimeout(() => {
    log(`hard limit of ${HARD_LIMIT_S} s reached: aborting`);
    cleanup().finally(() => process.exit(3));
  }, HARD_LIMIT_S * 1000);

  if (!fs.existsSync(REGMIRROR_CLI)) throw new Error(`${REGMIRROR_CLI} missing: run \`npm run build\` (or \`npm run bench\`)`);
  const withDist = WITH_DISTRIBUTION && onPath('docker-registry');
  if (WITH_DISTRIBUTION && !withDist) log('docker-registry is not on PATH: benchmarking regmirror alone');

  if (WAIT_QUIET_S > 0) await waitQuiet(WAIT_QUIET_S);
  const loadBefore = os.loadavg();
  if (loadBefore[0] > 0.5) log(`note: load average is ${loadBefore.map((x) => x.toFixed(2)).join(' ')} before start; other work on the machine skews results`);
  log(`settings: ${SECONDS} s runs, ${WARMUP} s warm-up, ${BIG_MIB} MiB big blob, ${PUSH_REPS} pushes; hard limit ${HARD_LIMIT_S} s`);
  log('computing deterministic blobs and digests');
  const seedData = buildSeed();

  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-bench-'));
  tempDirs.push(root);
  const servers = [];
  const rmDir = path.join(root, 'regmirror');
  fs.mkdirSync(rmDir);
  servers.push(await startRegmirror(rmDir));
  if (withDist) {
    const dDir = path.join(root, 'docker-registry');
    fs.mkdirSync(dDir);
    servers.push(await startDistribution(dDir));
  }
  for (const s of servers) log(`${s.name} pid ${s.pid} at ${s.base}`);

  const results = {};
  for (const s of servers) {
    results[s.name] = { pid: s.pid, rssAfterStartMiB: mib1(readRssKiB(s.pid)), hwmAfterStartMiB: mib1(readHwmKiB(s.pid)) };
    const secs = await seed(s, seedData);
    results[s.name].seedSeconds = Math.round(secs * 100) / 100;
    results[s.name].rssAfterSeedMiB = mib1(readRssKiB(s.pid));
    results[s.name].hwmAfterSeedMiB = mib1(readHwmKiB(s.pid));
    log(`${s.name} seeded in ${secs.toFixed(2)} s`);
  }

  let reference = null;
  if (WITH_REFERENCE && ONLY.some((m) => SMALL_METRICS.includes(m))) {
    const refDir = path.join(root, 'node-http');
    fs.mkdirSync(refDir);
    const ref = await startReferenceServer(refDir, await referenceRoutes(servers[0], seedData));
    reference = { name: 'node-http', base: ref.base, entry: ref.entry, pid: ref.pid, dir: refDir };
    results[reference.name] = { pid: reference.pid };
    log(`node-http (reference) pid ${reference.pid} at ${reference.base}`);
  }
  for (const s of servers) results[s.name].rssBeforeRunsMiB = Math.round((readRssKiB(s.pid) ?? 0) / 102.4) / 10;
  await benchAll(servers, reference, seedData, results);
  if (ONLY.includes('push')) await benchPushes(servers, seedData, results);

  for (const s of servers) results[s.name].hwmEndMiB = mib1(readHwmKiB(s.pid));
  const rm = servers[0];
  const stopInfo = {};
  for (const s of reference ? [...servers, reference] : servers) stopInfo[s.name] = await stopProcess(s.entry);
  let profile = null;
  if (PROFILE && rm.profileDir) {
    profile = summarizeProfiles(rm.profileDir);
    if (profile) {
      log(`regmirror CPU profile (${profile.totalMs} ms sampled, whole run incl. seeding): ${profile.files.join(', ')}`);
      for (const t of profile.top) console.error(`  ${String(t.pct).padStart(5)}%  ${String(t.ms).padStart(6)} ms  ${t.fn}`);
    }
  }

  const commit = versionOf('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']);
  const dirty = (versionOf('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src']) ?? '') !== '';
  const date = new Date().toISOString();
  const meta = {
    date,
    node: process.version,
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '?', memGiB: Math.round(os.totalmem() / 2 ** 30) },
    regmirror: { commit, dirty },
    distribution: withDist ? versionOf('docker-registry', ['--version']) : null,
    settings: { seconds: SECONDS, slices: SLICES, warmup: WARMUP, pushReps: PUSH_REPS, bigMiB: BIG_MIB, smallCount: SMALL_COUNT, smallMiB: 1, manifestBytes: seedData.oci.length, tinyBlobBytes: seedData.config.length, only: ONLY, reference: WITH_REFERENCE, accept: MANIFEST_ACCEPT },
    loadavg: { before: loadBefore.map((x) => Math.round(x * 100) / 100), after: os.loadavg().map((x) => Math.round(x * 100) / 100) },
    autocannon: '8 (library; bodies counted, not buffered; HEAD responses parsed without body)',
  };
  const rows = buildRows(results);
  const aims = aimsOf(results);
  const notes = [];
  let maxForeign = 0;
  for (const r of Object.values(results)) {
    for (const k of ALL_METRICS) maxForeign = Math.max(maxForeign, r[k]?.foreignCpuShareMax ?? 0);
    for (const p of r.push?.runs ?? []) maxForeign = Math.max(maxForeign, p.foreignCpuShare ?? 0);
  }
  notes.push(
    `Other processes on the machine used up to ${(maxForeign * 100).toFixed(0)}% of its CPU during a measured run` +
      (maxForeign > 0.15 ? ': throughput numbers are disturbed, prefer the CPU-cost table and re-run on a quiet machine.' : ' (includes kernel loopback work; below ~15% is normal).'),
  );
  for (const [name, r] of Object.entries(results)) {
    for (const k of ALL_METRICS) {
      if (r[k] && r[k].valid === false) notes.push(`${name} ${k}: run had ${r[k].errors} errors, ${r[k].timeouts} timeouts, ${r[k].non2xx} non-2xx responses; not reported`);
    }
  }
  const doc = { meta, results, table: rows.main.map(({ digits, ...r }) => r), cpuTable: rows.cpu.map(({ digits, ...r }) => r), smallTable: rows.small, aims, exits: stopInfo, profile };

  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const jsonFile = path.join(RESULTS_DIR, `${date.slice(0, 10)}-core.json`);
  fs.writeFileSync(jsonFile, `${JSON.stringify(doc, null, 2)}\n`);
  const md = markdown(meta, rows, aims, notes);
  fs.writeFileSync(path.join(RESULTS_DIR, 'latest-core.md'), md);
  process.stdout.write(`\n${md}\n`);
  log(`wrote ${path.relative(process.cwd(), jsonFile)} and ${path.relative(process.cwd(), path.join(RESULTS_DIR, 'latest-core.md'))}`);
  clearTimeout(hard);
}

main()
  .then(
    () => cleanup().then(() => 0),
    (err) => {
      console.error(`bench failed: ${err && err.stack ? err.stack : err}`);
      for (const d of tempDirs) {
        for (const f of ['regmirror/server.log', 'docker-registry/server.log']) {
          const p = path.join(d, f);
          if (fs.existsSync(p)) console.error(`--- ${f} (tail)\n${fs.readFileSync(p, 'utf8').split('\n').slice(-20).join('\n')}`);
        }
      }
      return cleanup().then(() => 1);
    },
  )
  .then((code) => {
    agent.destroy();
    process.exit(code);
  });
