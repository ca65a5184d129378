#!/usr/bin/env node
/**
 * HA benchmark (issue #13): regmirror replicas on the shared drivers (PostgreSQL + a Ceph
 * RADOS Gateway bucket), 1 replica vs 3, and one replica on the local driver as reference,
 * all pull-through caches of one in-process upstream on loopback.
 *
 *   npm run build && npm run build:test && node bench/ha.mjs     (or npm run bench:ha)
 *
 * PostgreSQL and the RADOS Gateway are started here with the test helpers
 * (build/test/helpers/postgres.js, radosgw.js: the same throwaway servers the tests use)
 * and stopped at the end; each configuration gets a fresh database and bucket. The
 * upstream is a node:http server in this process holding one image (BENCH_HA_LAYERS x
 * BENCH_HA_LAYER_MIB incompressible layers, a config, an OCI manifest) plus BENCH_HA_TTFB_RUNS
 * extra blobs; it counts the blob bytes it sends and paces each response at
 * BENCH_HA_UPSTREAM_MBPS (so a fill lasts long enough for time to first byte to mean something).
 *
 * Per configuration (local-1, shared-1, shared-3), in this order:
 *   cold8     8 clients (round-robin over the replicas) pull the image at once, every blob
 *             verified (sha256 + size); upstream blob bytes / image size (aim 1.00x).
 *   warm      blob GET throughput (BENCH_HA_CONNS connections per replica, rotating over
 *             the layers, BENCH_HA_SECONDS) and the replicas' CPU seconds per GB served.
 *   head      manifest HEAD by tag, 32 connections per replica (autocannon), req/s.
 *   ttfb      (timed in a child process, bench/ttfb-client.mjs) per extra blob: a GET on replica 0 starts the fill (the owner); as soon as its
 *             first byte arrives, a GET on replica 1 (shared-3) or a second GET on the same
 *             replica (1-replica configs); time to first byte of each, median over runs.
 * Writes bench/results/<YYYY-MM-DD>-ha.json and bench/results/latest-ha.md.
 *
 * Settings (env): BENCH_HA_LAYERS (4), BENCH_HA_LAYER_MIB (16), BENCH_HA_CLIENTS (8),
 * BENCH_HA_SECONDS (5), BENCH_HA_CONNS (4), BENCH_HA_TTFB_RUNS (7), BENCH_HA_UPSTREAM_MBPS
 * (100; 0 = unpaced), BENCH_HA_ONLY (local-1,shared-1,shared-3), BENCH_HA_TIMEOUT (420 s hard
 * limit for the whole run), BENCH_HA_TTFB_ONLY=1 (only the ttfb phase; JSON to BENCH_HA_OUT under the results dir), BENCH_KEEP=1, BENCH_RESULTS_DIR, BENCH_HA_LOG_LEVEL (warn; debug:
 * the replicas' server.log show where a non-owner's time to first byte goes). Only 127.0.0.1 is contacted.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { ttfb } from './ha-ttfb.mjs';
import { fetchVerified, pullImage } from './pullclient.mjs';
import {
  CLK_TCK,
  HERE,
  MANIFEST_ACCEPT,
  MIB,
  MT,
  ROOT,
  cleanup,
  configure,
  envNum,
  freePort,
  genBuffer,
  installExitHandlers,
  log,
  pidCpuTicks,
  sha256,
  startProcess,
  stopProcess,
  tempDirs,
  waitReady,
} from './lib.mjs';

/** One bearer secret shared by this run's replicas (never printed). */
const CLUSTER_SECRET = randomBytes(24).toString('hex');

const LAYERS = envNum('BENCH_HA_LAYERS', 4, 1, 16);
const LAYER_MIB = envNum('BENCH_HA_LAYER_MIB', 16, 1, 256);
const CLIENTS = envNum('BENCH_HA_CLIENTS', 8, 1, 32);
const SECONDS = envNum('BENCH_HA_SECONDS', 5, 1, 60);
const CONNS = envNum('BENCH_HA_CONNS', 4, 1, 32);
const TTFB_RUNS = envNum('BENCH_HA_TTFB_RUNS', 7, 1, 40);
const UPSTREAM_MBPS = envNum('BENCH_HA_UPSTREAM_MBPS', 100, 0, 10_000);
const TIMEOUT_S = envNum('BENCH_HA_TIMEOUT', 420, 30, 3600);
/** Only the TTFB phase (A/B runs of the non-owner's time to first byte); writes <date>-ha-ttfb.json, not latest-ha.md. */
const TTFB_ONLY = process.env.BENCH_HA_TTFB_ONLY === '1';
/** Idle time between TTFB runs after every fill ended (BENCH_HA_TTFB_PAUSE_MS). */
const TTFB_PAUSE_MS = envNum('BENCH_HA_TTFB_PAUSE_MS', 1000, 0, 10_000);
const ONLY = (process.env.BENCH_HA_ONLY || 'local-1,shared-1,shared-3').split(',').map((s) => s.trim());
const RESULTS = process.env.BENCH_RESULTS_DIR || path.join(HERE, 'results');
/** BENCH_HA_CLI: another build's cli.js (A/B of two builds in one run). */
const CLI = process.env.BENCH_HA_CLI || path.join(ROOT, 'dist', 'cli.js');
const REPO = 'bench/ha';
const SCENARIO_MS = 120_000;

configure({ name: 'ha', keep: process.env.BENCH_KEEP === '1' });
installExitHandlers();
const hardStop = setTimeout(() => {
  log(`hard time limit (${TIMEOUT_S} s) reached: stopping`);
  void stopAll().finally(() => process.exit(2));
}, TIMEOUT_S * 1000);
hardStop.unref();

// ---- the upstream ---------------------------------------------------------------------

function makeImage() {
  const layers = Array.from({ length: LAYERS }, (_, i) => genBuffer(`ha-layer-${i}`, LAYER_MIB * MIB));
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => sha256(l)) } }));
  const desc = (mediaType, b) => ({ mediaType, digest: sha256(b), size: b.length });
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.ociManifest, config: desc(MT.ociConfig, config), layers: layers.map((l) => desc(MT.ociLayer, l)) }));
  const extra = Array.from({ length: TTFB_RUNS }, (_, i) => genBuffer(`ha-ttfb-${i}`, LAYER_MIB * MIB));
  const blobs = new Map([config, ...layers, ...extra].map((b) => [sha256(b), b]));
  return {
    manifest,
    blobs,
    layers: layers.map((l) => desc(MT.ociLayer, l)),
    extra: extra.map((b) => desc(MT.ociLayer, b)),
    imageBytes: config.length + layers.reduce((n, l) => n + l.length, 0),
    // pullclient.mjs's image shape
    pull: { manifestDigest: sha256(manifest), manifestBytes: manifest.length },
  };
}

/** Serves the image read-only; counts blob body bytes; paces each response at UPSTREAM_MBPS. */
async function startUpstream(img) {
  const stats = { blobBytes: 0, blobGets: 0, manifestGets: 0 };
  const server = http.createServer((req, res) => {
    const url = req.url.split('?')[0];
    if (url === '/v2/' || url === '/v2') return res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url);
    if (!m) return res.writeHead(404).end();
    if (m[2] === 'manifests') {
      if (m[3] !== 'v1' && m[3] !== img.pull.manifestDigest) return res.writeHead(404).end();
      stats.manifestGets++;
      res.writeHead(200, { 'content-type': MT.ociManifest, 'content-length': img.manifest.length, 'docker-content-digest': img.pull.manifestDigest });
      return res.end(req.method === 'HEAD' ? undefined : img.manifest);
    }
    const b = img.blobs.get(m[3]);
    if (!b) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': b.length, 'docker-content-digest': m[3] });
    if (req.method === 'HEAD') return res.end();
    stats.blobGets++;
    void send(res, b, stats);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { base: `http://127.0.0.1:${server.address().port}`, stats, close: () => new Promise((r) => server.close(r)) };
}

async function send(res, b, stats) {
  const step = 256 * 1024;
  const t0 = Date.now();
  for (let off = 0; off < b.length && !res.destroyed; off += step) {
    const chunk = b.subarray(off, off + step);
    stats.blobBytes += chunk.length;
    if (!res.write(chunk)) {
      await new Promise((r) => {
        const done = () => (res.off('drain', done), res.off('close', done), r());
        res.on('drain', done).on('close', done);
      });
    }
    if (UPSTREAM_MBPS > 0) {
      const due = t0 + ((off + chunk.length) / (UPSTREAM_MBPS * 1e6)) * 1000;
      if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
    }
  }
  res.end();
}

// ---- engines and replicas ---------------------------------------------------------------

const teardowns = [];
async function stopAll() {
  await cleanup();
  for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => undefined);
  teardowns.length = 0;
}

/** PostgreSQL + RGW from the test helpers (built by `npm run build:test`). */
async function startEngines() {
  const helpers = path.join(ROOT, 'build', 'test', 'helpers');
  if (!fs.existsSync(path.join(helpers, 'postgres.js'))) throw new Error('run `npm run build:test` first: bench/ha.mjs starts PostgreSQL and RGW with the test helpers');
  const { startPostgres } = await import(path.join(helpers, 'postgres.js'));
  const { startRadosgw } = await import(path.join(helpers, 'radosgw.js'));
  log('starting PostgreSQL and the RADOS Gateway');
  const [pg, gw] = await Promise.all([startPostgres({ teardown: (fn) => teardowns.push(fn) }), startRadosgw()]);
  teardowns.push(() => gw.stop());
  return { pg, gw };
}

let nBucket = 0;
async function startReplicas(kind, count, upstreamBase, engines) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `regmirror-bench-ha-${kind}-`));
  tempDirs.push(dir);
  let shared = null;
  if (kind === 'shared') {
    const db = await engines.pg.createDatabase(`ha${process.pid}_${++nBucket}`);
    const g = engines.gw;
    shared = { postgres: { url: db, poolSize: 8 }, s3: { endpoint: g.endpoint, region: g.region, bucket: `bench-ha-${process.pid}-${nBucket}`, prefix: 'mirror', accessKeyId: g.accessKeyId, secretAccessKey: g.secretAccessKey } };
  }
  const out = [];
  for (let i = 0; i < count; i++) {
    const rdir = path.join(dir, `r${i}`);
    fs.mkdirSync(rdir, { recursive: true });
    const port = await freePort();
    const storage = shared ? { driver: 'shared', path: path.join(rdir, 'storage'), ...shared } : path.join(rdir, 'storage');
    // JSON is YAML: the config file is written as JSON.
    const cfg = { listen: `127.0.0.1:${port}`, storage, log: { level: process.env.BENCH_HA_LOG_LEVEL || 'warn' }, upstreams: { up: { endpoints: [upstreamBase] } }, defaultUpstream: 'up' };
    // Replicas stream each other's fills over the internal endpoint (cache/clusterfill.ts).
    if (shared) cfg.cluster = { secret: CLUSTER_SECRET };
    const file = path.join(rdir, 'regmirror.yml');
    fs.writeFileSync(file, JSON.stringify(cfg, null, 2), { mode: 0o600 });
    const entry = startProcess(`${kind}-${count}/r${i}`, process.execPath, [CLI, 'serve', '--config', file], path.join(rdir, 'server.log'));
    const base = `http://127.0.0.1:${port}`;
    await waitReady(base, entry, 60_000);
    out.push({ base, entry, pid: entry.pid });
  }
  return out;
}

const cpuSeconds = (replicas) => replicas.reduce((s, r) => (({ user, sys }) => s + (user + sys) / CLK_TCK)(pidCpuTicks(r.pid)), 0);

// ---- scenarios -------------------------------------------------------------------------

async function cold8(replicas, img, up) {
  const before = up.stats.blobBytes;
  const deadlineAt = Date.now() + SCENARIO_MS;
  const t0 = Date.now();
  const results = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => pullImage(replicas[i % replicas.length].base, img.pull, deadlineAt, i, { repo: REPO, tag: 'v1', parallel: 3 })));
  const seconds = (Date.now() - t0) / 1000;
  const failures = results.flatMap((r) => r.failures);
  const upstreamBytes = up.stats.blobBytes - before;
  return { clients: CLIENTS, seconds: +seconds.toFixed(2), failures, upstreamBlobBytes: upstreamBytes, imageBytes: img.imageBytes, upstreamX: +(upstreamBytes / img.imageBytes).toFixed(2) };
}

async function warm(replicas, img) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONNS * replicas.length });
  const until = Date.now() + SECONDS * 1000;
  let bytes = 0;
  let errors = 0;
  const cpu0 = cpuSeconds(replicas);
  const t0 = Date.now();
  const loop = async (base, k) => {
    for (let i = k; Date.now() < until && i < k + 100_000; i++) {
      const d = img.layers[i % img.layers.length].digest;
      const r = await fetchVerified(`${base}/v2/${REPO}/blobs/${d}`, { agent, deadlineAt: until + 30_000 }).catch(() => null);
      if (r?.status === 200) bytes += r.bytes;
      else errors++;
    }
  };
  await Promise.all(replicas.flatMap((r) => Array.from({ length: CONNS }, (_, k) => loop(r.base, k))));
  const seconds = (Date.now() - t0) / 1000;
  const cpu = cpuSeconds(replicas) - cpu0;
  agent.destroy();
  return { seconds: +seconds.toFixed(2), MBps: +(bytes / 1e6 / seconds).toFixed(1), serverCpuSeconds: +cpu.toFixed(2), cpuSecondsPerGB: +(cpu / (bytes / 1e9)).toFixed(2), errors };
}

/** Manifest HEAD by tag: HEAD_CONNS keep-alive connections per replica for SECONDS (node:http client: it knows HEAD has no body). */
async function head(replicas) {
  const HEAD_CONNS = 16;
  const agent = new http.Agent({ keepAlive: true, maxSockets: HEAD_CONNS * replicas.length });
  const until = Date.now() + SECONDS * 1000;
  const lat = [];
  let ok = 0;
  let bad = 0;
  const one = (base) =>
    new Promise((resolve) => {
      const t0 = performance.now();
      const req = http.request(`${base}/v2/${REPO}/manifests/v1`, { method: 'HEAD', agent, headers: { accept: MANIFEST_ACCEPT } }, (res) => {
        res.resume();
        res.on('end', () => {
          lat.push(performance.now() - t0);
          if (res.statusCode === 200) ok++;
          else bad++;
          resolve();
        });
      });
      req.on('error', () => (bad++, resolve()));
      req.end();
    });
  const t0 = Date.now();
  await Promise.all(
    replicas.flatMap((r) =>
      Array.from({ length: HEAD_CONNS }, async () => {
        for (let i = 0; i < 1_000_000 && Date.now() < until; i++) await one(r.base);
      }),
    ),
  );
  agent.destroy();
  lat.sort((a, b) => a - b);
  return { reqPerSec: Math.round(ok / ((Date.now() - t0) / 1000)), non200: bad, p99ms: +(lat[Math.floor(lat.length * 0.99)] ?? 0).toFixed(1) };
}

// ---- main ------------------------------------------------------------------------------

const CONFIGS = [
  { name: 'local-1', kind: 'local', count: 1 },
  { name: 'shared-1', kind: 'shared', count: 1 },
  { name: 'shared-3', kind: 'shared', count: 3 },
].filter((c) => ONLY.includes(c.name));

function markdown(out) {
  const rows = out.configs;
  // A phase skipped (BENCH_HA_TTFB_ONLY) shows as '-'.
  const col = (f) => rows.map((r) => { try { return f(r) ?? '-'; } catch { return '-'; } }).join(' | ');
  return [
    `# HA benchmark (${out.date})`,
    '',
    `Image: ${LAYERS} x ${LAYER_MIB} MiB layers; upstream paced at ${UPSTREAM_MBPS || 'unlimited'} MB/s per response; ${os.cpus().length} CPUs, load before: ${out.loadBefore}.`,
    'Produced by `bench/ha.mjs` (see bench/README.md). CPU is the regmirror processes only (not PostgreSQL or RGW).',
    '',
    `| | ${col((r) => r.name)} |`,
    `| --- | ${col(() => '---:')} |`,
    `| cold ${CLIENTS}-client pull, s | ${col((r) => r.cold8.seconds)} |`,
    `| upstream blob bytes / image (aim 1.00x) | ${col((r) => `${r.cold8.upstreamX}x`)} |`,
    `| cold pull failures | ${col((r) => r.cold8.failures.length)} |`,
    `| warm blob GET, MB/s | ${col((r) => r.warm.MBps)} |`,
    `| server CPU s per GB served | ${col((r) => r.warm.cpuSecondsPerGB)} |`,
    `| manifest HEAD by tag, req/s (all replicas) | ${col((r) => r.head.reqPerSec)} |`,
    `| manifest HEAD p99, ms | ${col((r) => r.head.p99ms)} |`,
    `| TTFB, fill owner, median ms | ${col((r) => r.ttfb.ownerMedianMs)} |`,
    `| TTFB, other request (see below), median ms | ${col((r) => r.ttfb.otherMedianMs)} |`,
    `| TTFB other minus owner, median of runs, ms | ${col((r) => r.ttfb.gapMedianMs)} |`,
    `| owner event-loop lag max during the TTFB window, median ms | ${col((r) => r.ttfb.ownerLagMaxMedianMs)} |`,
    '',
    'TTFB "other": on shared-3 a GET on replica 1 while replica 0 fills (the non-owner); on 1-replica configs a second GET on the same replica (a joiner).',
    'TTFB is timed by a child process (bench/ttfb-client.mjs) on connections opened beforehand; event-loop lag from the owner\'s /metrics (prom-client, 10 ms resolution) between just before its GET and just after the other\'s first byte.',
    '',
  ].join('\n');
}

async function main() {
  const img = makeImage();
  const up = await startUpstream(img);
  const loadBefore = os.loadavg()[0].toFixed(2);
  const engines = CONFIGS.some((c) => c.kind === 'shared') ? await startEngines() : null;
  const configs = [];
  for (const c of CONFIGS) {
    log(`${c.name}: starting ${c.count} replica(s)`);
    const replicas = await startReplicas(c.kind, c.count, up.base, engines);
    const r = { name: c.name, replicas: c.count };
    if (!TTFB_ONLY) {
      r.cold8 = await cold8(replicas, img, up);
      log(`${c.name}: cold ${CLIENTS}-client pull ${r.cold8.seconds} s, upstream ${r.cold8.upstreamX}x the image, failures ${r.cold8.failures.length}`);
      r.warm = await warm(replicas, img);
      log(`${c.name}: warm blob GET ${r.warm.MBps} MB/s, ${r.warm.cpuSecondsPerGB} CPU s/GB`);
      r.head = await head(replicas);
      log(`${c.name}: manifest HEAD ${r.head.reqPerSec} req/s`);
    }
    r.ttfb = await ttfb(replicas, img, { repo: REPO, scenarioMs: SCENARIO_MS, pauseMs: TTFB_PAUSE_MS });
    log(`${c.name}: TTFB owner ${r.ttfb.ownerMedianMs} ms, other ${r.ttfb.otherMedianMs} ms, gap ${r.ttfb.gapMedianMs} ms, owner lag max ${r.ttfb.ownerLagMaxMedianMs} ms (load ${os.loadavg()[0].toFixed(2)})`);
    configs.push(r);
    for (const x of replicas) await stopProcess(x.entry);
  }
  await up.close();
  const date = new Date().toISOString().slice(0, 10);
  const out = { date, settings: { LAYERS, LAYER_MIB, CLIENTS, SECONDS, CONNS, TTFB_RUNS, UPSTREAM_MBPS }, loadBefore, configs };
  fs.mkdirSync(RESULTS, { recursive: true });
  const md = markdown(out);
  if (TTFB_ONLY) fs.writeFileSync(path.join(RESULTS, process.env.BENCH_HA_OUT || `${date}-ha-ttfb.json`), `${JSON.stringify(out, null, 2)}\n`);
  else {
    fs.writeFileSync(path.join(RESULTS, `${date}-ha.json`), `${JSON.stringify(out, null, 2)}\n`);
    fs.writeFileSync(path.join(RESULTS, 'latest-ha.md'), md);
  }
  console.log(md);
  const failed = configs.some((r) => (r.cold8?.failures.length ?? 0) > 0 || !r.ttfb.allOk || (r.warm?.errors ?? 0) > 0);
  if (failed) log('some pulls failed or got wrong bytes: see the JSON');
  return failed ? 1 : 0;
}

main()
  .then(async (code) => {
    await stopAll();
    process.exit(code);
  })
  .catch(async (e) => {
    log(`failed: ${e.stack ?? e}`);
    await stopAll();
    process.exit(1);
  });
