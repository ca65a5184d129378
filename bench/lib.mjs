/**
 * Helpers shared by the benchmark scripts (bench/run.mjs, bench/pullthrough.mjs): settings
 * from the environment, logging, deterministic blob bytes, child processes started and
 * stopped by PID, /proc RSS and CPU sampling, a loopback-only HTTP request helper, and
 * starting Debian's docker-registry. Plain ESM JavaScript, no build step.
 *
 * Nothing here has side effects beyond reading CLK_TCK once; each script calls
 * `configure()` (log name, keep temp dirs) and `installExitHandlers()` itself.
 */
import { spawn, execFileSync } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..');
export const MIB = 1024 * 1024;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function envNum(name, def, min, max) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || n > max) throw new Error(`${name}=${raw}: must be a number in [${min}, ${max}]`);
  return n;
}

export const MT = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
};
// What containerd 1.6 sends when resolving a tag (see shared/docs/sandbox.md).
export const MANIFEST_ACCEPT = [
  MT.dockerManifest,
  'application/vnd.docker.distribution.manifest.list.v2+json',
  MT.ociManifest,
  'application/vnd.oci.image.index.v1+json',
  '*/*',
].join(', ');

// ---------------------------------------------------------------------------------------
// Settings and logging
// ---------------------------------------------------------------------------------------

const settings = { name: 'bench', keep: false };

/** name: the log prefix ("[name +1.2s]"); keep: keep the temp dirs at cleanup. */
export function configure({ name, keep }) {
  if (name !== undefined) settings.name = name;
  if (keep !== undefined) settings.keep = keep;
}

const t0 = Date.now();
/** Seconds since the benchmark started. */
export const elapsedS = () => (Date.now() - t0) / 1000;
export const log = (...a) => console.error(`[${settings.name} +${elapsedS().toFixed(1)}s]`, ...a);

export function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

// ---------------------------------------------------------------------------------------
// Deterministic incompressible bytes: AES-256-CTR of zeros, key derived from a label.
// ---------------------------------------------------------------------------------------

const CHUNK = MIB;
const ZEROS = Buffer.alloc(CHUNK);

function cipherFor(label) {
  const key = createHash('sha256').update(`regmirror-bench/${label}`).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
}

/**
 * A stream of `size` bytes, produced 1 MiB at a time (never held whole in memory); each
 * chunk also goes into `hash` (a crypto Hash) if one is given.
 */
export function genStream(label, size, hash) {
  const c = cipherFor(label);
  let left = size;
  return new Readable({
    highWaterMark: 2 * CHUNK,
    read() {
      if (left <= 0) {
        this.push(null);
        return;
      }
      const n = Math.min(left, CHUNK);
      left -= n;
      const buf = c.update(n === CHUNK ? ZEROS : ZEROS.subarray(0, n));
      hash?.update(buf);
      this.push(buf);
    },
  });
}

/** Small blobs (1 MiB) are fine to hold in memory. */
export function genBuffer(label, size) {
  return cipherFor(label).update(Buffer.alloc(size));
}

export function sha256(buf) {
  return `sha256:${createHash('sha256').update(buf).digest('hex')}`;
}

/** Digest of a generated stream, computed chunk by chunk. */
export function streamDigest(label, size) {
  const c = cipherFor(label);
  const h = createHash('sha256');
  for (let left = size; left > 0; left -= CHUNK) {
    const n = Math.min(left, CHUNK);
    h.update(c.update(n === CHUNK ? ZEROS : ZEROS.subarray(0, n)));
  }
  return `sha256:${h.digest('hex')}`;
}

// ---------------------------------------------------------------------------------------
// Processes: started here, stopped here by PID, always.
// ---------------------------------------------------------------------------------------

const children = new Set(); // { name, child, pid, exited: Promise, done, exitInfo, logFile }
const stopping = new Set();
/** Temp dirs removed at cleanup (unless configured to keep them). */
export const tempDirs = [];
/** Every PID started with startProcess, in start order (also after it exited). */
export const startedPids = [];

export function startProcess(name, cmd, args, logFile, { ipc = false, env } = {}) {
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(cmd, args, { stdio: ipc ? ['ignore', fd, fd, 'ipc'] : ['ignore', fd, fd], cwd: ROOT, env: env ?? process.env });
  fs.closeSync(fd);
  const entry = { name, child, pid: child.pid, done: false, logFile };
  entry.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      if (!stopping.has(entry)) log(`${name} (pid ${child.pid}) exited unexpectedly: code ${code}, signal ${signal}`);
      entry.done = true;
      entry.exitInfo = { code, signal };
      children.delete(entry);
      resolve(entry.exitInfo);
    });
    child.on('error', (err) => {
      entry.done = true;
      entry.exitInfo = { error: err.message };
      children.delete(entry);
      resolve(entry.exitInfo);
    });
  });
  children.add(entry);
  if (child.pid && !startedPids.includes(child.pid)) startedPids.push(child.pid);
  return entry;
}

export async function stopProcess(entry, graceMs = 5000) {
  if (entry.done) return entry.exitInfo;
  stopping.add(entry);
  try {
    process.kill(entry.pid, 'SIGTERM');
  } catch {
    /* already gone */
  }
  const info = await Promise.race([entry.exited, sleep(graceMs).then(() => null)]);
  if (info) return info;
  log(`${entry.name} (pid ${entry.pid}) did not stop in ${graceMs} ms: SIGKILL`);
  try {
    process.kill(entry.pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
  return Promise.race([entry.exited, sleep(2000)]);
}

/** Sends `signal` (default SIGKILL) on purpose (no "exited unexpectedly" log); resolves once it exited. */
export async function killProcess(entry, signal = 'SIGKILL') {
  if (entry.done) return entry.exitInfo;
  stopping.add(entry);
  try {
    process.kill(entry.pid, signal);
  } catch {
    /* already gone */
  }
  return entry.exited;
}

let cleaningUp = null;
/** Stops every running child by PID and removes the temp dirs; once. */
export function cleanup() {
  cleaningUp ??= (async () => {
    await Promise.all([...children].map((e) => stopProcess(e)));
    if (!settings.keep) for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
    else for (const d of tempDirs) log(`kept ${d}`);
  })();
  return cleaningUp;
}

/** SIGINT/SIGTERM/SIGHUP: clean up and exit 130; at exit, SIGKILL whatever is still running. */
export function installExitHandlers() {
  // Last resort if the process exits some other way: kill what is still running.
  process.on('exit', () => {
    for (const e of children) {
      try {
        process.kill(e.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      log(`${sig}: stopping servers`);
      cleanup().finally(() => process.exit(130));
    });
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export function onPath(bin) {
  return (process.env.PATH || '').split(path.delimiter).some((d) => {
    try {
      fs.accessSync(path.join(d, bin), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export function versionOf(cmd, args) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------
// /proc: RSS and CPU accounting
// ---------------------------------------------------------------------------------------

/**
 * Node options on a build's `#!/usr/bin/env -S node ...` line, if any (none today: see
 * bench/results/memory/README.md for the V8 flags tried), so the benches start
 * `node <flags> dist/cli.js` as the CLI would run itself, and an A/B build can try flags.
 */
export function nodeFlagsOf(cliPath) {
  const first = fs.readFileSync(cliPath, 'utf8').split('\n', 1)[0];
  const m = /^#!\/usr\/bin\/env -S node((?: --[\w-]+(?:=\S+)?)*)\s*$/.exec(first);
  return m ? m[1].trim().split(/\s+/).filter(Boolean) : [];
}

/** A `kB` field of /proc/<pid>/status (VmRSS, VmHWM, ...), or null once the process is gone. */
export function readStatusKiB(pid, field) {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

export function readRssKiB(pid) {
  return readStatusKiB(pid, 'VmRSS');
}

/** The process's RSS high-water mark (VmHWM): the peak over its whole life, however brief. */
export function readHwmKiB(pid) {
  return readStatusKiB(pid, 'VmHWM');
}

/** KiB -> MiB with one decimal; null stays null. */
export function mib1(kib) {
  return kib === null || kib === undefined ? null : Math.round(kib / 102.4) / 10;
}

/** Samples VmRSS every `everyMs` until stop(), which returns the samples (KiB); also taken at start and stop. */
export function rssSampler(pid, everyMs = 200) {
  const samples = [];
  const take = () => {
    const kib = readRssKiB(pid);
    if (kib !== null) samples.push(kib);
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    stop() {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

/** First, highest and last RSS sample in MiB (one decimal); null without samples. */
export function rssSummary(samples) {
  if (!samples.length) return null;
  const mib = (k) => Math.round((k / 1024) * 10) / 10;
  return { startMiB: mib(samples[0]), peakMiB: mib(Math.max(...samples)), endMiB: mib(samples[samples.length - 1]) };
}

export let CLK_TCK = 100;
try {
  CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 }).trim()) || 100;
} catch {
  /* keep 100 */
}
export const NCPU = os.cpus().length;

/** A process's CPU time in clock ticks and its minor page faults so far (0 if it is gone). */
export function pidCpuTicks(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { user: Number(f[11]), sys: Number(f[12]), minflt: Number(f[7]) };
  } catch {
    return { user: 0, sys: 0, minflt: 0 };
  }
}

/** Busy ticks of the whole machine (user, nice, system, irq, softirq). */
export function machineBusyTicks() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq] = f;
  return user + nice + system + irq + softirq;
}

/** Wait (bounded) until the machine's CPU is < 10% busy over 2 s, so other work does not skew the run. */
export async function waitQuiet(maxS) {
  const deadline = Date.now() + maxS * 1000;
  for (let i = 0; Date.now() < deadline && i < 10_000; i++) {
    const a = machineBusyTicks();
    await sleep(2000);
    const share = (machineBusyTicks() - a) / CLK_TCK / (2 * NCPU);
    if (share < 0.1) {
      log(`machine quiet (${(share * 100).toFixed(0)}% busy)`);
      return;
    }
    if (i % 5 === 0) log(`waiting for a quiet machine: ${(share * 100).toFixed(0)}% busy`);
  }
  log(`machine still busy after ${maxS} s: running anyway`);
}

// ---------------------------------------------------------------------------------------
// HTTP (node:http, loopback only, every request with a deadline)
// ---------------------------------------------------------------------------------------

export function assertLoopback(host) {
  if (host !== '127.0.0.1') throw new Error(`refusing non-loopback host ${host}`);
}

/** The keep-alive agent `request` uses unless given another; destroy it before exiting. */
export const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

/** Small request/response (seeding, readiness, pushes). Bodies are kept up to 1 MiB. */
export function request(method, url, { headers = {}, body, timeoutMs = 30_000, agent: via = agent } = {}) {
  const u = new URL(url);
  assertLoopback(u.hostname);
  return new Promise((resolve, reject) => {
    const req = http.request({ method, hostname: u.hostname, port: u.port, path: u.pathname + u.search, headers, agent: via }, (res) => {
      const chunks = [];
      let n = 0;
      res.on('data', (c) => {
        if (n < MIB) chunks.push(c); // responses here are small; never keep more than 1 MiB
        n += c.length;
      });
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), bytes: n });
      });
      res.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    const timer = setTimeout(() => req.destroy(new Error(`${method} ${url} timed out after ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    if (body instanceof Readable) {
      body.on('error', (e) => req.destroy(e));
      body.pipe(req);
    } else req.end(body);
  });
}

export function expectStatus(res, want, what) {
  if (res.status !== want) throw new Error(`${what}: HTTP ${res.status} (want ${want}): ${res.body.toString('utf8').slice(0, 300)}`);
  return res;
}

/** Polls `GET <base>/v2/` until it answers 200; fails early if the process exits. */
/** `ready`: statuses of GET /v2/ that mean up (401 with auth on, e.g. the embedded default config). */
export async function waitReady(base, entry, timeoutMs = 20_000, ready = [200]) {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (entry.done) throw new Error(`${entry.name} exited during start-up: ${JSON.stringify(entry.exitInfo)}`);
    try {
      const r = await request('GET', `${base}/v2/`, { timeoutMs: 2000 });
      if (ready.includes(r.status)) return;
      last = `HTTP ${r.status}`;
    } catch (e) {
      last = e.message;
    }
    await sleep(100);
  }
  throw new Error(`${entry.name} not ready after ${timeoutMs} ms (${last})`);
}

// ---------------------------------------------------------------------------------------
// docker-registry (CNCF distribution 2.8)
// ---------------------------------------------------------------------------------------

/**
 * Debian's default config minus auth and the periodic health check; access log off
 * (regmirror logs no access lines at level warn either). With `remoteurl`: proxy mode.
 * `storageExtra`: more lines under `storage:` (indented two spaces). Writes
 * `<dir>/registry.yml` and returns its path.
 */
export function distributionConfig(dir, port, remoteurl, storageExtra = []) {
  const lines = [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  cache:',
    '    blobdescriptor: inmemory',
    '  filesystem:',
    `    rootdirectory: ${path.join(dir, 'storage')}`,
  ];
  if (!remoteurl) lines.push('  delete:', '    enabled: true');
  lines.push(...storageExtra, 'http:', `  addr: 127.0.0.1:${port}`);
  if (remoteurl) lines.push('proxy:', `  remoteurl: ${remoteurl}`);
  lines.push('');
  const cfg = path.join(dir, 'registry.yml');
  fs.writeFileSync(cfg, lines.join('\n'));
  return cfg;
}

/**
 * Starts `docker-registry serve` with storage, config and server.log in `dir` (which must
 * exist) on a free port, and waits until it is ready. Returns { base, entry, pid }.
 */
export async function startDockerRegistry(dir, processName, remoteurl = null) {
  const port = await freePort();
  const cfg = distributionConfig(dir, port, remoteurl);
  const entry = startProcess(processName, 'docker-registry', ['serve', cfg], path.join(dir, 'server.log'));
  const base = `http://127.0.0.1:${port}`;
  await waitReady(base, entry);
  return { base, entry, pid: entry.pid };
}

/** Self time per function from the .cpuprofile files in `dir` (node --cpu-prof), hottest first. */
export function summarizeProfiles(dir, top = 25) {
  let files = [];
  try {
    files = fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  } catch {
    return null;
  }
  const self = new Map();
  let total = 0;
  for (const f of files) {
    const p = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    const dt = new Map();
    for (let i = 0; i < p.samples.length; i++) dt.set(p.samples[i], (dt.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0));
    for (const [id, us] of dt) {
      const n = byId.get(id);
      const cf = n.callFrame;
      // Paths relative to the checkout, or to a snapshot of a build (bench/pullthrough.mjs).
      const url = cf.url.replace(`file://${ROOT}/`, '').replace(/^file:\/\/.*\/build\/dist\//, 'dist/');
      const key = `${cf.functionName || '(anonymous)'} ${url ? `${url}:${cf.lineNumber + 1}` : ''}`.trim();
      self.set(key, (self.get(key) ?? 0) + us);
      total += us;
    }
  }
  const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
  return { files: files.map((f) => path.join(dir, f)), totalMs: Math.round(total / 1000), top: rows.map(([k, us]) => ({ fn: k, ms: Math.round(us / 1000), pct: Math.round((1000 * us) / total) / 10 })) };
}

// ---------------------------------------------------------------------------------------
// Reference server for small requests (bench/refserver.mjs)
// ---------------------------------------------------------------------------------------

/**
 * Start the bare `node:http` reference in its own process. `routes`: path ->
 * `{ headers, body }` (a Buffer); written to `<dir>` for the child to load.
 */
export async function startReferenceServer(dir, routes, processName = 'node-http') {
  const port = await freePort();
  const spec = {};
  for (const [i, [p, r]] of Object.entries(routes).entries()) {
    const bodyFile = path.join(dir, `body-${i}`);
    fs.writeFileSync(bodyFile, r.body);
    spec[p] = { headers: r.headers, bodyFile };
  }
  const routesFile = path.join(dir, 'routes.json');
  fs.writeFileSync(routesFile, JSON.stringify(spec, null, 2));
  const entry = startProcess(processName, process.execPath, [path.join(HERE, 'refserver.mjs'), String(port), routesFile], path.join(dir, 'server.log'));
  const base = `http://127.0.0.1:${port}`;
  await waitReady(base, entry);
  return { base, entry, pid: entry.pid };
}
