#!/usr/bin/env node
/**
 * Pull-through benchmark: regmirror vs Debian's docker-registry (CNCF distribution 2.8) in
 * proxy mode, both caching a local upstream docker-registry on loopback.
 *
 *   npm run build && node bench/pullthrough.mjs
 *
 * Layout (all on 127.0.0.1, all started here and stopped here by PID):
 *
 *   clients (worker threads) --> cache (regmirror | docker-registry proxy) --> counting proxy
 *   (a child process running this file with --counting-proxy) --> upstream docker-registry
 *
 * The upstream is seeded over HTTP with one image of BENCH_PT_LAYERS x BENCH_PT_LAYER_MIB
 * (default 4 x 128 MiB) incompressible deterministic layers (AES-256-CTR of zeros,
 * streamed), a config and an OCI manifest. The counting proxy counts every request per
 * method and path, and the body bytes of blob GET answers, so upstream traffic is exact.
 *
 * Scenarios, each cache with fresh empty storage per scenario:
 *   cold1  1 client: manifest by tag, config, then the layers 3 at a time (as containerd)
 *   tools  1 real client on a fresh cache: skopeo copy, ctr images pull, a CRI PullImage
 *          (bench/toolpull.mjs; private containerd per pull), vs docker-registry's wall time
 *   warm1 / warm8  the same image again on that instance, 1 and 8 clients
 *   cold8  8 concurrent clients on a fresh instance
 *   ttfb   time to first body byte of cold layers (one per round) through each cache vs
 *          the upstream as the caches see it (through the counting proxy) and direct
 * Every client verifies the sha256 (and size) of every blob and the manifest.
 * Writes bench/results/<YYYY-MM-DD>-pullthrough.json and bench/results/latest-pullthrough.md.
 *
 * Settings (env): BENCH_PT_LAYERS (4), BENCH_PT_LAYER_MIB (128), BENCH_PT_CLIENTS (8),
 * BENCH_PT_PARALLEL (3 layer downloads per client), BENCH_PT_CLIENT_THREADS (1: one worker
 * thread per client, like separate nodes; 0: all clients in the main thread), BENCH_PT_TTFB_RUNS (4, at most the
 * layer count), BENCH_PT_UPSTREAM_MBPS (0 = unthrottled; else the counting proxy caps the
 * upstream link at this many MB/s, shared by all upstream responses),
 * BENCH_PT_SCENARIO_TIMEOUT (90 s per pull scenario), BENCH_PT_BUDGET (320 s: no scenario
 * starts after this), BENCH_PT_TIMEOUT (440 s hard limit), BENCH_WAIT_QUIET (0: seconds to
 * wait at most for other CPU load to stop first), BENCH_DOCKER_REGISTRY=0,
 * BENCH_REGMIRROR_CLI, BENCH_REGMIRROR_CLI_B (a second build measured as `regmirror-B`, A/B),
 * BENCH_PT_ONLY (cold1,tools,warm,coldN,ttfb), BENCH_PT_TOOLS (skopeo,ctr,cri), BENCH_PT_TOOL_RUNS (1), BENCH_PT_COLD1_RUNS (1: cold 1-client pulls per
 * cache, interleaved; medians reported), BENCH_PROFILE=1 (regmirror under --cpu-prof),
 * BENCH_PT_SNAPSHOT=0 (run dist/ in place instead of a copy made at
 * start), BENCH_KEEP=1, BENCH_RESULTS_DIR. See bench/README.md.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Readable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { fetchVerified, pullImage } from './pullclient.mjs';
import { TOOLS, toolScenario, toolVersions, toolsAvailable } from './toolpull.mjs';
import {
  HERE,
  ROOT,
  MIB,
  MT,
  MANIFEST_ACCEPT,
  agent as seedAgent,
  assertLoopback,
  cleanup,
  CLK_TCK,
  configure,
  elapsedS,
  envNum,
  expectStatus,
  genStream,
  installExitHandlers,
  log,
  machineBusyTicks,
  median,
  NCPU,
  mib1,
  nodeFlagsOf,
  onPath,
  pidCpuTicks,
  readHwmKiB,
  readRssKiB,
  request,
  rssSampler,
  rssSummary,
  sha256,
  sleep,
  startDockerRegistry,
  startProcess,
  stopProcess,
  summarizeProfiles,
  tempDirs,
  versionOf,
  waitQuiet,
  freePort,
  waitReady,
} from './lib.mjs';

const THIS_FILE = fileURLToPath(import.meta.url);
const hr = () => Number(process.hrtime.bigint()) / 1e6; // ms, monotonic

// =======================================================================================
// Counting proxy (child process): clients never see it; the caches use it as upstream.
// =======================================================================================

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade']);

function stripHopByHop(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

function runCountingProxy() {
  const target = new URL(process.env.PT_PROXY_TARGET);
  assertLoopback(target.hostname);
  const rateBytesPerMs = Number(process.env.PT_PROXY_RATE_MBPS || 0) * 1000; // MB/s -> bytes/ms
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const fresh = () => ({ requests: 0, byKey: {}, blobGets: {}, blobGetBytes: 0, blobGetBytesByDigest: {}, responseBytes: 0, errors: 0 });
  let stats = fresh();
  let active = 0;
  let lastChange = Date.now();
  let nextFree = 0; // shared link: when the next byte may leave (ms, performance clock)

  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    const key = `${req.method} ${u.pathname}`;
    stats.requests++;
    stats.byKey[key] = (stats.byKey[key] ?? 0) + 1;
    const m = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(u.pathname);
    const blobDigest = req.method === 'GET' && m ? m[1] : null;
    if (blobDigest) stats.blobGets[blobDigest] = (stats.blobGets[blobDigest] ?? 0) + 1;
    active++;
    lastChange = Date.now();
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      active--;
      lastChange = Date.now();
    };
    res.on('close', finish);
    const s = stats; // count into the stats object current when the request arrived
    const up = http.request(
      { hostname: target.hostname, port: target.port, method: req.method, path: req.url, headers: { ...stripHopByHop(req.headers), host: target.host }, agent },
      (ur) => {
        res.writeHead(ur.statusCode, stripHopByHop(ur.headers));
        const counted = blobDigest && ur.statusCode >= 200 && ur.statusCode < 300;
        ur.on('data', (chunk) => {
          s.responseBytes += chunk.length;
          if (counted) {
            s.blobGetBytes += chunk.length;
            s.blobGetBytesByDigest[blobDigest] = (s.blobGetBytesByDigest[blobDigest] ?? 0) + chunk.length;
          }
          const drained = res.write(chunk);
          let delay = 0;
          if (rateBytesPerMs > 0) {
            const now = performance.now();
            nextFree = Math.max(nextFree, now) + chunk.length / rateBytesPerMs;
            delay = nextFree - now - 2;
          }
          if (!drained || delay > 0) {
            ur.pause();
            let waits = (drained ? 0 : 1) + (delay > 0 ? 1 : 0);
            const one = () => {
              if (--waits === 0 && !res.destroyed) ur.resume();
            };
            if (!drained) res.once('drain', one);
            if (delay > 0) setTimeout(one, delay);
          }
        });
        ur.on('end', () => res.end());
        ur.on('error', () => res.destroy());
        ur.on('aborted', () => res.destroy());
      },
    );
    up.setTimeout(120_000, () => up.destroy(new Error('upstream timeout')));
    up.on('error', () => {
      s.errors++;
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end('counting proxy: upstream error');
      } else res.destroy();
    });
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => process.send({ type: 'ready', port: server.address().port }));
  process.on('message', (msg) => {
    if (msg?.type !== 'stats') return;
    process.send({ type: 'stats', id: msg.id, stats: { ...stats, active, idleMs: active === 0 ? Date.now() - lastChange : 0 } });
    if (msg.reset) stats = fresh();
  });
  // The parent owns us: when it goes away (normally or not), so do we.
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));
}

// =======================================================================================
// Everything below runs in the benchmark process.
// =======================================================================================

const LAYERS = Math.round(envNum('BENCH_PT_LAYERS', 4, 1, 16));
const LAYER_MIB = Math.round(envNum('BENCH_PT_LAYER_MIB', 128, 1, 1024));
const CLIENTS = Math.round(envNum('BENCH_PT_CLIENTS', 8, 2, 32));
const PARALLEL = Math.round(envNum('BENCH_PT_PARALLEL', 3, 1, 16));
const CLIENT_THREADS = process.env.BENCH_PT_CLIENT_THREADS !== '0';
const TTFB_RUNS = Math.round(envNum('BENCH_PT_TTFB_RUNS', 8, 1, 32));
const UPSTREAM_MBPS = envNum('BENCH_PT_UPSTREAM_MBPS', 0, 0, 100_000);
const SCENARIO_TIMEOUT_S = envNum('BENCH_PT_SCENARIO_TIMEOUT', 90, 5, 600);
const BUDGET_S = envNum('BENCH_PT_BUDGET', 320, 10, 3600);
const HARD_LIMIT_S = envNum('BENCH_PT_TIMEOUT', 440, 30, 3600);
const WAIT_QUIET_S = envNum('BENCH_WAIT_QUIET', 0, 0, 1800);
const WITH_DISTRIBUTION = process.env.BENCH_DOCKER_REGISTRY !== '0';
const PROFILE = process.env.BENCH_PROFILE === '1';
const KEEP = process.env.BENCH_KEEP === '1' || PROFILE;
configure({ name: 'pullthrough', keep: KEEP });
const REGMIRROR_CLI = path.resolve(process.env.BENCH_REGMIRROR_CLI || path.join(ROOT, 'dist/cli.js'));
// A second build, measured as another cache in the same run (A/B of a change).
const REGMIRROR_CLI_B = process.env.BENCH_REGMIRROR_CLI_B ? path.resolve(process.env.BENCH_REGMIRROR_CLI_B) : null;
// Extra environment for regmirror-B only (`K=V K=V`), e.g. glibc malloc tunables.
const REGMIRROR_ENV_B = Object.fromEntries(
  (process.env.BENCH_REGMIRROR_ENV_B ?? '')
    .split(/\s+/)
    .filter(Boolean)
    .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
);
const SCENARIOS = ['cold1', 'tools', 'warm', 'coldN', 'ttfb'];
const ONLY = (process.env.BENCH_PT_ONLY || SCENARIOS.join(',')).split(',').map((x) => x.trim());
for (const o of ONLY) if (!SCENARIOS.includes(o)) throw new Error(`BENCH_PT_ONLY: unknown scenario ${o} (${SCENARIOS.join(', ')})`);
// Cold 1-client pulls per cache, each on a fresh instance, interleaved (A B, B A, ...).
const COLD1_RUNS = Math.round(envNum('BENCH_PT_COLD1_RUNS', 1, 1, 20));
// Before each cold 1-client pull, fetch a blob of this many MiB (not part of the image)
// through the fresh cache, unmeasured: a long-running mirror has its fill path compiled
// (V8 JIT) already; 0 = measure a just-started process.
const WARM_FILL_MIB = Math.round(envNum('BENCH_PT_WARM_FILL_MIB', 0, 0, 1024));
// Cold 1-client pulls with real clients (bench/toolpull.mjs): which, and how many runs each.
const TOOL_LIST = (process.env.BENCH_PT_TOOLS || TOOLS.join(',')).split(',').map((x) => x.trim()).filter(Boolean);
for (const t of TOOL_LIST) if (!TOOLS.includes(t)) throw new Error(`BENCH_PT_TOOLS: unknown client ${t} (${TOOLS.join(', ')})`);
const TOOL_RUNS = Math.round(envNum('BENCH_PT_TOOL_RUNS', 1, 1, 20));

// Copy the build at start, so a rebuild of dist/ during the run (tests, colleagues) does not
// change what later scenarios measure.
const SNAPSHOT = process.env.BENCH_PT_SNAPSHOT !== '0';
const RESULTS_DIR = path.resolve(process.env.BENCH_RESULTS_DIR || path.join(HERE, 'results'));
const LAYER_SIZE = LAYER_MIB * MIB;
const IDLE_WAIT_MS = 60_000; // at most this long for the caches' upstream traffic to stop

const REPO = 'bench/pullthrough';
const TAG = 'v1';
const UPSTREAM_NAME = 'upstream.bench'; // regmirror's name for the upstream (a host-like name)
const round = (x, d = 2) => (x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);

// ---------------------------------------------------------------------------------------
// Processes (bench/lib.mjs) and CPU accounting: per-process CPU seconds, and the share of
// the machine's CPU used by processes that are not part of this benchmark.
// ---------------------------------------------------------------------------------------

/** pids: { role: pid } */
function cpuSnapshot(pids) {
  const per = {};
  for (const [role, pid] of Object.entries(pids)) per[role] = pid ? pidCpuTicks(pid) : { user: 0, sys: 0 };
  return { at: hr(), busy: machineBusyTicks(), per };
}

function cpuDelta(a, b) {
  const secs = (b.at - a.at) / 1000;
  const out = {};
  let ours = 0;
  for (const role of Object.keys(b.per)) {
    const user = b.per[role].user - (a.per[role]?.user ?? 0);
    const sys = b.per[role].sys - (a.per[role]?.sys ?? 0);
    ours += user + sys;
    out[`${role}CpuSeconds`] = round((user + sys) / CLK_TCK, 2);
    out[`${role}CpuSysSeconds`] = round(sys / CLK_TCK, 2);
    // Minor faults: fresh memory touched (allocation churn); counted exactly, whatever the load.
    out[`${role}MinorFaults`] = (b.per[role].minflt ?? 0) - (a.per[role]?.minflt ?? 0);
  }
  out.foreignCpuShare = Math.max(0, round((b.busy - a.busy - ours) / CLK_TCK / (secs * NCPU), 3));
  return out;
}

// ---------------------------------------------------------------------------------------
// Upstream: docker-registry + counting proxy, seeded with the image
// ---------------------------------------------------------------------------------------

async function startUpstream(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const { base, entry, pid } = await startDockerRegistry(dir, 'upstream docker-registry');
  return { name: 'upstream', base, entry, pid };
}

async function startCountingProxy(dir, targetBase) {
  fs.mkdirSync(dir, { recursive: true });
  const env = { ...process.env, PT_PROXY_TARGET: targetBase, PT_PROXY_RATE_MBPS: String(UPSTREAM_MBPS) };
  const entry = startProcess('counting proxy', process.execPath, [THIS_FILE, '--counting-proxy'], path.join(dir, 'proxy.log'), { ipc: true, env });
  const pending = new Map();
  let nextId = 1;
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('counting proxy did not start in 10 s')), 10_000);
    entry.child.on('message', (msg) => {
      if (msg?.type === 'ready') {
        clearTimeout(timer);
        resolve(msg.port);
      } else if (msg?.type === 'stats' && pending.has(msg.id)) {
        pending.get(msg.id)(msg.stats);
        pending.delete(msg.id);
      }
    });
    entry.exited.then(() => reject(new Error('counting proxy exited during start-up')));
  });
  const stats = (reset = false) =>
    new Promise((resolve, reject) => {
      if (entry.done) return reject(new Error('counting proxy is not running'));
      const id = nextId++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error('counting proxy did not answer in 10 s'));
      }, 10_000);
      pending.set(id, (s) => {
        clearTimeout(timer);
        resolve(s);
      });
      entry.child.send({ type: 'stats', id, reset });
    });
  /** Wait (bounded) until no upstream request is in flight and none started for `quietMs`. */
  const waitIdle = async (quietMs = 500, maxMs = IDLE_WAIT_MS) => {
    const deadline = Date.now() + maxMs;
    for (let i = 0; i < 10_000 && Date.now() < deadline; i++) {
      const s = await stats(false);
      if (s.active === 0 && s.idleMs >= quietMs) return true;
      await sleep(100);
    }
    log(`upstream still busy after ${maxMs} ms; continuing`);
    return false;
  };
  return { name: 'counting proxy', base: `http://127.0.0.1:${port}`, entry, pid: entry.pid, stats, waitIdle };
}

/**
 * A layer that is a valid uncompressed tar of exactly `size` bytes (a multiple of 512): one
 * file of incompressible bytes, then the two zero end blocks. containerd and the CRI plugin
 * unpack what they pull, so the layers must be real tars for the real-client scenarios.
 */
function tarLayerStream(label, size, hash) {
  const body = size - 3 * 512;
  const h = Buffer.alloc(512);
  h.write('layer.bin', 0);
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(`${body.toString(8).padStart(11, '0')}\0`, 124);
  h.write('14500000000\0', 136); // 2023-01-01, fixed: the digest must not change per run
  h.write('        ', 148);
  h.write('0', 156);
  h.write('ustar\0' + '00', 257);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  const trailer = Buffer.alloc(1024);
  return Readable.from(
    (async function* () {
      hash.update(h);
      yield h;
      yield* genStream(`pullthrough/${label}`, body, hash);
      hash.update(trailer);
      yield trailer;
    })(),
    { objectMode: false },
  );
}

async function pushLayer(base, label, size) {
  const post = expectStatus(await request('POST', `${base}/v2/${REPO}/blobs/uploads/`, { headers: { 'content-length': '0' } }), 202, 'POST upload');
  const loc = new URL(post.headers.location, base);
  const hash = createHash('sha256');
  const patch = expectStatus(
    await request('PATCH', loc.toString(), { headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) }, body: tarLayerStream(label, size, hash), timeoutMs: 120_000 }),
    202,
    'PATCH upload',
  );
  const digest = `sha256:${hash.digest('hex')}`;
  const put = new URL(patch.headers.location ?? loc.toString(), base);
  put.searchParams.set('digest', digest);
  expectStatus(await request('PUT', put.toString(), { headers: { 'content-length': '0' }, timeoutMs: 60_000 }), 201, 'PUT upload');
  return digest;
}

async function pushSmall(base, buf, digest) {
  const post = expectStatus(await request('POST', `${base}/v2/${REPO}/blobs/uploads/`, { headers: { 'content-length': '0' } }), 202, 'POST upload');
  const put = new URL(post.headers.location, base);
  put.searchParams.set('digest', digest);
  expectStatus(await request('PUT', put.toString(), { headers: { 'content-type': 'application/octet-stream', 'content-length': String(buf.length) }, body: buf }), 201, 'PUT config');
}

/** Seeds the upstream; returns the image (descriptors, digests, total blob bytes). */
async function seedUpstream(base) {
  const layers = [];
  for (let i = 0; i < LAYERS; i++) {
    const digest = await pushLayer(base, `layer-${i}`, LAYER_SIZE);
    layers.push({ mediaType: MT.ociLayer, digest, size: LAYER_SIZE });
    log(`seeded layer ${i + 1}/${LAYERS} (${LAYER_MIB} MiB) ${digest.slice(0, 19)}…`);
  }
  const configDoc = {
    architecture: 'amd64',
    os: 'linux',
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) }, // uncompressed layers
    history: [{ created: '2024-01-01T00:00:00Z', created_by: 'regmirror pull-through bench' }],
  };
  const config = Buffer.from(JSON.stringify(configDoc));
  const configDesc = { mediaType: MT.ociConfig, digest: sha256(config), size: config.length };
  await pushSmall(base, config, configDesc.digest);
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.ociManifest, config: configDesc, layers }));
  const manifestDigest = sha256(manifest);
  const put = expectStatus(
    await request('PUT', `${base}/v2/${REPO}/manifests/${TAG}`, { headers: { 'content-type': MT.ociManifest, 'content-length': String(manifest.length) }, body: manifest }),
    201,
    'PUT manifest',
  );
  if (put.headers['docker-content-digest'] !== manifestDigest) throw new Error(`upstream manifest digest ${put.headers['docker-content-digest']}, want ${manifestDigest}`);
  const blobs = [configDesc, ...layers];
  const warmFill = WARM_FILL_MIB ? { digest: await pushLayer(base, 'warm-fill', WARM_FILL_MIB * MIB), size: WARM_FILL_MIB * MIB } : null;
  return { config: configDesc, layers, blobs, warmFill, manifestDigest, manifestBytes: manifest.length, size: blobs.reduce((n, b) => n + b.size, 0) };
}

// ---------------------------------------------------------------------------------------
// Caches under test
// ---------------------------------------------------------------------------------------

async function startRegmirror(dir, upstreamBase, cli, name, env = {}) {
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const cfg = path.join(dir, 'regmirror.yml');
  fs.writeFileSync(
    cfg,
    [
      `listen: 127.0.0.1:${port}`,
      `storage: ${path.join(dir, 'storage')}`,
      'log:',
      '  level: warn',
      'upstreams:',
      `  ${UPSTREAM_NAME}:`,
      `    endpoints: [${upstreamBase}]`,
      `defaultUpstream: ${UPSTREAM_NAME}`,
      '',
    ].join('\n'),
  );
  const profileDir = PROFILE ? path.join(dir, 'cpu-profile') : null;
  const args = [...nodeFlagsOf(cli), ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []), cli];
  const entry = startProcess(name, process.execPath, [...args, 'serve', '--config', cfg], path.join(dir, 'server.log'), { env: { ...process.env, ...env } });
  const base = `http://127.0.0.1:${port}`;
  await waitReady(base, entry);
  return { name, base, entry, pid: entry.pid, dir, profileDir };
}

async function startDistributionProxy(dir, upstreamBase) {
  fs.mkdirSync(dir, { recursive: true });
  const { base, entry, pid } = await startDockerRegistry(dir, 'docker-registry proxy', upstreamBase);
  return { name: 'docker-registry', base, entry, pid, dir };
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/**
 * N clients, each in its own worker thread (like separate nodes) unless
 * BENCH_PT_CLIENT_THREADS=0; the workers are started first and then released together, so
 * thread start-up is not timed.
 */
async function startClients(base, img, deadlineAt, n) {
  const opts = { repo: REPO, tag: TAG, parallel: PARALLEL };
  if (!CLIENT_THREADS) return () => Promise.all(Array.from({ length: n }, (_, i) => pullImage(base, img, deadlineAt, i, opts)));
  const slim = { manifestDigest: img.manifestDigest, manifestBytes: img.manifestBytes };
  const workers = Array.from({ length: n }, (_, id) => new Worker(new URL('./pullclient.mjs', import.meta.url), { workerData: { role: 'pull-client', base, img: slim, deadlineAt, id, opts } }));
  const settle = (w) => {
    const ready = new Promise((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    return {
      ready,
      result: () =>
        new Promise((resolve, reject) => {
          w.once('message', resolve);
          w.once('error', reject);
          w.once('exit', (code) => reject(new Error(`client worker exited with ${code}`)));
          w.postMessage('go');
        }).finally(() => w.terminate()),
    };
  };
  const handles = workers.map(settle);
  await Promise.all(handles.map((h) => h.ready));
  return () => Promise.all(handles.map((h) => h.result()));
}

/** N clients pulling at once. Upstream counters cover the pull and what the cache does after. */
async function pullScenario(label, cache, nClients, img, upstream, proxy) {
  await proxy.waitIdle();
  await proxy.stats(true);
  const pids = { cache: cache.pid, upstream: upstream.pid, proxy: proxy.pid, bench: process.pid };
  const deadlineAt = Date.now() + SCENARIO_TIMEOUT_S * 1000;
  const go = await startClients(cache.base, img, deadlineAt, nClients);
  const cpu0 = cpuSnapshot(pids);
  const rss = rssSampler(cache.pid);
  const start = hr();
  const clients = await go();
  const wallMs = hr() - start;
  const cpu = cpuDelta(cpu0, cpuSnapshot(pids));
  const rssOut = rssSummary(rss.stop());
  const idle = await proxy.waitIdle();
  const st = await proxy.stats(true);
  if (cache.entry.done) throw new Error(`${cache.name} exited during ${label}: ${JSON.stringify(cache.entry.exitInfo)}`);
  const failures = clients.flatMap((c) => c.failures);
  const clientBytes = clients.reduce((n, c) => n + c.bytes, 0);
  const getsPerBlob = img.blobs.map((b) => st.blobGets[b.digest] ?? 0);
  const r = {
    clients: nClients,
    wallSeconds: round(wallMs / 1000, 3),
    clientSeconds: { min: round(Math.min(...clients.map((c) => c.ms)) / 1000, 3), median: round(median(clients.map((c) => c.ms)) / 1000, 3), max: round(Math.max(...clients.map((c) => c.ms)) / 1000, 3) },
    clientBytes,
    clientMBps: round(clientBytes / 1e6 / (wallMs / 1000), 1),
    upstreamBlobBytes: st.blobGetBytes,
    upstreamBytesPerImage: round(st.blobGetBytes / img.size, 2),
    upstreamBlobGetsPerBlob: { max: Math.max(...getsPerBlob), min: Math.min(...getsPerBlob), perBlob: Object.fromEntries(img.blobs.map((b, i) => [b.digest, getsPerBlob[i]])) },
    upstreamRequests: st.requests,
    upstreamRequestsByPath: st.byKey,
    upstreamErrors: st.errors,
    upstreamSettled: idle,
    failures,
    valid: failures.length === 0,
    rss: rssOut,
    // The instance's peak RSS over its whole life so far (VmHWM), read after the clients finished.
    rssAfterStartMiB: cache.rssAfterStartMiB ?? null,
    hwmMiB: mib1(readHwmKiB(cache.pid)),
    ...cpu,
    // The image crosses the cache once (cold) or is served N times from disk (warm).
    cacheCpuSecondsPerGB: round(cpu.cacheCpuSeconds / (img.size / 1e9), 3),
    cacheCpuSysSecondsPerGB: round(cpu.cacheCpuSysSeconds / (img.size / 1e9), 3),
    cacheMinorFaultsPerGB: Math.round(cpu.cacheMinorFaults / (img.size / 1e9)),
  };
  log(
    `${cache.name} ${label}: ${r.wallSeconds} s wall, ${r.clientMBps} MB/s to clients, upstream ${r.upstreamBytesPerImage}x image ` +
      `(GETs per blob max ${r.upstreamBlobGetsPerBlob.max}), ${r.upstreamRequests} upstream requests, cache CPU ${cpu.cacheCpuSeconds} s, ` +
      `foreign CPU ${(cpu.foreignCpuShare * 100).toFixed(0)}%${failures.length ? `  [${failures.length} FAILURES: ${failures[0]}]` : ''}`,
  );
  return r;
}

/**
 * TTFB of cold layers: round i GETs layer i from the upstream directly, through the
 * counting proxy (the upstream as the caches see it) and through each fresh cache (warmed
 * with the manifest and config first), in a rotating order, waiting for upstream traffic
 * to stop before each GET.
 */
async function ttfbScenario(kinds, fresh, retire, img, upstream, proxy) {
  const upstreams = [{ name: 'upstream-direct', base: upstream.base }, { name: 'upstream', base: proxy.base }];
  const runs = Object.fromEntries([...upstreams.map((t) => t.name), ...kinds.map((k) => k.name)].map((n) => [n, []]));
  const failures = [];
  const agent = new http.Agent({ keepAlive: false });
  let caches = [];
  let targets = [];
  for (let i = 0; i < TTFB_RUNS; i++) {
    const li = i % img.layers.length;
    if (li === 0) {
      // Every layer once per set of fresh (empty) caches.
      for (const c of caches) await retire(c);
      caches = [];
      for (const k of kinds) caches.push(await fresh(k));
      // A mirror is a long-running process: warm each fresh cache (code paths, upstream
      // connection, token) with the manifest and the config blob, which are cold misses
      // too, so the rounds measure steady-state TTFB rather than a just-started process.
      for (const c of caches) {
        const warmAt = Date.now() + SCENARIO_TIMEOUT_S * 1000;
        await fetchVerified(`${c.base}/v2/${REPO}/manifests/${TAG}`, { agent, headers: { accept: MANIFEST_ACCEPT }, deadlineAt: warmAt });
        await fetchVerified(`${c.base}/v2/${REPO}/blobs/${img.config.digest}`, { agent, deadlineAt: warmAt, expect: img.config });
      }
      targets = [...upstreams, ...caches.map((c) => ({ name: c.name, base: c.base, cache: c }))];
    }
    const layer = img.layers[li];
    const order = targets.map((_, k) => targets[(k + i) % targets.length]);
    for (const t of order) {
      await proxy.waitIdle(300, 30_000);
      const deadlineAt = Date.now() + SCENARIO_TIMEOUT_S * 1000;
      try {
        const r = await fetchVerified(`${t.base}/v2/${REPO}/blobs/${layer.digest}`, { agent, deadlineAt, expect: layer });
        if (!r.ok) failures.push(`${t.name} round ${i}: ${r.error}`);
        runs[t.name].push({
          round: i,
          layer: li,
          headersMs: round(r.headersMs, 2),
          firstByteMs: round(r.firstByteMs, 2),
          lastChunkGapMs: round(r.lastChunkGapMs, 2),
          totalMs: round(r.totalMs, 1),
          MBps: round(r.bytes / 1e3 / r.totalMs, 1),
          ok: r.ok,
        });
      } catch (e) {
        failures.push(`${t.name} round ${i}: ${e.message}`);
      }
      if (t.cache?.entry.done) throw new Error(`${t.name} exited during the TTFB runs`);
    }
  }
  for (const c of caches) await retire(c);
  agent.destroy();
  const summary = {};
  for (const name of Object.keys(runs)) {
    const rs = runs[name].filter((r) => r.ok);
    summary[name] = {
      medianFirstByteMs: round(median(rs.map((r) => r.firstByteMs)), 2),
      medianHeadersMs: round(median(rs.map((r) => r.headersMs)), 2),
      medianTotalMs: round(median(rs.map((r) => r.totalMs)), 1),
      medianLastChunkGapMs: round(median(rs.map((r) => r.lastChunkGapMs)), 1),
      medianMBps: round(median(rs.map((r) => r.MBps)), 1),
      runs: runs[name],
    };
  }
  // Per round: cache TTFB minus the upstream's (through the proxy) in the same round.
  for (const c of kinds) {
    const deltas = [];
    for (const r of runs[c.name]) {
      const u = runs.upstream.find((x) => x.round === r.round);
      if (u && r.ok && u.ok) deltas.push(r.firstByteMs - u.firstByteMs);
    }
    summary[c.name].medianExtraFirstByteMs = round(median(deltas), 2);
    summary[c.name].extraFirstByteMs = deltas.map((d) => round(d, 2));
  }
  for (const name of Object.keys(runs)) {
    const x = summary[name];
    log(`TTFB ${name}: median first byte ${x.medianFirstByteMs} ms (+${x.medianExtraFirstByteMs ?? '-'} ms), whole ${LAYER_MIB} MiB ${x.medianTotalMs} ms, last-chunk gap ${x.medianLastChunkGapMs} ms`);
  }
  return { runs: TTFB_RUNS, summary, failures, valid: failures.length === 0 };
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

function fmt(v, digits = 0, suffix = '') {
  if (v === null || v === undefined || Number.isNaN(v)) return 'n/a';
  return `${Number(v).toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })}${suffix}`;
}

function buildRows(res, names) {
  const get = (cache, fn) => {
    try {
      const v = fn(res.caches[cache] ?? {}, cache);
      return v === undefined ? null : v;
    } catch {
      return null;
    }
  };
  const ok = (s) => (s && s.valid ? s : null);
  const ratio = (a, b) => (a && b ? a / b : null);
  const up = res.ttfb?.summary?.upstream;
  const rows = [];
  const row = (metric, fn, digits, suffix, target) => rows.push({ metric, values: Object.fromEntries(names.map((name) => [name, get(name, fn)])), digits, suffix, target });
  const n = CLIENTS;
  if (COLD1_RUNS > 1) {
    row(`Cold pull, 1 client: wall time (s), median of ${COLD1_RUNS}`, (c) => c.cold1Median?.wallSeconds, 2, '', 'lower is better');
    row(`Cold pull, 1 client: cache CPU s per GB filled, median of ${COLD1_RUNS}`, (c) => c.cold1Median?.cacheCpuSecondsPerGB, 3, '', '≤ docker-registry');
    row(`Cold pull, 1 client: cache system CPU s per GB, median of ${COLD1_RUNS}`, (c) => c.cold1Median?.cacheCpuSysSecondsPerGB, 3, '', 'info');
    row(`Cold pull, 1 client: cache minor page faults per GB, median of ${COLD1_RUNS}`, (c) => c.cold1Median?.cacheMinorFaultsPerGB, 0, '', 'info (fresh memory touched)');
    row(`Cold pull, 1 client: cache VmHWM (MiB), median of ${COLD1_RUNS}`, (c) => c.cold1Median?.hwmMiB, 1, '', 'regmirror ≤ 160');
    row(`Cold pull, 1 client: cache VmHWM (MiB), highest of ${COLD1_RUNS}`, (c) => c.cold1Median?.hwmMaxMiB, 1, '', 'regmirror ≤ 160');
  }
  row('Cold pull, 1 client: wall time (s)', (c) => ok(c.cold1)?.wallSeconds, 2, '', 'lower is better');
  for (const t of ONLY.includes('tools') ? TOOL_LIST : []) {
    const m = (c) => c.tools?.[t]?.median;
    row(`Cold pull, 1 client, ${t}: wall time (s), median of ${TOOL_RUNS}`, (c) => m(c)?.wallSeconds, 2, '', 'info');
    row(`Cold pull, 1 client, ${t}: wall time / docker-registry's`, (c) => ratio(m(c)?.wallSeconds, m(res.caches['docker-registry'] ?? {})?.wallSeconds), 2, 'x', '≤ 0.85x');
    row(`Cold pull, 1 client, ${t}: cache CPU s per GB`, (c) => m(c)?.cacheCpuSecondsPerGB, 3, '', '≤ docker-registry');
    row(`Cold pull, 1 client, ${t}: cache minor faults per GB`, (c) => m(c)?.cacheMinorFaultsPerGB, 0, '', 'info');
  }
  row('Cold pull, 1 client: cache CPU s per GB filled', (c) => ok(c.cold1)?.cacheCpuSecondsPerGB, 3, '', '≤ docker-registry');
  row('Cold pull, 1 client: upstream blob bytes / image size', (c) => ok(c.cold1)?.upstreamBytesPerImage, 2, 'x', '1.00x');
  row('Cold pull, 1 client: upstream GETs per blob (max)', (c) => ok(c.cold1)?.upstreamBlobGetsPerBlob.max, 0, '', '1');
  row(`Cold pull, ${n} clients: wall time (s)`, (c) => ok(c.coldN)?.wallSeconds, 2, '', 'lower is better');
  row(`Cold pull, ${n} clients: wall time / 1-client wall time`, (c) => ratio(ok(c.coldN)?.wallSeconds, ok(c.cold1)?.wallSeconds), 2, 'x', '≤ 1.20x');
  // A cold pull cannot beat the same cache serving the image from disk: when the warm
  // N-client pull alone takes more than 1.2x the cold 1-client one, the machine (clients
  // verifying N copies on the same cores), not the cache, decides the ratio above.
  row(`Cold pull, ${n} clients: wall time / warm ${n}-client wall time`, (c) => ratio(ok(c.coldN)?.wallSeconds, ok(c.warmN)?.wallSeconds), 2, 'x', 'info (1.00x = no cost over a warm cache)');
  row(`Floor on this machine: warm ${n}-client wall time / cold 1-client wall time`, (c) => ratio(ok(c.warmN)?.wallSeconds, ok(c.cold1)?.wallSeconds), 2, 'x', 'info (> 1.20x: target out of reach here)');
  row(`Cold pull, ${n} clients: upstream blob bytes / image size`, (c) => ok(c.coldN)?.upstreamBytesPerImage, 2, 'x', '1.00x');
  row(`Cold pull, ${n} clients: upstream GETs per blob (max)`, (c) => ok(c.coldN)?.upstreamBlobGetsPerBlob.max, 0, '', '1');
  row(`Cold pull, ${n} clients: upstream requests (all)`, (c) => ok(c.coldN)?.upstreamRequests, 0, '', 'info');
  row(`Cold pull, ${n} clients: MB/s to clients (sum)`, (c) => ok(c.coldN)?.clientMBps, 1, '', 'info');
  row(
    `TTFB, cold ${LAYER_MIB} MiB layer, median of ${TTFB_RUNS} (ms)`,
    (_c, name) => (res.ttfb?.valid ? res.ttfb.summary[name]?.medianFirstByteMs : null),
    1,
    '',
    up ? `upstream ${fmt(up.medianFirstByteMs, 1)} + < 10` : 'upstream + < 10',
  );
  row(
    'TTFB minus upstream TTFB, same round, median (ms)',
    (_c, name) => (res.ttfb?.valid ? res.ttfb.summary[name]?.medianExtraFirstByteMs : null),
    1,
    '',
    '< 10',
  );
  row(
    `Cold ${LAYER_MIB} MiB layer, 1 GET alone: MB/s (median)`,
    (_c, name) => (res.ttfb?.valid ? res.ttfb.summary[name]?.medianMBps : null),
    1,
    '',
    up ? `upstream ${fmt(up.medianMBps, 1)}` : 'info',
  );
  row(
    `Cold ${LAYER_MIB} MiB layer, 1 GET alone: gap before the last chunk (ms, median)`,
    (_c, name) => (res.ttfb?.valid ? res.ttfb.summary[name]?.medianLastChunkGapMs : null),
    1,
    '',
    up ? `upstream ${fmt(up.medianLastChunkGapMs, 1)}` : 'info',
  );
  row('Warm pull, 1 client: wall time (s)', (c) => ok(c.warm1)?.wallSeconds, 2, '', 'lower is better');
  row('Warm pull, 1 client: MB/s', (c) => ok(c.warm1)?.clientMBps, 1, '', '≥ docker-registry');
  row(`Warm pull, ${n} clients: wall time (s)`, (c) => ok(c.warmN)?.wallSeconds, 2, '', 'lower is better');
  row(`Warm pull, ${n} clients: MB/s (sum)`, (c) => ok(c.warmN)?.clientMBps, 1, '', '≥ docker-registry');
  row('Warm pulls (1 + N clients): upstream requests', (c) => (ok(c.warm1) && ok(c.warmN) ? c.warm1.upstreamRequests + c.warmN.upstreamRequests : null), 0, '', '0 within the tag TTL');
  row('Warm pulls: upstream blob bytes', (c) => (ok(c.warm1) && ok(c.warmN) ? c.warm1.upstreamBlobBytes + c.warmN.upstreamBlobBytes : null), 0, '', '0');
  row(`Cache CPU s, cold pull ${n} clients`, (c) => ok(c.coldN)?.cacheCpuSeconds, 2, '', 'info (lower is better)');
  row(`Cache CPU s, warm pull ${n} clients`, (c) => ok(c.warmN)?.cacheCpuSeconds, 2, '', 'info (lower is better)');
  row(`Cache RSS peak, cold pull ${n} clients (MiB)`, (c) => ok(c.coldN)?.rss?.peakMiB, 1, '', 'info');
  // Issue #14 item 3. The warm instance first filled the image (cold 1 client), then served 1 and N clients.
  row('Cache RSS right after start (MiB)', (c) => c.warmN?.rssAfterStartMiB ?? c.cold1?.rssAfterStartMiB, 1, '', 'regmirror ≤ 80');
  row(`Cache VmHWM after cold 1 + warm 1 + warm ${n} clients (MiB)`, (c) => ok(c.warmN)?.hwmMiB, 1, '', 'regmirror ≤ 160');
  row(`Cache VmHWM after cold pull ${n} clients (MiB)`, (c) => ok(c.coldN)?.hwmMiB, 1, '', 'info');
  row('Verification failures (all scenarios)', (c) => [...(c.cold1Runs ?? []), ...Object.values(c.tools ?? {}).flatMap((t) => t.runs), c.warm1, c.warmN, c.coldN].reduce((k, s) => k + (s?.failures?.length ?? 0), 0), 0, '', '0');
  return rows;
}

function markdown(meta, rows, notes, names) {
  const L = [];
  L.push(`# regmirror pull-through benchmark (${meta.date})`);
  L.push('');
  L.push(
    `Image: ${LAYERS} x ${LAYER_MIB} MiB incompressible layers + config (${fmt(meta.imageBytes / MIB, 1)} MiB of blobs), OCI manifest; ` +
      `clients fetch manifest, config, then layers ${PARALLEL} at a time, verifying sha256, each client in its own worker thread${CLIENT_THREADS ? '' : ' (off: all in one thread)'}; ${CLIENTS}-client runs start all clients at once. ` +
      `Upstream: docker-registry on loopback behind a counting proxy${UPSTREAM_MBPS ? ` capped at ${UPSTREAM_MBPS} MB/s` : ' (unthrottled)'}. ` +
      `${meta.machine.cpus} x ${meta.machine.cpuModel}; node ${meta.node}; regmirror ${meta.regmirror.commit ?? '?'}${meta.regmirror.dirty ? ' (+ uncommitted changes in src/)' : ''}, ${meta.regmirror.cli} built ${meta.regmirror.cliBuiltAt ?? '?'}; ${meta.distribution ?? 'docker-registry not run'}. ` +
      'Clients, caches, upstream and proxy share the machine: compare the two caches within one run, not absolute numbers across runs.',
  );
  L.push('');
  L.push(`| metric | ${names.map((n) => (n === 'docker-registry' ? 'docker-registry proxy' : n)).join(' | ')} | target |`);
  L.push(`| --- | ${names.map(() => '---:').join(' | ')} | --- |`);
  for (const r of rows) L.push(`| ${r.metric} | ${names.map((n) => fmt(r.values[n], r.digits, r.suffix)).join(' | ')} | ${r.target} |`);
  if (notes.length) {
    L.push('');
    for (const n of notes) L.push(`- ${n}`);
  }
  L.push('');
  return L.join('\n');
}

/** Newest mtime under a directory (bounded walk): when the measured build was made. */
function newestMtime(dir) {
  let newest = 0;
  const stack = [dir];
  for (let n = 0; stack.length && n < 5000; n++) {
    const d = stack.pop();
    let entries = [];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      continue;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) stack.push(p);
      else if (e.name.endsWith('.js')) newest = Math.max(newest, fs.statSync(p).mtimeMs);
    }
  }
  return newest ? new Date(newest).toISOString() : null;
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

async function main() {
  installExitHandlers();
  // The quiet wait (if asked for) comes on top of the budget and the hard limit.
  const hard = setTimeout(() => {
    log(`hard limit of ${HARD_LIMIT_S} s reached: stopping everything`);
    cleanup().finally(() => process.exit(3));
  }, (HARD_LIMIT_S + WAIT_QUIET_S) * 1000);

  for (const cli of [REGMIRROR_CLI, REGMIRROR_CLI_B]) if (cli && !fs.existsSync(cli)) throw new Error(`${cli} missing: run \`npm run build\` first`);
  if (!onPath('docker-registry')) throw new Error('docker-registry is not on PATH: it is the upstream of this benchmark (apt-get install docker-registry)');
  const withDist = WITH_DISTRIBUTION;
  if (WAIT_QUIET_S > 0) await waitQuiet(WAIT_QUIET_S);
  const quietWaitS = elapsedS();
  const loadBefore = os.loadavg();
  if (loadBefore[0] > 0.5 * NCPU) log(`note: load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')} before start; other work on the machine skews the results`);
  log(`image ${LAYERS} x ${LAYER_MIB} MiB, ${CLIENTS} clients, ${PARALLEL} parallel layers per client, upstream ${UPSTREAM_MBPS ? `${UPSTREAM_MBPS} MB/s` : 'unthrottled'}; budget ${BUDGET_S} s, hard limit ${HARD_LIMIT_S} s`);

  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-bench-pt-'));
  tempDirs.push(root);
  const cliBuiltAt = newestMtime(path.dirname(REGMIRROR_CLI));
  const snapshot = (cli, sub) => {
    if (!SNAPSHOT) return cli;
    // <root>/<sub>/build/{dist,package.json,node_modules -> the checkout's}: same module resolution.
    const b = path.join(root, sub, 'build');
    fs.mkdirSync(b, { recursive: true });
    const pkgDir = path.dirname(path.dirname(cli));
    fs.cpSync(path.dirname(cli), path.join(b, 'dist'), { recursive: true });
    fs.copyFileSync(path.join(pkgDir, 'package.json'), path.join(b, 'package.json'));
    fs.symlinkSync(path.join(pkgDir, 'node_modules'), path.join(b, 'node_modules'), 'dir');
    log(`measuring a copy of ${path.dirname(cli)}/ (built ${newestMtime(path.dirname(cli))}) in ${b}`);
    return path.join(b, 'dist', path.basename(cli));
  };
  const cliA = snapshot(REGMIRROR_CLI, 'build-a');
  const cliB = REGMIRROR_CLI_B ? snapshot(REGMIRROR_CLI_B, 'build-b') : null;
  const upstream = await startUpstream(path.join(root, 'upstream'));
  const proxy = await startCountingProxy(path.join(root, 'proxy'), upstream.base);
  log(`upstream docker-registry pid ${upstream.pid} at ${upstream.base}; counting proxy pid ${proxy.pid} at ${proxy.base}`);
  const seedStart = Date.now();
  const img = await seedUpstream(upstream.base);
  const seedSeconds = (Date.now() - seedStart) / 1000;
  log(`upstream seeded in ${seedSeconds.toFixed(1)} s: ${fmt(img.size / MIB, 1)} MiB of blobs, manifest ${img.manifestDigest}`);
  // Sanity check through the proxy: the tag resolves with the manifest we pushed.
  const h = expectStatus(await request('HEAD', `${proxy.base}/v2/${REPO}/manifests/${TAG}`, { headers: { accept: MANIFEST_ACCEPT } }), 200, 'HEAD manifest via proxy');
  if (h.headers['docker-content-digest'] !== img.manifestDigest) throw new Error(`proxy: tag resolves to ${h.headers['docker-content-digest']}`);

  const kinds = [{ name: 'regmirror', start: (dir, up) => startRegmirror(dir, up, cliA, 'regmirror') }];
  if (cliB) kinds.push({ name: 'regmirror-B', start: (dir, up) => startRegmirror(dir, up, cliB, 'regmirror-B', REGMIRROR_ENV_B) });
  if (withDist) kinds.push({ name: 'docker-registry', start: startDistributionProxy });
  const caches = Object.fromEntries(kinds.map((k) => [k.name, {}]));
  const skipped = [];
  let instance = 0;
  const fresh = async (k) => {
    const c = await k.start(path.join(root, `${k.name}-${++instance}`), proxy.base);
    // Read right after the first 200 from /v2/: the memory a just-started cache holds.
    c.rssAfterStartMiB = mib1(readRssKiB(c.pid));
    return c;
  };
  const serverLogs = [];
  const profileDirs = Object.fromEntries(kinds.map((k) => [k.name, []]));
  const retire = async (c) => {
    if (c.profileDir) profileDirs[c.name].push(c.profileDir);
    const info = await stopProcess(c.entry);
    // Anything a cache logged (regmirror at warn, docker-registry at error) goes into the JSON.
    try {
      const lines = fs.readFileSync(c.entry.logFile, 'utf8').split('\n').filter(Boolean);
      if (lines.length) serverLogs.push({ instance: path.basename(c.dir), lines: lines.length, first: lines.slice(0, 5).map((l) => l.slice(0, 500)) });
    } catch {
      /* no log */
    }
    if (!KEEP) fs.rmSync(path.join(c.dir, 'storage'), { recursive: true, force: true });
    return info;
  };
  const overBudget = (what) => {
    if (elapsedS() - quietWaitS < BUDGET_S) return false;
    skipped.push(what);
    log(`time budget of ${BUDGET_S} s used up: skipping ${what}`);
    return true;
  };

  /** BENCH_PT_WARM_FILL_MIB: one unmeasured fill of a blob outside the image first (a running mirror). */
  const warmUp = async (c) => {
    if (!img.warmFill) return;
    const r = await fetchVerified(`${c.base}/v2/${REPO}/blobs/${img.warmFill.digest}`, { agent: seedAgent, deadlineAt: Date.now() + SCENARIO_TIMEOUT_S * 1000, expect: img.warmFill });
    if (!r.ok) throw new Error(`${c.name}: warm-up fill failed: ${r.error}`);
  };
  // 1) cold pull with 1 client, then warm pulls (1 and N clients) on the same instance;
  // further cold 1-client pulls (BENCH_PT_COLD1_RUNS) on fresh instances, order alternating.
  for (let run = 0; run < (ONLY.includes('cold1') || ONLY.includes('warm') ? COLD1_RUNS : 0); run++) {
    for (const k of run % 2 ? [...kinds].reverse() : kinds) {
      if (overBudget(`${k.name} cold1 run ${run + 1}${run === 0 && ONLY.includes('warm') ? '/warm' : ''}`)) continue;
      const c = await fresh(k);
      await warmUp(c);
      const cold = await pullScenario(`cold pull, 1 client${COLD1_RUNS > 1 ? ` (run ${run + 1}/${COLD1_RUNS})` : ''}`, c, 1, img, upstream, proxy);
      (caches[k.name].cold1Runs ??= []).push(cold);
      caches[k.name].cold1 ??= cold;
      if (run === 0 && ONLY.includes('warm')) {
        caches[k.name].warm1 = await pullScenario('warm pull, 1 client', c, 1, img, upstream, proxy);
        caches[k.name].warmN = await pullScenario(`warm pull, ${CLIENTS} clients`, c, CLIENTS, img, upstream, proxy);
      }
      await retire(c);
    }
  }
  for (const c of Object.values(caches)) {
    const runs = (c.cold1Runs ?? []).filter((r) => r.valid);
    if (runs.length === 0) continue;
    const med = (f) => round(median(runs.map(f)), 3);
    c.cold1Median = {
      runs: runs.length,
      wallSeconds: med((r) => r.wallSeconds),
      cacheCpuSeconds: med((r) => r.cacheCpuSeconds),
      cacheCpuSecondsPerGB: med((r) => r.cacheCpuSecondsPerGB),
      cacheCpuSysSecondsPerGB: med((r) => r.cacheCpuSysSecondsPerGB),
      cacheMinorFaultsPerGB: med((r) => r.cacheMinorFaultsPerGB),
      foreignCpuShare: med((r) => r.foreignCpuShare),
      // The fresh instance's peak over its cold pull (issue #14 item 3: the fill's memory).
      hwmMiB: med((r) => r.hwmMiB),
      hwmMaxMiB: Math.max(...runs.map((r) => r.hwmMiB)),
    };
  }
  // 1b) cold 1-client pulls with skopeo, ctr and a CRI PullImage (fresh caches, interleaved).
  if (ONLY.includes('tools')) {
    const have = toolsAvailable();
    const missing = TOOL_LIST.filter((t) => !have[t]);
    if (missing.length) throw new Error(`real clients not installed: ${missing.join(', ')} (apt-get install skopeo containerd)`);
    const byCache = await toolScenario({ kinds, fresh: async (k) => { const c = await fresh(k); await warmUp(c); return c; }, retire, img, proxy, upstream, root, tools: TOOL_LIST, runs: TOOL_RUNS, timeoutMs: SCENARIO_TIMEOUT_S * 1000, overBudget, cpuSnapshot, cpuDelta, repo: REPO, tag: TAG });
    for (const [name, t] of Object.entries(byCache)) caches[name].tools = t;
  }
  // 2) cold pull with N clients (order flipped).
  for (const k of ONLY.includes('coldN') ? [...kinds].reverse() : []) {
    if (overBudget(`${k.name} cold${CLIENTS}`)) continue;
    const c = await fresh(k);
    caches[k.name].coldN = await pullScenario(`cold pull, ${CLIENTS} clients`, c, CLIENTS, img, upstream, proxy);
    await retire(c);
  }
  // 3) TTFB of cold layers, both caches fresh, rounds interleaved.
  let ttfb = null;
  if (ONLY.includes('ttfb') && !overBudget('ttfb')) ttfb = await ttfbScenario(kinds, fresh, retire, img, upstream, proxy);
  const profiles = {};
  for (const [name, dirs] of Object.entries(profileDirs)) {
    // One merged summary per build: every instance's profile (start-up and seeding-free).
    const merged = path.join(root, `profile-${name}`);
    for (const d of dirs) {
      if (!fs.existsSync(d)) continue;
      fs.mkdirSync(merged, { recursive: true });
      for (const f of fs.readdirSync(d)) fs.copyFileSync(path.join(d, f), path.join(merged, `${path.basename(path.dirname(d))}-${f}`));
    }
    const p = dirs.length ? summarizeProfiles(merged, 30) : null;
    if (!p) continue;
    profiles[name] = p;
    log(`${name} CPU profile (${p.totalMs} ms sampled over ${dirs.length} instances, start-up included): ${merged}`);
    for (const t of p.top) console.error(`  ${String(t.pct).padStart(5)}%  ${String(t.ms).padStart(6)} ms  ${t.fn}`);
  }

  const commit = versionOf('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']);
  const dirty = (versionOf('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src']) ?? '') !== '';
  const date = new Date().toISOString();
  const meta = {
    date,
    node: process.version,
    machine: { cpus: NCPU, cpuModel: os.cpus()[0]?.model ?? '?', memGiB: Math.round(os.totalmem() / 2 ** 30) },
    regmirror: { commit, dirty, cli: path.relative(ROOT, REGMIRROR_CLI), cliBuiltAt, snapshot: SNAPSHOT, cliB: REGMIRROR_CLI_B, envB: REGMIRROR_ENV_B, cliBBuiltAt: REGMIRROR_CLI_B ? newestMtime(path.dirname(REGMIRROR_CLI_B)) : null },
    distribution: versionOf('docker-registry', ['--version']),
    clients: ONLY.includes('tools') ? toolVersions() : null,
    settings: { only: ONLY, cold1Runs: COLD1_RUNS, tools: ONLY.includes('tools') ? TOOL_LIST : [], toolRuns: TOOL_RUNS, warmFillMiB: WARM_FILL_MIB, profile: PROFILE, layers: LAYERS, layerMiB: LAYER_MIB, clients: CLIENTS, parallel: PARALLEL, ttfbRuns: TTFB_RUNS, upstreamMBps: UPSTREAM_MBPS || null, scenarioTimeoutS: SCENARIO_TIMEOUT_S, budgetS: BUDGET_S, accept: MANIFEST_ACCEPT },
    imageBytes: img.size,
    manifestDigest: img.manifestDigest,
    seedSeconds: round(seedSeconds, 1),
    loadavg: { before: loadBefore.map((x) => round(x, 2)), after: os.loadavg().map((x) => round(x, 2)) },
    totalSeconds: round(elapsedS(), 1),
  };
  const res = { caches, ttfb };
  const rows = buildRows(res, kinds.map((k) => k.name));
  const notes = [];
  let maxForeign = 0;
  for (const c of Object.values(caches)) for (const s of ['cold1', 'warm1', 'warmN', 'coldN']) maxForeign = Math.max(maxForeign, c[s]?.foreignCpuShare ?? 0);
  notes.push(
    `Load average ${meta.loadavg.before.join(' / ')} at start, ${meta.loadavg.after.join(' / ')} at the end; other processes used up to ${(maxForeign * 100).toFixed(0)}% of the machine's CPU during a pull scenario` +
      (maxForeign > 0.15 ? ': wall times and MB/s are disturbed (compare the caches within this run; upstream byte and request counts are exact regardless).' : '.'),
  );
  notes.push(
    `"upstream" TTFB is measured through the counting proxy, the path both caches use; direct from the upstream registry it was ${fmt(ttfb?.summary?.['upstream-direct']?.medianFirstByteMs, 2)} ms (median).`,
  );
  if (!UPSTREAM_MBPS) {
    notes.push(
      `The ${CLIENTS}-client pull moves ${CLIENTS}x the bytes to clients (and ${CLIENTS}x the client-side sha256) on the same cores; with an unthrottled loopback upstream its wall-time ratio measures how fast the machine can serve and verify ${CLIENTS} copies, not the upstream. BENCH_PT_UPSTREAM_MBPS caps the upstream link to model a remote registry.`,
    );
  }
  notes.push(`Upstream bytes count blob GET response bodies at the counting proxy, including what a cache fetches in the background after its clients are done (waited for, up to ${IDLE_WAIT_MS / 1000} s).`);
  if (!withDist) notes.push('docker-registry proxy not run (BENCH_DOCKER_REGISTRY=0).');
  for (const s of skipped) notes.push(`Skipped (time budget): ${s}.`);
  for (const [name, c] of Object.entries(caches)) {
    for (const s of ['cold1', 'warm1', 'warmN', 'coldN']) {
      if (c[s] && !c[s].valid) notes.push(`${name} ${s}: ${c[s].failures.length} failures, not reported (first: ${c[s].failures[0]})`);
      if (c[s] && !c[s].upstreamSettled) notes.push(`${name} ${s}: upstream traffic had not stopped ${IDLE_WAIT_MS / 1000} s after the clients finished; counts may be low.`);
    }
  }
  if (ttfb && !ttfb.valid) notes.push(`TTFB: ${ttfb.failures.length} failures, not reported (first: ${ttfb.failures[0]})`);
  if (serverLogs.length) notes.push(`Cache logs were not empty: ${serverLogs.map((l) => `${l.instance} ${l.lines} lines`).join(', ')} (first lines in the JSON, serverLogs).`);
  if (cliB) notes.push(`regmirror-B is ${REGMIRROR_CLI_B} (built ${meta.regmirror.cliBBuiltAt})${Object.keys(REGMIRROR_ENV_B).length ? ` with ${process.env.BENCH_REGMIRROR_ENV_B}` : ''}, measured in the same run as regmirror (${REGMIRROR_CLI}).`);
  const doc = { meta, table: rows.map(({ digits, suffix, values, ...r }) => ({ ...r, ...values })), ...res, profiles, serverLogs, notes };

  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const jsonFile = path.join(RESULTS_DIR, `${date.slice(0, 10)}-pullthrough.json`);
  fs.writeFileSync(jsonFile, `${JSON.stringify(doc, null, 2)}\n`);
  const md = markdown(meta, rows, notes, kinds.map((k) => k.name));
  fs.writeFileSync(path.join(RESULTS_DIR, 'latest-pullthrough.md'), md);
  process.stdout.write(`\n${md}\n`);
  log(`wrote ${path.relative(process.cwd(), jsonFile)} and ${path.relative(process.cwd(), path.join(RESULTS_DIR, 'latest-pullthrough.md'))}`);
  clearTimeout(hard);
  const anyFailure = Object.values(caches).some((c) => [...(c.cold1Runs ?? []), ...Object.values(c.tools ?? {}).flatMap((t) => t.runs), c.warm1, c.warmN, c.coldN].some((s) => s && !s.valid)) || (ttfb && !ttfb.valid);
  return anyFailure ? 2 : 0;
}

if (process.argv[2] === '--counting-proxy') {
  runCountingProxy();
} else {
  main()
    .then(
      (code) => cleanup().then(() => code),
      (err) => {
        console.error(`pullthrough bench failed: ${err && err.stack ? err.stack : err}`);
        for (const d of tempDirs) {
          try {
            for (const sub of fs.readdirSync(d)) {
              for (const f of ['server.log', 'proxy.log']) {
                const p = path.join(d, sub, f);
                if (fs.existsSync(p) && fs.statSync(p).size > 0) console.error(`--- ${sub}/${f} (tail)\n${fs.readFileSync(p, 'utf8').split('\n').slice(-15).join('\n')}`);
              }
            }
          } catch {
            /* best effort */
          }
        }
        return cleanup().then(() => 1);
      },
    )
    .then((code) => {
      seedAgent.destroy();
      process.exit(code);
    });
}
