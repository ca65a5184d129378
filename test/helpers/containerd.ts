/**
 * A private containerd as the mirror's client (sandbox.md "containerd as the mirror's
 * client"). Everything lives under one temp dir: config.toml, root, state, the gRPC and
 * ttrpc sockets, the `opt` plugin dir. The system containerd (/run/containerd,
 * /var/lib/containerd, /etc/containerd) is never touched: `ctr` always gets `--address`
 * and a scrubbed environment (no CONTAINERD_*, no proxies).
 *
 * - The CRI plugin is disabled unless asked for: `ctr` does not need it, and by default
 *   its CNI dirs are /etc/cni/net.d and /opt/cni/bin (it watches, and may create, the
 *   former). With `cri: true` its registry config_path (`criHostsDir`) and CNI dirs point
 *   into the temp dir (checked: nothing is created outside it); it serves the CRI gRPC
 *   services (runtime.v1 and v1alpha2) on the same socket as containerd's own API, and
 *   puts images in the `k8s.io` containerd namespace. Only image pulls are used: no pod is
 *   ever run, so the sandbox (pause) image and the missing CNI config do not matter (the
 *   plugin logs "failed to load cni during init" and carries on). With `criRegistryToml`
 *   there is no config_path: the given TOML (the legacy `registry.mirrors` /
 *   `registry.configs` tables, which only the CRI plugin reads, never `ctr`) is appended.
 * - The metadata store uses content_sharing_policy "isolated" by default, so every
 *   containerd namespace is a fresh content store: a pull in a new namespace really
 *   fetches every blob again (through the mirror) instead of reusing another
 *   namespace's copy. That is what the concurrency and "upstream gone" tests rely on.
 * - Images are unpacked with the `native` snapshotter (overlayfs may not load in a sandbox).
 *
 * Stopped by PID in t.teardown (SIGTERM, then SIGKILL), leftover mounts under the temp
 * dir are lazily unmounted, and the dir is removed.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { type RunResult, exited, findOnPath, requireTool, run, runOk, stopChild, trackChild, waitFor } from './tools.js';

// A ceiling, not a wait: readiness is probed; a loaded 2-core machine can take long.
const START_TIMEOUT_MS = 90_000;
export const CTR_TIMEOUT_MS = 45_000;

export interface HostEntry {
  /** Mirror URL, e.g. http://127.0.0.1:5000 or http://127.0.0.1:5000/v2/test-namespace */
  url: string;
  capabilities?: Array<'pull' | 'resolve' | 'push'>;
  overridePath?: boolean;
}

export interface ImageRecord {
  ref: string;
  mediaType: string;
  digest: string;
}

export interface PullOptions {
  namespace: string;
  hostsDir: string;
  allPlatforms?: boolean;
  platform?: string;
  timeoutMs?: number;
}

export interface Containerd {
  /** The gRPC socket (what `ctr --address` takes; with `cri`, also the CRI endpoint). */
  address: string;
  dir: string;
  /** The CRI plugin's registry config_path (hosts.toml dirs go here); null without `cri` or with `criRegistryToml`. */
  criHostsDir: string | null;
  /** The config.toml containerd was started with. */
  configFile: string;
  pid: number;
  /** `ctr --address <sock> [-n <namespace>] <args>`; never rejects on a non-zero exit. */
  ctr(args: string[], opts?: { namespace?: string; timeoutMs?: number }): Promise<RunResult>;
  /** `ctr images pull --hosts-dir <dir> --plain-http --snapshotter native`; rejects on failure. */
  pull(ref: string, opts: PullOptions): Promise<RunResult>;
  /** Like pull, but resolves with the result whatever the exit code. */
  tryPull(ref: string, opts: PullOptions): Promise<RunResult>;
  /** `ctr images ls` of a namespace. */
  images(namespace: string): Promise<ImageRecord[]>;
  /** Digests in the namespace's content store (`ctr content ls -q`). */
  content(namespace: string): Promise<string[]>;
  /** `ctr images rm` + `ctr content rm` of everything in the namespace. */
  clear(namespace: string): Promise<void>;
  /** containerd's own log (stderr), for failure messages. */
  output(): string;
  stop(): Promise<void>;
}

function tomlString(s: string): string {
  // TOML basic strings share JSON's escapes for everything a path or URL can contain.
  return JSON.stringify(s);
}

export interface ContainerdOptions {
  cri?: boolean;
  /** With `cri`: appended to config.toml instead of setting `registry.config_path`. */
  criRegistryToml?: string;
  contentSharing?: 'isolated' | 'shared';
}

function configToml(dir: string, opts: { cri: boolean; criRegistryToml?: string; contentSharing: 'isolated' | 'shared' }): string {
  const p = (...x: string[]) => tomlString(path.join(dir, ...x));
  const disabled = ['io.containerd.snapshotter.v1.aufs', 'io.containerd.snapshotter.v1.btrfs', 'io.containerd.snapshotter.v1.zfs', 'io.containerd.snapshotter.v1.devmapper'];
  if (!opts.cri) disabled.push('io.containerd.grpc.v1.cri');
  const lines = [
    'version = 2',
    `root = ${p('root')}`,
    `state = ${p('state')}`,
    `disabled_plugins = ${JSON.stringify(disabled)}`,
    '[grpc]',
    `  address = ${p('containerd.sock')}`,
    '[ttrpc]',
    `  address = ${p('containerd.sock.ttrpc')}`,
    '[debug]',
    '  level = "info"',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${p('opt')}`,
    '[plugins."io.containerd.metadata.v1.bolt"]',
    `  content_sharing_policy = ${tomlString(opts.contentSharing)}`,
  ];
  if (opts.cri) {
    lines.push(
      '[plugins."io.containerd.grpc.v1.cri"]',
      '  stream_server_address = "127.0.0.1"',
      '[plugins."io.containerd.grpc.v1.cri".containerd]',
      '  snapshotter = "native"',
      '[plugins."io.containerd.grpc.v1.cri".cni]',
      `  bin_dir = ${p('cni', 'bin')}`,
      `  conf_dir = ${p('cni', 'net.d')}`,
    );
    if (opts.criRegistryToml === undefined) lines.push('[plugins."io.containerd.grpc.v1.cri".registry]', `  config_path = ${p('certs.d')}`);
    else lines.push(opts.criRegistryToml);
  }
  return `${lines.join('\n')}\n`;
}

/** Mount points at or below `dir` (deepest first), from /proc/self/mountinfo. */
async function mountsUnder(dir: string): Promise<string[]> {
  let text: string;
  try {
    text = await fs.readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const decoded = mp.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (decoded === dir || decoded.startsWith(`${dir}/`)) out.push(decoded);
  }
  return out.sort((a, b) => b.length - a.length);
}

export async function startContainerd(t: ExecutionContext, opts: ContainerdOptions = {}): Promise<Containerd> {
  const containerdBin = requireTool('containerd', 'containerd');
  const ctrBin = requireTool('ctr', 'containerd');
  // Short base path: unix socket paths are limited to 108 bytes.
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'rm-ctd-'));
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', HOME: dir, TMPDIR: dir };
  let child: ChildProcess | null = null;
  t.teardown(async () => {
    if (child) await stopChild(child, 'SIGTERM', 5_000);
    const umount = findOnPath('umount');
    for (const m of await mountsUnder(dir)) if (umount) await run(umount, ['-l', m], { timeoutMs: 5_000 });
    await fs.rm(dir, { recursive: true, force: true, maxRetries: 3 });
  });

  const configFile = path.join(dir, 'config.toml');
  const cri = opts.cri ?? false;
  await fs.writeFile(configFile, configToml(dir, { cri, criRegistryToml: opts.criRegistryToml, contentSharing: opts.contentSharing ?? 'isolated' }));
  const criHostsDir = cri && opts.criRegistryToml === undefined ? path.join(dir, 'certs.d') : null;
  if (criHostsDir) await fs.mkdir(criHostsDir, { recursive: true });
  const address = path.join(dir, 'containerd.sock');
  const proc = spawn(containerdBin, ['--config', configFile], { stdio: ['ignore', 'ignore', 'pipe'], env });
  child = proc;
  if (proc.pid === undefined) throw new Error('containerd did not start');
  trackChild(proc);
  let log = '';
  proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    log = (log + chunk).slice(-512 * 1024);
  });

  const ctr = (args: string[], o: { namespace?: string; timeoutMs?: number } = {}) =>
    run(ctrBin, ['--address', address, ...(o.namespace ? ['--namespace', o.namespace] : []), ...args], { env, timeoutMs: o.timeoutMs ?? CTR_TIMEOUT_MS });

  await waitFor(
    async () => {
      if (exited(proc)) throw new Error(`containerd exited (${proc.exitCode ?? proc.signalCode}): ${log.slice(-3000)}`);
      if (!existsSync(address)) return undefined;
      const v = await ctr(['version'], { timeoutMs: 5_000 });
      return v.code === 0 ? true : undefined;
    },
    START_TIMEOUT_MS,
    `containerd socket ${address}`,
  );

  const pullArgs = (ref: string, o: PullOptions) => [
    'images',
    'pull',
    '--hosts-dir',
    o.hostsDir,
    '--plain-http',
    '--snapshotter',
    'native',
    ...(o.allPlatforms ? ['--all-platforms'] : []),
    ...(o.platform ? ['--platform', o.platform] : []),
    ref,
  ];

  const self: Containerd = {
    address,
    dir,
    criHostsDir,
    configFile,
    pid: proc.pid,
    ctr,
    tryPull: (ref, o) => ctr(pullArgs(ref, o), { namespace: o.namespace, timeoutMs: o.timeoutMs }),
    async pull(ref, o) {
      const r = await ctr(pullArgs(ref, o), { namespace: o.namespace, timeoutMs: o.timeoutMs });
      if (r.code !== 0) {
        const why = r.timedOut ? `timed out after ${o.timeoutMs ?? CTR_TIMEOUT_MS} ms` : `exit code ${r.code}`;
        throw new Error(`ctr -n ${o.namespace} images pull ${ref}: ${why}\n${r.stderr.slice(-3000)}\n${r.stdout.slice(-2000)}`);
      }
      return r;
    },
    async images(namespace) {
      const r = await runOk(ctrBin, ['--address', address, '--namespace', namespace, 'images', 'ls'], { env, timeoutMs: CTR_TIMEOUT_MS });
      return r.stdout
        .split('\n')
        .slice(1)
        .map((l) => l.trim().split(/\s+/))
        .filter((f) => f.length >= 3 && f[0])
        .map((f) => ({ ref: f[0]!, mediaType: f[1]!, digest: f[2]! }));
    },
    async content(namespace) {
      const r = await runOk(ctrBin, ['--address', address, '--namespace', namespace, 'content', 'ls', '-q'], { env, timeoutMs: CTR_TIMEOUT_MS });
      return r.stdout.split('\n').map((l) => l.trim()).filter(Boolean);
    },
    async clear(namespace) {
      const refs = (await self.images(namespace)).map((i) => i.ref);
      if (refs.length > 0) await runOk(ctrBin, ['--address', address, '--namespace', namespace, 'images', 'rm', '--sync', ...refs], { env, timeoutMs: CTR_TIMEOUT_MS });
      const digests = await self.content(namespace);
      if (digests.length > 0) await runOk(ctrBin, ['--address', address, '--namespace', namespace, 'content', 'rm', ...digests], { env, timeoutMs: CTR_TIMEOUT_MS });
    },
    output: () => log,
    stop: () => stopChild(proc, 'SIGTERM', 5_000),
  };
  return self;
}

/**
 * Write `<hostsDir>/<registry>/hosts.toml` (protocol.md 4.1): `server` is tried last,
 * each `[host."<url>"]` in order before it. Returns the file path.
 */
export async function writeHostsToml(hostsDir: string, registry: string, cfg: { server: string; hosts: HostEntry[] }): Promise<string> {
  const lines = [`server = ${tomlString(cfg.server)}`, ''];
  for (const h of cfg.hosts) {
    lines.push(`[host.${tomlString(h.url)}]`);
    lines.push(`  capabilities = ${JSON.stringify(h.capabilities ?? ['pull', 'resolve'])}`);
    if (h.overridePath) lines.push('  override_path = true');
    lines.push('');
  }
  const dir = path.join(hostsDir, registry);
  await fs.mkdir(dir, { recursive: true });
  const file = path.join(dir, 'hosts.toml');
  await fs.writeFile(file, lines.join('\n'));
  return file;
}
