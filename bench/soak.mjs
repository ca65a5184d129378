#!/usr/bin/env node
/**
 * Soak test: many concurrent clients against the mirror (a child process, so its RSS, file
 * descriptors and temp files are measured alone) while the upstream flaps.
 *
 *   npm run soak                                  # build, then 100 clients x 120 s
 *   node bench/soak.mjs --clients 20 --duration 20 --cold 12 --out /tmp/x   # the npm test version
 *
 * Layout (all on 127.0.0.1, every process started here and stopped here by PID):
 *
 *   clients (this process) --> regmirror (node dist/cli.js serve) --> docker-registry (upstream)
 *
 * The upstream (Debian's docker-registry) is seeded with generated images (bench/soak-workload.mjs),
 * the warm ones are pulled once, then the clients loop over pulls by tag and digest, HEADs,
 * tag lists, pushes into a local namespace (pulled back), and pulls of cold images released
 * one by one during the run. Meanwhile the upstream flaps: up for a few seconds, then frozen
 * (SIGSTOP ... SIGCONT: connections hang) or killed and restarted on the same port
 * (connections refused), alternately. The mirror runs with short upstream timeouts so the
 * failure paths are exercised often.
 *
 * Checks (exit 0 when all pass, 2 when any fails, 1 on error, 3 at the hard time limit):
 * 0 wrong bytes, 0 unexplained failures (see classify() in soak-workload.mjs), RSS growth
 * after warm-up (first 20% of the run) < 64 MiB, no file-descriptor or temp-file leak once the
 * server is idle again, every image correct in a final pass with the upstream up, /healthz ok,
 * a clean SIGTERM exit and `regmirror fsck` clean afterwards.
 * Results: <out>/<YYYY-MM-DD>-soak.json and <out>/latest-soak.md (default bench/results).
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { Ledger, Stats, UpstreamTimeline, planImages, pullImageOnce, runClient, send } from './soak-workload.mjs';
import {
  HERE,
  ROOT,
  MIB,
  cleanup,
  configure,
  distributionConfig,
  elapsedS,
  expectStatus,
  freePort,
  genBuffer,
  installExitHandlers,
  killProcess,
  log,
  onPath,
  request,
  sleep,
  startProcess,
  stopProcess,
  tempDirs,
  versionOf,
  waitReady,
} from './lib.mjs';

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

function parseArgs(argv) {
  const o = {
    clients: 100,
    duration: 120,
    cold: 48,
    warmRepos: 6,
    flapUp: [3, 6],
    flapDown: [2, 4],
    thinkMs: 20,
    out: path.join(HERE, 'results'),
    keep: false,
    rssLimitMiB: 64,
    fdMargin: 4,
    hardLimit: null,
  };
  const num = (name, v, min, max) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name} ${v}: must be a number in [${min}, ${max}]`);
    return n;
  };
  const range = (name, v) => {
    const m = /^(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?$/.exec(v ?? '');
    if (!m) throw new Error(`--${name} ${v}: want SECONDS or MIN-MAX`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (a <= 0 || b < a || b > 600) throw new Error(`--${name} ${v}: out of range`);
    return [a, b];
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split('=', 2);
    const val = () => inline ?? argv[++i];
    switch (flag) {
      case '--clients': o.clients = Math.round(num('clients', val(), 1, 1000)); break;
      case '--duration': o.duration = num('duration', val(), 5, 3600); break;
      case '--cold': o.cold = Math.round(num('cold', val(), 1, 500)); break;
      case '--warm-repos': o.warmRepos = Math.round(num('warm-repos', val(), 1, 100)); break;
      case '--flap-up': o.flapUp = range('flap-up', val()); break;
      case '--flap-down': o.flapDown = range('flap-down', val()); break;
      case '--think-ms': o.thinkMs = num('think-ms', val(), 0, 10_000); break;
      case '--out': o.out = path.resolve(val()); break;
      case '--hard-limit': o.hardLimit = num('hard-limit', val(), 30, 7200); break;
      case '--keep': o.keep = true; break;
      case '--help':
        console.log('node bench/soak.mjs [--clients 100] [--duration 120] [--cold 48] [--warm-repos 6] [--flap-up 3-6] [--flap-down 2-4] [--think-ms 20] [--out bench/results] [--hard-limit SECONDS] [--keep]');
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument ${argv[i]} (--help)`);
    }
  }
  return o;
}

const OPTS = parseArgs(process.argv.slice(2));
configure({ name: 'soak', keep: OPTS.keep });
const CLI = path.join(ROOT, 'dist', 'cli.js');
const UPSTREAM_NAME = 'upstream.soak';
/** The mirror's upstream timeouts: short, so the soak hits the failure paths often. */
const MIRROR_TIMEOUTS = { connect: 500, headers: 1500, body: 2000, offline: 2000, probe: 250, tagTtl: 2000, revalidate: 1000 };
const MIRROR_MAX_CONNECTIONS = 16;
/** V8 heap in use may not grow more than this between the warm-up point and the end. */
const HEAP_LIMIT_MIB = 32;
/** Extra time allowed around a request when judging "was the upstream down" (busy machine). */
const SLACK_MS = 3000;
const REQUEST_TIMEOUT_MS = 30_000;
const SAMPLE_EVERY_MS = 1000;
const SETTLE_MAX_MS = 45_000;
const HARD_LIMIT_MS = (OPTS.hardLimit ?? OPTS.duration + 300) * 1000;
/** The upstream, so a frozen one is resumed before cleanup stops it. */
let upstreamRef = null;
const round = (x, d = 1) => (x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
const rand = ([a, b]) => (a + Math.random() * (b - a)) * 1000;

// ---------------------------------------------------------------------------------------
// /proc of the server
// ---------------------------------------------------------------------------------------

function procStatus(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)\\s+kB`, 'm').exec(s)?.[1] ?? NaN);
    return { rssMiB: round(kib('VmRSS') / 1024), hwmMiB: round(kib('VmHWM') / 1024) };
  } catch {
    return { rssMiB: null, hwmMiB: null };
  }
}

/** Open descriptors by kind: sockets, pipes, anon inodes, files under storage, other files. */
function fdCounts(pid, storage) {
  const out = { total: 0, socket: 0, pipe: 0, anon: 0, storageFiles: 0, otherFiles: 0 };
  let names = [];
  try {
    names = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return null;
  }
  for (const n of names) {
    let target;
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${n}`);
    } catch {
      continue; // closed meanwhile
    }
    out.total++;
    if (target.startsWith('socket:')) out.socket++;
    else if (target.startsWith('pipe:')) out.pipe++;
    else if (target.startsWith('anon_inode:')) out.anon++;
    else if (target.startsWith(storage)) out.storageFiles++;
    else out.otherFiles++;
  }
  return out;
}

/**
 * Where the server's resident memory is, from /proc/<pid>/smaps: the brk heap, anonymous
 * mappings (V8 spaces, and glibc's per-thread malloc arenas, reserved 64 MiB at a time),
 * and file-backed mappings; plus the largest anonymous mappings. Tells allocator retention
 * (RSS in arenas while the V8 heap and Buffers are flat) from a leak.
 */
function smapsSummary(pid) {
  let text;
  try {
    text = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8');
  } catch {
    return null;
  }
  const kinds = { brkHeap: 0, anon: 0, file: 0, other: 0 };
  const anon = [];
  let cur = null;
  for (const line of text.split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const name = head[3].trim();
      cur = { name, sizeKiB: (parseInt(head[2], 16) - parseInt(head[1], 16)) / 1024, kind: name === '[heap]' ? 'brkHeap' : name === '' ? 'anon' : name.startsWith('/') ? 'file' : 'other' };
      if (cur.kind === 'anon') anon.push(cur);
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss && cur) {
      cur.rssKiB = Number(rss[1]);
      kinds[cur.kind] += cur.rssKiB;
    }
  }
  const mib = (k) => round(k / 1024);
  return {
    rssMiB: Object.fromEntries(Object.entries(kinds).map(([k, v]) => [k, mib(v)])),
    largestAnon: anon
      .sort((a, b) => (b.rssKiB ?? 0) - (a.rssKiB ?? 0))
      .slice(0, 8)
      .map((m) => ({ sizeMiB: mib(m.sizeKiB), rssMiB: mib(m.rssKiB ?? 0) })),
  };
}

/** Files in storage/tmp and storage/uploads (fills and uploads in progress). */
function tempFiles(storage) {
  const list = (d) => {
    try {
      return fs.readdirSync(path.join(storage, d)).map((f) => `${d}/${f}`);
    } catch {
      return [];
    }
  };
  return [...list('tmp'), ...list('uploads')];
}

/**
 * Adds the server's V8 heap and external (Buffer) memory from its own /metrics to sample
 * `s` (asynchronously; fields stay absent when /metrics is slow): tells a JS leak (heap),
 * buffers held (external) and allocator slack (RSS only) apart.
 */
const metricsAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function heapSample(base, s) {
  send('GET', `${base}/metrics`, { agent: metricsAgent, keepBody: true, timeoutMs: 2000 })
    .then((r) => {
      if (r.status !== 200) return;
      const text = r.body.toString('utf8');
      const val = (name) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+]+)$`, 'm').exec(text)?.[1] ?? NaN);
      s.heapUsedMiB = round(val('regmirror_nodejs_heap_size_used_bytes') / MIB);
      s.heapTotalMiB = round(val('regmirror_nodejs_heap_size_total_bytes') / MIB);
      s.externalMiB = round(val('regmirror_nodejs_external_memory_bytes') / MIB);
    })
    .catch(() => undefined);
}

// ---------------------------------------------------------------------------------------
// Upstream: docker-registry on a fixed port (restarts must reuse it), flapping
// ---------------------------------------------------------------------------------------

/** The upstream's config: no upload purging, so a restart never drops what the run seeded. */
function registryConfig(dir, port) {
  return distributionConfig(dir, port, null, ['  maintenance:', '    uploadpurging: { enabled: false }']);
}

class Upstream {
  constructor(dir, port) {
    this.dir = dir;
    this.port = port;
    this.base = `http://127.0.0.1:${port}`;
    this.cfg = registryConfig(dir, port);
    this.entry = null;
    this.paused = false;
    this.starts = 0;
  }

  async start() {
    let last;
    for (let attempt = 0; attempt < 5; attempt++) {
      this.entry = startProcess(`upstream docker-registry #${++this.starts}`, 'docker-registry', ['serve', this.cfg], path.join(this.dir, 'server.log'));
      try {
        await waitReady(this.base, this.entry, 20_000);
        return;
      } catch (e) {
        last = e;
        await stopProcess(this.entry, 1000);
        await sleep(500);
      }
    }
    throw new Error(`upstream did not (re)start on port ${this.port}: ${last?.message}`);
  }

  pause() {
    process.kill(this.entry.pid, 'SIGSTOP');
    this.paused = true;
  }

  resume() {
    if (!this.paused) return;
    this.paused = false;
    try {
      process.kill(this.entry.pid, 'SIGCONT');
    } catch {
      /* gone */
    }
  }

  async kill() {
    this.resume();
    await killProcess(this.entry, 'SIGKILL');
  }
}

/**
 * Up for flapUp seconds, then down for flapDown seconds, alternating "frozen" (SIGSTOP:
 * connections are accepted by the kernel and hang) and "refused" (SIGKILL, restarted on the
 * same port afterwards). Down intervals go into `timeline` (until the upstream answers
 * again). stop() ends it with the upstream up.
 */
function startFlapper(upstream, timeline, { flapUp, flapDown }) {
  const flaps = { frozen: 0, refused: 0, errors: [] };
  let stopped = false;
  let wake = null;
  const nap = (ms) =>
    new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  const loop = (async () => {
    for (let i = 0; i < 100_000 && !stopped; i++) {
      await nap(rand(flapUp));
      if (stopped) break;
      const mode = i % 2 === 0 ? 'frozen' : 'refused';
      timeline.down();
      if (mode === 'frozen') upstream.pause();
      else await upstream.kill();
      flaps[mode]++;
      await nap(rand(flapDown));
      if (mode === 'frozen') upstream.resume();
      else await upstream.start();
      timeline.up();
    }
  })().catch((e) => {
    flaps.errors.push(e.message);
    log(`flapper failed: ${e.message}`);
  });
  return {
    flaps,
    async stop() {
      stopped = true;
      wake?.();
      await loop;
      upstream.resume();
      if (upstream.entry.done) await upstream.start();
      timeline.up();
    },
  };
}

// ---------------------------------------------------------------------------------------
// Seeding the upstream
// ---------------------------------------------------------------------------------------

async function seedUpstream(base, images) {
  const firstRepo = new Map(); // digest -> a repository that has it (for cross-mounts)
  const putBlob = async (repo, digest, bytes) => {
    const from = firstRepo.get(digest);
    if (from) {
      const m = await request('POST', `${base}/v2/${repo}/blobs/uploads/?mount=${digest}&from=${from}`, { headers: { 'content-length': '0' } });
      if (m.status === 201) return;
      if (m.status === 202) await request('DELETE', new URL(m.headers.location, base).toString()).catch(() => undefined);
    }
    const post = expectStatus(await request('POST', `${base}/v2/${repo}/blobs/uploads/`, { headers: { 'content-length': '0' } }), 202, 'POST upload');
    const put = new URL(post.headers.location, base);
    put.searchParams.set('digest', digest);
    const buf = bytes();
    expectStatus(await request('PUT', put.toString(), { headers: { 'content-type': 'application/octet-stream', 'content-length': String(buf.length) }, body: buf }), 201, `PUT blob ${repo}`);
    firstRepo.set(digest, repo);
  };
  const all = [...images.warm, ...images.cold];
  for (let i = 0; i < all.length; i += 4) {
    await Promise.all(
      all.slice(i, i + 4).map(async (img) => {
        await putBlob(img.repo, img.config.digest, () => img.config.bytes);
        await putBlob(img.repo, img.base.digest, () => genBuffer(`soak/${img.base.label}`, img.base.size));
        await putBlob(img.repo, img.unique.digest, () => genBuffer(`soak/${img.unique.label}`, img.unique.size));
        const r = expectStatus(
          await request('PUT', `${base}/v2/${img.repo}/manifests/${img.tag}`, { headers: { 'content-type': img.mediaType }, body: img.manifest }),
          201,
          `PUT manifest ${img.repo}:${img.tag}`,
        );
        if (r.headers['docker-content-digest'] !== img.digest) throw new Error(`upstream stored ${img.repo}:${img.tag} as ${r.headers['docker-content-digest']}, want ${img.digest}`);
      }),
    );
  }
}

// ---------------------------------------------------------------------------------------
// The mirror
// ---------------------------------------------------------------------------------------

function mirrorConfig(dir, port, upstreamBase) {
  const storage = path.join(dir, 'storage');
  const t = MIRROR_TIMEOUTS;
  const cfg = path.join(dir, 'regmirror.yml');
  fs.writeFileSync(
    cfg,
    [
      `listen: 127.0.0.1:${port}`,
      `storage: ${JSON.stringify(storage)}`,
      'log:',
      '  level: error',
      'limits:',
      '  uploadTtl: 1h',
      'upstreams:',
      `  ${UPSTREAM_NAME}:`,
      `    endpoints: [${upstreamBase}]`,
      `    timeouts: { connect: ${t.connect}ms, headers: ${t.headers}ms, body: ${t.body}ms, offline: ${t.offline}ms, probe: ${t.probe}ms }`,
      `    maxConnections: ${MIRROR_MAX_CONNECTIONS}`,
      `    tags: { ttl: ${t.tagTtl}ms, revalidateTimeout: ${t.revalidate}ms }`,
      `defaultUpstream: ${UPSTREAM_NAME}`,
      'namespaces:',
      '  - { prefix: local, upstream: local, push: true }',
      '',
    ].join('\n'),
  );
  return { cfg, storage };
}

function runCli(args, timeoutMs) {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT, timeout: timeoutMs, maxBuffer: 16 * MIB }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr });
    });
  });
}

/** Error-level lines (pino level >= 50) in the server log, with a few samples. */
function serverErrors(logFile) {
  const out = { count: 0, samples: [] };
  let text = '';
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    let level = 0;
    try {
      level = JSON.parse(line).level ?? 0;
    } catch {
      level = 60; // not JSON: a crash trace or similar
    }
    if (level >= 50) {
      out.count++;
      if (out.samples.length < 10) out.samples.push(line.slice(0, 500));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

async function main() {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm run soak does)`);
  if (!onPath('docker-registry')) throw new Error('docker-registry is not installed (apt-get install docker-registry): it is the upstream');
  const started = new Date();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-soak-'));
  tempDirs.push(dir);
  fs.mkdirSync(path.join(dir, 'upstream', 'storage'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'mirror'), { recursive: true });
  log(`${OPTS.clients} clients x ${OPTS.duration} s; temp dir ${dir}`);

  // Upstream, seeded.
  const images = planImages({ warmRepos: OPTS.warmRepos, coldImages: OPTS.cold });
  const upstream = (upstreamRef = new Upstream(path.join(dir, 'upstream'), await freePort()));
  await upstream.start();
  await seedUpstream(upstream.base, images);
  const upstreamMiB = round(
    [...images.bases.map((b) => b.size), ...[...images.warm, ...images.cold].flatMap((i) => [i.unique.size, i.config.size, i.manifest.length])].reduce((a, b) => a + b, 0) / MIB,
  );
  log(`upstream ${upstream.base} seeded: ${images.warm.length} warm + ${images.cold.length} cold images, ${upstreamMiB} MiB`);

  // Mirror.
  const mport = await freePort();
  const { cfg, storage } = mirrorConfig(path.join(dir, 'mirror'), mport, upstream.base);
  const serverLog = path.join(dir, 'mirror', 'server.log');
  const server = startProcess('regmirror', process.execPath, [CLI, 'serve', '--config', cfg], serverLog, { env: { ...process.env, NODE_OPTIONS: '' } });
  const base = `http://127.0.0.1:${mport}`;
  await waitReady(base, server, 30_000);
  const pid = server.pid;

  // Prime: every warm image once, upstream up; anything but success is an error.
  const ledger = new Ledger();
  const timeline = new UpstreamTimeline();
  const mkCtx = (stats) => ({ base, images, ledger, stats, timeline, recoveryMs: MIRROR_TIMEOUTS.probe, slackMs: SLACK_MS, timeoutMs: REQUEST_TIMEOUT_MS, thinkMs: OPTS.thinkMs, releasedCold: () => 0 });
  const prime = await verifyImages(mkCtx(new Stats()), images.warm, 'prime');
  if (prime.failed > 0) throw new Error(`priming the warm images failed: ${JSON.stringify(prime.samples.slice(0, 3))}`);
  await sleep(1000);
  const baseline = { at: elapsedS(), ...procStatus(pid), fds: fdCounts(pid, storage), tempFiles: tempFiles(storage).length, smaps: smapsSummary(pid) };
  log(`primed; baseline RSS ${baseline.rssMiB} MiB, fds ${JSON.stringify(baseline.fds)}`);

  // Load.
  const stats = new Stats();
  const ctx = mkCtx(stats);
  const durationMs = OPTS.duration * 1000;
  const loadStart = Date.now();
  const stopAt = loadStart + durationMs;
  const releaseEvery = (durationMs * 0.85) / images.cold.length;
  ctx.releasedCold = () => Math.min(images.cold.length, 1 + Math.floor((Date.now() - loadStart) / releaseEvery));
  const samples = [];
  const takeSample = (phase) => {
    const s = { t: round((Date.now() - loadStart) / 1000), phase, ...procStatus(pid), fds: fdCounts(pid, storage)?.total ?? null, tempFiles: tempFiles(storage).length, upstreamDown: timeline.troubleDuring(Date.now(), Date.now()) };
    samples.push(s);
    return s;
  };
  let warmup = null;
  const sampler = setInterval(() => {
    const s = takeSample('load');
    heapSample(base, s);
    if (!warmup && Date.now() - loadStart >= durationMs * 0.2) {
      warmup = { ...s, fdsByKind: fdCounts(pid, storage), smaps: smapsSummary(pid) };
      log(`warm-up point: RSS ${s.rssMiB} MiB, ${s.fds} fds; ${stats.total('warm:manifest')} warm manifest GETs so far`);
    }
  }, SAMPLE_EVERY_MS);
  const flapper = startFlapper(upstream, timeline, OPTS);
  const progress = setInterval(() => {
    const f = stats.failures;
    log(`t+${round((Date.now() - loadStart) / 1000, 0)}s: ${Object.values(stats.actions).reduce((a, x) => a + x.ok + x.failed, 0)} actions, ${stats.stale} stale answers, wrong ${f.wrongBytes}, unexplained ${f.unexplained5xx + f.unexplainedTransport}, unexpected ${f.unexpectedStatus}; RSS ${samples.at(-1)?.rssMiB} MiB, fds ${samples.at(-1)?.fds}`);
  }, 10_000);
  const clients = Array.from({ length: OPTS.clients }, (_, i) => runClient(i, ctx, stopAt));
  const allDone = Promise.all(clients);
  const finished = await Promise.race([allDone.then(() => true), sleep(durationMs + REQUEST_TIMEOUT_MS * 4 + 10_000).then(() => false)]);
  clearInterval(progress);
  if (!finished) throw new Error('clients did not finish within their bounds');
  const loadEnd = Date.now();
  await flapper.stop();
  clearInterval(sampler);
  metricsAgent.destroy(); // its keep-alive socket is not the server's leak
  warmup ??= { ...takeSample('load'), fdsByKind: fdCounts(pid, storage) };
  const mem = memLevels(samples, (loadEnd - loadStart) / 1000, warmup);
  log(`load done: ${Object.values(stats.actions).reduce((a, x) => a + x.ok + x.failed, 0)} actions; flaps ${JSON.stringify(flapper.flaps)}`);

  // Settle: the server idles; temp files and file descriptors should go back to baseline.
  const settleStart = Date.now();
  let idle;
  for (let i = 0; i < 1000; i++) {
    idle = { ...procStatus(pid), fds: fdCounts(pid, storage), tempFiles: tempFiles(storage) };
    const filesOk = idle.fds && idle.fds.storageFiles + idle.fds.otherFiles <= baseline.fds.storageFiles + baseline.fds.otherFiles + OPTS.fdMargin;
    if (idle.tempFiles.length === 0 && filesOk && idle.fds.total <= baseline.fds.total + MIRROR_MAX_CONNECTIONS + OPTS.fdMargin) break;
    if (Date.now() - settleStart > SETTLE_MAX_MS) break;
    await sleep(500);
  }
  idle.settleMs = Date.now() - settleStart;
  idle.smaps = smapsSummary(pid);
  log(`idle after ${idle.settleMs} ms: RSS ${idle.rssMiB} MiB, fds ${JSON.stringify(idle.fds)}, temp files ${idle.tempFiles.length}`);

  // Final pass, upstream up (and past the mirror's offline window): every image the run
  // touched is served correctly.
  const lastUp = Math.max(0, ...timeline.downs.map((d) => d.to ?? 0));
  await sleep(Math.max(0, lastUp + MIRROR_TIMEOUTS.offline + 1000 - Date.now()));
  const finalStats = new Stats();
  const released = ctx.releasedCold();
  const final = await verifyImages(mkCtx(finalStats), [...images.warm, ...images.cold.slice(0, released), ...ledger.pushedImages], 'final');
  const health = await send('GET', `${base}/healthz`, { keepBody: true, timeoutMs: 10_000 });
  const healthOk = health.status === 200 && /"ok"/.test(health.body?.toString('utf8') ?? '');

  // Stop the server gracefully, then scrub the storage offline.
  const exit = await stopProcess(server, 15_000);
  const fsck = await runCli(['fsck', '--config', cfg], 120_000);
  const errors = serverErrors(serverLog);

  const f = stats.failures;
  // null (no samples in a window) fails the check rather than passing it.
  const diff = (a, b) => (a === null || b === null ? null : round(a - b));
  const rssGrowth = diff(mem.rssFloor.end, mem.rssFloor.warmup);
  // The allocator keeps freed pages for a while (RSS climbed to a plateau and dropped by
  // 90 MiB at once in one run), so idle RSS is compared with the highest level around warm-up.
  const rssIdleGrowth = diff(idle.rssMiB, mem.rssMax.warmup);
  const heapGrowth = diff(mem.heapUsedMedian.end, mem.heapUsedMedian.warmup);
  const baseFiles = baseline.fds.storageFiles + baseline.fds.otherFiles;
  const idleFiles = idle.fds.storageFiles + idle.fds.otherFiles;
  const checks = [
    { name: 'wrong bytes', value: f.wrongBytes, limit: 0, ok: f.wrongBytes === 0 },
    { name: 'unexplained 5xx', value: f.unexplained5xx, limit: 0, ok: f.unexplained5xx === 0 },
    { name: 'unexplained transport failures (resets, aborts, timeouts)', value: f.unexplainedTransport, limit: 0, ok: f.unexplainedTransport === 0 },
    { name: 'unexpected statuses (4xx, or other non-success)', value: f.unexpectedStatus, limit: 0, ok: f.unexpectedStatus === 0 },
    { name: 'RSS growth under load after warm-up, MiB (floor of the last 20% of the run - floor around the 20% mark)', value: rssGrowth, limit: OPTS.rssLimitMiB, ok: rssGrowth !== null && rssGrowth < OPTS.rssLimitMiB },
    { name: 'RSS growth when idle at the end, MiB (idle RSS - highest sample around the 20% mark)', value: rssIdleGrowth, limit: OPTS.rssLimitMiB, ok: rssIdleGrowth !== null && rssIdleGrowth < OPTS.rssLimitMiB },
    { name: 'V8 heap in use, growth under load after warm-up, MiB (medians, same windows)', value: heapGrowth, limit: HEAP_LIMIT_MIB, ok: heapGrowth !== null && heapGrowth < HEAP_LIMIT_MIB },
    { name: 'open files (non-socket fds) when idle vs baseline', value: `${idleFiles} vs ${baseFiles}`, limit: `+${OPTS.fdMargin}`, ok: idleFiles <= baseFiles + OPTS.fdMargin },
    {
      name: 'fds when idle vs at warm-up (under load)',
      value: `${idle.fds.total} vs ${warmup.fds}`,
      limit: `+${OPTS.fdMargin}`,
      ok: idle.fds.total <= warmup.fds + OPTS.fdMargin,
    },
    {
      // The mirror may keep up to maxConnections idle keep-alive sockets to the upstream.
      name: 'fds when idle vs baseline (idle, before the load)',
      value: `${idle.fds.total} vs ${baseline.fds.total}`,
      limit: `+${MIRROR_MAX_CONNECTIONS} upstream sockets +${OPTS.fdMargin}`,
      ok: idle.fds.total <= baseline.fds.total + MIRROR_MAX_CONNECTIONS + OPTS.fdMargin,
    },
    { name: 'temp files (storage tmp/, uploads/) when idle', value: idle.tempFiles.length, limit: 0, ok: idle.tempFiles.length === 0 },
    { name: 'final pass, upstream up: every pulled-through and pushed image verified', value: `${final.ok}/${final.ok + final.failed}`, limit: 'all', ok: final.failed === 0 },
    { name: '/healthz', value: health.status, limit: 200, ok: healthOk },
    { name: 'clean exit on SIGTERM', value: JSON.stringify(exit), limit: 'code 0', ok: exit?.code === 0 },
    { name: 'regmirror fsck afterwards', value: `exit ${fsck.code}`, limit: 'exit 0', ok: fsck.code === 0 },
    // Error-level lines, and anything not JSON (process warnings such as a FileHandle closed
    // by the garbage collector, i.e. a descriptor the code forgot to close; crash traces).
    { name: 'server log lines at level error or above, or not JSON', value: errors.count, limit: 0, ok: errors.count === 0 },
    { name: 'upstream flapped', value: flapper.flaps.frozen + flapper.flaps.refused, limit: '>= 1, no flapper errors', ok: flapper.flaps.frozen + flapper.flaps.refused >= 1 && flapper.flaps.errors.length === 0 },
  ];
  const pass = checks.every((c) => c.ok);

  const result = {
    kind: 'soak',
    date: started.toISOString(),
    pass,
    settings: { ...OPTS, out: undefined, mirrorTimeoutsMs: MIRROR_TIMEOUTS, slackMs: SLACK_MS, requestTimeoutMs: REQUEST_TIMEOUT_MS },
    machine: { nproc: os.cpus().length, loadavgAtEnd: os.loadavg().map((x) => round(x, 2)), node: process.version, dockerRegistry: versionOf('docker-registry', ['--version']), note: 'shared 2-core VM: other engineers run test suites at the same time' },
    images: { warm: images.warm.length, cold: images.cold.length, coldReleased: released, upstreamMiB },
    loadSeconds: round((loadEnd - loadStart) / 1000),
    actions: stats.actions,
    requests: stats.requests,
    bytesToClients: stats.bytes,
    staleAnswers: stats.stale,
    explained: stats.explained,
    failures: stats.failures,
    failureSamples: stats.samples,
    flaps: { ...flapper.flaps, downIntervals: timeline.downs.map((d) => ({ fromS: round((d.from - loadStart) / 1000), toS: d.to === null ? null : round((d.to - loadStart) / 1000) })) },
    smaps: { baseline: baseline.smaps, warmup: warmup.smaps ?? null, idle: idle.smaps },
    memory: { baseline: { rssMiB: baseline.rssMiB }, ...mem, idle: { rssMiB: idle.rssMiB, hwmMiB: idle.hwmMiB }, growthMiB: rssGrowth, idleGrowthMiB: rssIdleGrowth, heapGrowthMiB: heapGrowth },
    fds: { baseline: baseline.fds, warmup: warmup.fdsByKind, idle: idle.fds, settleMs: idle.settleMs },
    tempFilesIdle: idle.tempFiles.slice(0, 20),
    finalPass: final,
    health: { status: health.status },
    serverExit: exit,
    fsck: { code: fsck.code, stdout: fsck.stdout.slice(0, 2000), stderr: fsck.stderr.slice(0, 2000) },
    serverErrorLines: errors,
    checks,
    samples,
  };
  writeResults(result);
  return pass ? 0 : 2;
}

/**
 * Memory levels from the 1 s samples. Under this load RSS saws up and down by tens of MiB
 * (Buffers in flight to 100 clients come and go: see externalMiB), so one sample against
 * another measures the sawtooth, not growth. Windows: around the warm-up point (15%-25% of
 * the run) and the last 20%. A leak lifts the floor (10th percentile) of RSS and the
 * median of the V8 heap in use; both are compared between the windows.
 */
function memLevels(samples, loadS, warmup) {
  const pct = (xs, p) => {
    const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
    return v.length ? v[Math.floor((v.length - 1) * p)] : null;
  };
  const window = (a, b, key) => samples.filter((s) => s.phase === 'load' && s.t >= a && s.t <= b).map((s) => s[key]);
  const w = [round(loadS * 0.15), round(loadS * 0.25)];
  const e = [round(loadS * 0.8), round(loadS)];
  const after = samples.filter((s) => s.t >= warmup.t).map((s) => s.rssMiB).filter((x) => Number.isFinite(x));
  const ext = samples.map((s) => s.externalMiB).filter((x) => Number.isFinite(x));
  return {
    warmup: { t: warmup.t, rssMiB: warmup.rssMiB },
    warmupWindowS: w,
    endWindowS: e,
    rssFloor: { warmup: pct(window(...w, 'rssMiB'), 0.1), end: pct(window(...e, 'rssMiB'), 0.1) },
    rssMedian: { warmup: pct(window(...w, 'rssMiB'), 0.5), end: pct(window(...e, 'rssMiB'), 0.5) },
    rssMax: { warmup: pct(window(...w, 'rssMiB'), 1), end: pct(window(...e, 'rssMiB'), 1) },
    heapUsedMedian: { warmup: pct(window(...w, 'heapUsedMiB'), 0.5), end: pct(window(...e, 'heapUsedMiB'), 0.5) },
    externalRangeMiB: ext.length ? [Math.min(...ext), Math.max(...ext)] : null,
    peakAfterWarmupMiB: after.length ? Math.max(...after) : null,
  };
}

/** Pull every image in `list` once (sequentially, 4 at a time) with the workload's client. */
async function verifyImages(ctx, list, label) {
  const out = { ok: 0, failed: 0, samples: [] };
  const before = { ...ctx.stats.failures };
  const queue = [...list];
  const stopAt = Date.now() + 5 * 60_000;
  await Promise.all(
    Array.from({ length: 4 }, async (_, w) => {
      while (queue.length > 0 && Date.now() < stopAt) {
        const img = queue.shift();
        const ok = await pullImageOnce(1000 + w, ctx, img);
        if (ok) out.ok++;
        else out.failed++;
      }
    }),
  );
  out.samples = ctx.stats.samples;
  out.failures = Object.fromEntries(Object.entries(ctx.stats.failures).map(([k, v]) => [k, v - before[k]]));
  if (out.failed) log(`${label}: ${out.failed} of ${list.length} images failed`);
  return out;
}

function writeResults(r) {
  fs.mkdirSync(OPTS.out, { recursive: true });
  const day = r.date.slice(0, 10);
  const json = path.join(OPTS.out, `${day}-soak.json`);
  fs.writeFileSync(json, `${JSON.stringify(r, null, 2)}\n`);
  const md = markdown(r);
  fs.writeFileSync(path.join(OPTS.out, 'latest-soak.md'), md);
  console.log(md);
  log(`results: ${json}, ${path.join(OPTS.out, 'latest-soak.md')}`);
}

function markdown(r) {
  const lines = [];
  const s = r.settings;
  lines.push(`# Soak: ${s.clients} clients x ${s.duration} s, upstream flapping (${r.date})`, '');
  lines.push(`**${r.pass ? 'PASS' : 'FAIL'}**. Machine: ${r.machine.nproc} cores, ${r.machine.note}; load average at the end ${r.machine.loadavgAtEnd.join(' ')}. ${r.machine.node}, ${r.machine.dockerRegistry ?? 'docker-registry'}.`, '');
  lines.push('| check | value | limit | |', '| --- | ---: | ---: | --- |');
  for (const c of r.checks) lines.push(`| ${c.name} | ${c.value} | ${c.limit} | ${c.ok ? 'ok' : '**FAIL**'} |`);
  lines.push('', '## Workload', '');
  lines.push(
    `Upstream: docker-registry with ${r.images.warm} warm and ${r.images.cold} cold images (${r.images.cold} released during the run: ${r.images.coldReleased}), ${r.images.upstreamMiB} MiB; up ${s.flapUp.join('-')} s, then down ${s.flapDown.join('-')} s, alternately frozen (SIGSTOP/SIGCONT) and refused (killed, restarted): ${r.flaps.frozen} frozen, ${r.flaps.refused} refused. Mirror upstream timeouts (ms): ${JSON.stringify(r.settings.mirrorTimeoutsMs)}.`,
    '',
  );
  lines.push('| action | ok | failed |', '| --- | ---: | ---: |');
  for (const [k, v] of Object.entries(r.actions)) lines.push(`| ${k} | ${v.ok} | ${v.failed} |`);
  lines.push('', '| requests | by status |', '| --- | --- |');
  for (const [k, v] of Object.entries(r.requests).sort()) lines.push(`| ${k} | ${Object.entries(v).map(([st, n]) => `${st}: ${n}`).join(', ')} |`);
  lines.push('', `Bytes to clients: ${round(r.bytesToClients / MIB)} MiB in ${r.loadSeconds} s. Stale answers (Warning: 299): ${r.staleAnswers}.`, '');
  lines.push('Explained failures (uncached content while the upstream was down or frozen, or within the offline window after it; rule: `classify()` in bench/soak-workload.mjs):', '');
  const ex = Object.entries(r.explained);
  if (ex.length === 0) lines.push('- none');
  for (const [why, n] of ex.sort((a, b) => b[1] - a[1])) lines.push(`- ${why}: ${n}`);
  lines.push('', '## Server', '');
  const m = r.memory;
  lines.push(
    `RSS: ${m.baseline.rssMiB} MiB after priming. Around the warm-up point (t=${m.warmupWindowS.join('-')} s): floor ${m.rssFloor.warmup}, median ${m.rssMedian.warmup} MiB; last 20% (t=${m.endWindowS.join('-')} s): floor ${m.rssFloor.end}, median ${m.rssMedian.end} MiB; highest sample after warm-up ${m.peakAfterWarmupMiB} MiB; ${m.idle.rssMiB} MiB idle at the end (VmHWM ${m.idle.hwmMiB} MiB). V8 heap in use (medians): ${m.heapUsedMedian.warmup} -> ${m.heapUsedMedian.end} MiB; external (Buffers) ranged ${m.externalRangeMiB?.join('-')} MiB, which is most of the RSS sawtooth.`,
  );
  const sm = (x) => (x ? `${JSON.stringify(x.rssMiB)}` : 'n/a');
  lines.push(`Resident memory by mapping kind (MiB; /proc/<pid>/smaps): baseline ${sm(r.smaps.baseline)}; warm-up ${sm(r.smaps.warmup)}; idle ${sm(r.smaps.idle)}.`);
  const fd = (x) => (x ? `${x.total} (sockets ${x.socket}, storage files ${x.storageFiles}, other files ${x.otherFiles}, pipes ${x.pipe}, anon ${x.anon})` : 'n/a');
  lines.push(`File descriptors: baseline ${fd(r.fds.baseline)}; warm-up ${fd(r.fds.warmup)}; idle ${fd(r.fds.idle)} after ${r.fds.settleMs} ms.`);
  lines.push(`Server log lines at level error or above, or not JSON: ${r.serverErrorLines.count}.`);
  for (const l of r.serverErrorLines.samples.slice(0, 5)) lines.push(`    ${l}`);
  if (r.failureSamples.length) {
    lines.push('', '## Failure samples', '');
    for (const x of r.failureSamples.slice(0, 15)) lines.push(`- ${x.category}: ${x.what}: ${x.detail}`);
  }
  lines.push('');
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------

installExitHandlers();
const hard = setTimeout(() => {
  log(`hard time limit (${HARD_LIMIT_MS / 1000} s): stopping`);
  upstreamRef?.resume();
  cleanup().finally(() => process.exit(3));
}, HARD_LIMIT_MS);
hard.unref();
let code = 1;
try {
  code = await main();
} catch (e) {
  log(`error: ${e.stack ?? e.message}`);
  code = 1;
} finally {
  upstreamRef?.resume();
  metricsAgent.destroy();
  await cleanup();
}
process.exit(code);
