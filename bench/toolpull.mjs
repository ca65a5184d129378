/**
 * Real clients for the pull-through bench's cold 1-client pulls (issue #14 item 1 asks
 * for skopeo and a CRI/containerd client beside curl-like clients):
 *
 *   skopeo  `skopeo copy docker://<cache>/<repo>:<tag> oci:<dir>` (verifies every blob)
 *   ctr     `ctr images pull --plain-http --snapshotter native` on a private containerd
 *           (containerd's own resolver and fetcher; fetch + unpack, as `ctr` does)
 *   cri     a CRI `ImageService/PullImage` gRPC call to the same containerd's CRI plugin,
 *           what kubelet sends for a pod (test/fixtures/cri/api.proto; crictl is not in Debian)
 *
 * Every containerd is private (its own root, state, sockets, registry hosts dir under a
 * temp dir; sandbox.md "containerd as the mirror's client") and started before the timed
 * part; the bench stops it by PID afterwards. Nothing outside the temp dir is touched.
 * The image is pulled from the cache by its own host:port (no mirror `ns=` rewriting), so
 * both caches see exactly the requests the client makes.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { ROOT, log, onPath, sleep, startProcess, stopProcess } from './lib.mjs';

export const TOOLS = ['skopeo', 'ctr', 'cri'];

/** Which of TOOLS can run here (a missing one is reported, not silently dropped). */
export function toolsAvailable() {
  const ctd = onPath('containerd') && onPath('ctr');
  return { skopeo: onPath('skopeo'), ctr: ctd, cri: ctd && fs.existsSync(path.join(ROOT, 'test/fixtures/cri/api.proto')) };
}

/** Runs a command with a hard timeout; resolves { code, out } (stdout+stderr tail). */
function run(cmd, args, { timeoutMs, env }) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
    let out = '';
    const keep = (d) => (out = (out + d).slice(-8192));
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: -1, out: `${out}\n${e.message}` });
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, out: signal ? `${out}\n(killed by ${signal}: timeout ${timeoutMs} ms?)` : out });
    });
  });
}

function configToml(dir) {
  const p = (...x) => JSON.stringify(path.join(dir, ...x));
  return [
    'version = 2',
    `root = ${p('root')}`,
    `state = ${p('state')}`,
    'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]',
    '[grpc]',
    `  address = ${p('containerd.sock')}`,
    '[ttrpc]',
    `  address = ${p('containerd.sock.ttrpc')}`,
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${p('opt')}`,
    '[plugins."io.containerd.grpc.v1.cri"]',
    '  stream_server_address = "127.0.0.1"',
    '[plugins."io.containerd.grpc.v1.cri".containerd]',
    '  snapshotter = "native"',
    '[plugins."io.containerd.grpc.v1.cri".cni]',
    `  bin_dir = ${p('cni', 'bin')}`,
    `  conf_dir = ${p('cni', 'net.d')}`,
    '[plugins."io.containerd.grpc.v1.cri".registry]',
    `  config_path = ${p('certs.d')}`,
    '',
  ].join('\n');
}

/** A fresh private containerd (CRI plugin on) for one pull; `stop()` ends it and removes its dir. */
export async function startContainerd(dir, timeoutMs = 90_000) {
  fs.mkdirSync(path.join(dir, 'certs.d'), { recursive: true });
  const configFile = path.join(dir, 'config.toml');
  fs.writeFileSync(configFile, configToml(dir));
  const address = path.join(dir, 'containerd.sock');
  const env = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', HOME: dir, TMPDIR: dir };
  const entry = startProcess('containerd', 'containerd', ['--config', configFile], path.join(dir, 'containerd.log'), { env });
  const ctr = (args, t = 45_000) => run('ctr', ['--address', address, ...args], { timeoutMs: t, env });
  // Readiness: the socket answers `ctr version` (a ceiling, polled; never a fixed sleep).
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; ; i++) {
    if (entry.done) throw new Error(`containerd exited during start-up: ${fs.readFileSync(entry.logFile, 'utf8').slice(-2000)}`);
    if (fs.existsSync(address) && (await ctr(['version'], 5_000)).code === 0) break;
    if (Date.now() > deadline || i > 10_000) throw new Error(`containerd did not answer on ${address} in ${timeoutMs} ms`);
    await sleep(100);
  }
  const stop = async () => {
    await stopProcess(entry);
    // The native snapshotter makes no mounts; overlay is disabled by the CRI config above.
    fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  };
  return { address, dir, entry, pid: entry.pid, env, ctr, stop };
}

let criDefinition = null;
async function criClient(address) {
  const grpc = await import('@grpc/grpc-js');
  const protoLoader = await import('@grpc/proto-loader');
  criDefinition ??= protoLoader.loadSync(path.join(ROOT, 'test/fixtures/cri/api.proto'), { keepCase: false, longs: String, defaults: true });
  const pkg = grpc.loadPackageDefinition(criDefinition);
  return new pkg.runtime.v1.ImageService(`unix://${address}`, grpc.credentials.createInsecure());
}

/**
 * One cold pull of `ref` (`127.0.0.1:<port>/<repo>:<tag>`) with `tool`; `ctd` is a fresh
 * containerd for ctr and cri. Resolves { ms, ok, error?, digest } where digest is what
 * the client ended up with (manifest digest for skopeo/ctr, image id = config digest for cri).
 */
export async function toolPull(tool, ref, { workDir, ctd, timeoutMs }) {
  const host = ref.slice(0, ref.indexOf('/'));
  if (ctd) {
    // Plain HTTP to the cache itself (the CRI plugin reads hosts.toml; ctr gets --plain-http).
    const hd = path.join(ctd.dir, 'certs.d', host);
    fs.mkdirSync(hd, { recursive: true });
    fs.writeFileSync(path.join(hd, 'hosts.toml'), `server = "http://${host}"\n[host."http://${host}"]\n  capabilities = ["pull", "resolve"]\n`);
  }
  const t0 = performance.now();
  let res;
  let digest = null;
  if (tool === 'skopeo') {
    // dir: keeps the manifest byte for byte (an oci: layout may get a rewritten one).
    const out = path.join(workDir, 'skopeo-out');
    res = await run('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `dir:${out}`], { timeoutMs });
    if (res.code === 0) digest = `sha256:${createHash('sha256').update(fs.readFileSync(path.join(out, 'manifest.json'))).digest('hex')}`;
  } else if (tool === 'ctr') {
    res = await ctd.ctr(['-n', 'bench', 'images', 'pull', '--plain-http', '--snapshotter', 'native', '--hosts-dir', path.join(ctd.dir, 'certs.d'), ref], timeoutMs);
    if (res.code === 0) {
      const ls = await ctd.ctr(['-n', 'bench', 'images', 'ls']);
      digest = /sha256:[0-9a-f]{64}/.exec(ls.out.split('\n').find((l) => l.startsWith(ref)) ?? '')?.[0] ?? null;
    }
  } else if (tool === 'cri') {
    const client = await criClient(ctd.address);
    res = await new Promise((resolve) =>
      client.PullImage({ image: { image: ref } }, { deadline: Date.now() + timeoutMs }, (err, r) => resolve(err ? { code: err.code, out: String(err.details) } : { code: 0, out: '', imageRef: String(r.imageRef) })),
    );
    client.close();
    digest = res.imageRef ?? null;
  } else throw new Error(`unknown tool ${tool}`);
  const ms = performance.now() - t0;
  if (res.code !== 0) log(`${tool} pull of ${ref} failed (${res.code}): ${res.out.slice(-600)}`);
  return { ms, ok: res.code === 0, error: res.code === 0 ? undefined : `${tool} exit ${res.code}: ${res.out.slice(-300)}`, digest };
}

export function toolVersions() {
  const v = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', timeout: 10_000 }).split('\n')[0].trim();
    } catch {
      return null;
    }
  };
  return { skopeo: v('skopeo', ['--version']), containerd: v('containerd', ['--version']) };
}

/**
 * Cold 1-client pulls with real clients: for each run and tool, every cache fresh (order
 * alternating), a fresh containerd for ctr/cri started before the clock; measured: wall
 * time of the client command, the cache's CPU and minor faults over it (ctx.cpuSnapshot /
 * cpuDelta), upstream blob GETs (exactly once per blob expected). Returns
 * { [cache]: { [tool]: { runs: [...], median: {...} } } }.
 */
export async function toolScenario(ctx) {
  const { kinds, fresh, retire, img, proxy, upstream, root, tools, runs, timeoutMs, overBudget, cpuSnapshot, cpuDelta, repo, tag } = ctx;
  const out = Object.fromEntries(kinds.map((k) => [k.name, {}]));
  const medianOf = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : null;
  };
  const r3 = (x) => (x === null || !Number.isFinite(x) ? null : Math.round(x * 1000) / 1000);
  let n = 0;
  for (let run = 0; run < runs; run++) {
    for (const tool of tools) {
      for (const k of (run + tools.indexOf(tool)) % 2 ? [...kinds].reverse() : kinds) {
        if (overBudget(`${k.name} ${tool} cold pull run ${run + 1}`)) continue;
        const workDir = path.join(root, `tool-${++n}`);
        fs.mkdirSync(workDir, { recursive: true });
        const cache = await fresh(k);
        const ctd = tool === 'skopeo' ? null : await startContainerd(path.join(workDir, 'ctd'));
        let r;
        try {
          await proxy.waitIdle();
          await proxy.stats(true);
          const pids = { cache: cache.pid, client: ctd?.pid ?? null };
          const cpu0 = cpuSnapshot(pids);
          const ref = `${new URL(cache.base).host}/${repo}:${tag}`;
          const p = await toolPull(tool, ref, { workDir, ctd, timeoutMs });
          const cpu = cpuDelta(cpu0, cpuSnapshot(pids));
          await proxy.waitIdle();
          const st = await proxy.stats(true);
          const want = tool === 'cri' ? img.config.digest : img.manifestDigest;
          const gets = img.blobs.map((b) => st.blobGets[b.digest] ?? 0);
          const failures = [];
          if (!p.ok) failures.push(p.error);
          else if (p.digest !== want) failures.push(`${tool} ended with ${p.digest}, want ${want}`);
          // docker-registry's proxy fetches a blob twice (its known behaviour); regmirror exactly once.
          if (p.ok && k.name.startsWith('regmirror') && Math.max(...gets) !== 1) failures.push(`upstream GETs per blob ${gets.join(',')}, want 1 each`);
          r = {
            wallSeconds: r3(p.ms / 1000),
            ...cpu,
            cacheCpuSecondsPerGB: r3(cpu.cacheCpuSeconds / (img.size / 1e9)),
            cacheMinorFaultsPerGB: Math.round(cpu.cacheMinorFaults / (img.size / 1e9)),
            upstreamBlobGetsPerBlob: gets,
            failures,
            valid: failures.length === 0,
          };
          log(`${k.name} cold pull with ${tool} (run ${run + 1}/${runs}): ${r.wallSeconds} s wall, cache CPU ${cpu.cacheCpuSeconds} s, foreign CPU ${Math.round(cpu.foreignCpuShare * 100)}%${failures.length ? `  [FAILED: ${failures[0]}]` : ''}`);
        } finally {
          await ctd?.stop();
          await retire(cache);
          fs.rmSync(workDir, { recursive: true, force: true });
        }
        ((out[k.name][tool] ??= { runs: [] }).runs).push(r);
      }
    }
  }
  for (const byTool of Object.values(out)) {
    for (const t of Object.values(byTool)) {
      const ok = t.runs.filter((r) => r?.valid);
      t.median = ok.length ? { runs: ok.length, wallSeconds: r3(medianOf(ok.map((r) => r.wallSeconds))), cacheCpuSecondsPerGB: r3(medianOf(ok.map((r) => r.cacheCpuSecondsPerGB))), cacheMinorFaultsPerGB: medianOf(ok.map((r) => r.cacheMinorFaultsPerGB)), foreignCpuShare: r3(medianOf(ok.map((r) => r.foreignCpuShare))) } : null;
    }
  }
  return out;
}
