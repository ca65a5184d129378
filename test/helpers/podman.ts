/**
 * The real podman binary (rootful), isolated per test like helpers/skopeo.ts: its own
 * --root/--runroot/--tmpdir with the vfs driver (no overlay or fuse needed for pulls), its
 * own registries.conf, containers.conf, storage.conf, policy.json and an empty auth file
 * (all passed by environment or flag, checked to be honoured by podman 4.3), temp
 * HOME/XDG dirs, no proxies.
 *
 * Two paths podman 4.3 uses whatever the flags say (seen with strace): the drop-in dir
 * /etc/containers/registries.conf.d (a node's regmirror.conf there would change every
 * test) and the blob-info cache /var/lib/containers/cache (state shared across tests and
 * runs). So each command runs in its own mount namespace (`unshare --mount`, private
 * propagation) with empty temp dirs bind-mounted over /etc/containers and
 * /var/lib/containers where they exist; the mounts vanish with the process and the host
 * never sees them. So podman never reads this machine's container config or image store,
 * keeps no state outside the temp dir, and never reaches the network.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { tempDir } from './server.js';
import { containersEnv } from './skopeo.js';
import { type RunResult, requireTool, run, runOk } from './tools.js';

/** sh script run by `unshare`: shadow the system dirs (when present), then exec podman in the same PID. */
const SHADOW = [
  'if [ -d /etc/containers ]; then mount --bind "$1" /etc/containers || exit 125; fi',
  'if [ -d /var/lib/containers ]; then mount --bind "$2" /var/lib/containers || exit 125; fi',
  'shift 2',
  'exec "$@"',
].join('\n');

export const PODMAN_TIMEOUT_MS = 60_000;

export interface Podman {
  /** `podman <isolation flags> <args>`; rejects with stderr on a non-zero exit or timeout. */
  run(args: string[]): Promise<RunResult>;
  /** Like `run` but resolves with the result whatever the exit code (for expected failures). */
  tryRun(args: string[]): Promise<RunResult>;
  /** `pull` with the test policy, the empty cert dir and no TLS (the registries are plain HTTP). */
  pull(ref: string, extra?: string[]): Promise<RunResult>;
  tryPull(ref: string, extra?: string[]): Promise<RunResult>;
  /** `build` with the test policy (commits read it) and `--pull=never`: bases must be local images. */
  build(args: string[]): Promise<RunResult>;
  /** `load -i <archive>` with the test policy (podman reads /etc/containers/policy.json otherwise). */
  load(file: string): Promise<RunResult>;
  /** The image's digest (`podman image inspect --format {{.Digest}}`). */
  digestOf(ref: string): Promise<string>;
  /** RepoDigests of the image (`name@sha256:...`). */
  repoDigestsOf(ref: string): Promise<string[]>;
  registriesConf: string;
  setRegistriesConf(toml: string): Promise<void>;
}

export async function podman(t: ExecutionContext, opts: { timeoutMs?: number } = {}): Promise<Podman> {
  const timeoutMs = opts.timeoutMs ?? PODMAN_TIMEOUT_MS;
  const bin = requireTool('podman', 'podman');
  const unshare = requireTool('unshare', 'util-linux');
  const root = await tempDir(t, 'regmirror-podman-');
  const d = (...p: string[]) => path.join(root, ...p);
  for (const sub of ['home', 'run', 'config', 'data', 'tmp', 'libpod-tmp', 'root', 'runroot', 'volumes', 'networks', 'certs', 'etc-containers', 'var-lib-containers']) {
    await fs.mkdir(d(sub), { recursive: true, mode: 0o700 });
  }
  // Without a registries.conf entry nothing resolves: no search registries, no short names.
  await fs.writeFile(d('registries.conf'), 'unqualified-search-registries = []\n');
  // No journald/systemd in the sandbox; the file events backend would write under --tmpdir anyway.
  await fs.writeFile(d('containers.conf'), '[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n');
  await fs.writeFile(d('storage.conf'), `[storage]\ndriver = "vfs"\nrunroot = ${JSON.stringify(d('runroot'))}\ngraphroot = ${JSON.stringify(d('root'))}\n`);
  await fs.writeFile(d('policy.json'), '{"default":[{"type":"insecureAcceptAnything"}]}\n');
  // Commands without --signature-policy (save, load) read the user policy under $HOME, the
  // system one being shadowed by the empty /etc/containers.
  await fs.mkdir(d('home', '.config', 'containers'), { recursive: true });
  await fs.copyFile(d('policy.json'), d('home', '.config', 'containers', 'policy.json'));
  await fs.writeFile(d('auth.json'), '{"auths":{}}');
  // containers/image stages big blobs in TMPDIR (podman's --tmpdir is libpod state only).
  const env: NodeJS.ProcessEnv = { ...containersEnv(root), CONTAINERS_STORAGE_CONF: d('storage.conf') };
  const global = [
    '--root', d('root'), '--runroot', d('runroot'), '--storage-driver', 'vfs', '--tmpdir', d('libpod-tmp'),
    '--volumepath', d('volumes'), '--network-config-dir', d('networks'), '--events-backend', 'none', '--cgroup-manager', 'cgroupfs',
  ];
  // unshare execs sh, which execs podman: one PID throughout, so the timeout's SIGKILL hits podman.
  const argv = (args: string[]) => ['--mount', '--propagation', 'private', '--', 'sh', '-c', SHADOW, 'sh', d('etc-containers'), d('var-lib-containers'), bin, ...global, ...args];
  const pullFlags = ['--signature-policy', d('policy.json'), '--cert-dir', d('certs'), '--tls-verify=false'];
  const self: Podman = {
    registriesConf: d('registries.conf'),
    async setRegistriesConf(toml) {
      await fs.writeFile(d('registries.conf'), toml);
    },
    run: (args) => runOk(unshare, argv(args), { env, timeoutMs }),
    tryRun: (args) => run(unshare, argv(args), { env, timeoutMs }),
    pull: (ref, extra = []) => self.run(['pull', ...pullFlags, ...extra, ref]),
    tryPull: (ref, extra = []) => self.tryRun(['pull', ...pullFlags, ...extra, ref]),
    build: (args) => self.run(['build', '--signature-policy', d('policy.json'), '--pull=never', ...args]),
    load: (file) => self.run(['load', '--signature-policy', d('policy.json'), '-i', file]),
    async digestOf(ref) {
      return (await self.run(['image', 'inspect', '--format', '{{.Digest}}', ref])).stdout.trim();
    },
    async repoDigestsOf(ref) {
      const out = (await self.run(['image', 'inspect', '--format', '{{json .RepoDigests}}', ref])).stdout.trim();
      return JSON.parse(out) as string[];
    },
  };
  return self;
}
