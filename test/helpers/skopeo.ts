/**
 * The real skopeo binary with a scrubbed environment (used by every test that runs skopeo): temp
 * HOME/XDG dirs, an empty (or test-provided) registries.conf passed with
 * --registries-conf, empty containers.conf,
 * registries.d and cert dir, no inherited credentials or proxies, and its blob-info cache
 * in the temp dir. So it never reads this machine's container config and never reaches
 * the network.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { tempDir } from './server.js';
import { requireTool, runOk } from './tools.js';

export const SKOPEO_TIMEOUT_MS = 60_000;

export interface Skopeo {
  /**
   * `skopeo <global flags> <args>`; rejects with stderr on a non-zero exit or timeout.
   * `stdoutBytes` is stdout exactly as written (e.g. `inspect --raw` compared byte for byte).
   */
  run(args: string[]): Promise<{ stdout: string; stdoutBytes: Buffer; stderr: string }>;
  /** An empty directory for --*-cert-dir, so /etc/containers/certs.d is never read. */
  certDir: string;
  /** The registries.conf skopeo reads (empty unless written with `setRegistriesConf`). */
  registriesConf: string;
  setRegistriesConf(toml: string): Promise<void>;
}

export interface SkopeoOptions {
  /** Per command: SIGKILL after this; skopeo's own --command-timeout is 5 s less. */
  timeoutMs?: number;
}

/**
 * Every command gets the global flags `--insecure-policy --registries-conf <file>
 * --registries.d <dir> --tmpdir <dir> --command-timeout <s>`, so no caller can forget the
 * registries.conf isolation.
 */
/**
 * The environment of a containers/image tool (skopeo, podman) confined to `root`: its own
 * HOME, XDG dirs and TMPDIR (where big blobs are staged), registries.conf, containers.conf
 * and an auth file, all under `root` (the caller creates them), and no proxy.
 */
export function containersEnv(root: string): NodeJS.ProcessEnv {
  const d = (...p: string[]) => path.join(root, ...p);
  return {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: d('home'),
    XDG_RUNTIME_DIR: d('run'),
    XDG_CONFIG_HOME: d('config'),
    XDG_DATA_HOME: d('data'),
    TMPDIR: d('tmp'),
    CONTAINERS_REGISTRIES_CONF: d('registries.conf'),
    CONTAINERS_CONF: d('containers.conf'),
    REGISTRY_AUTH_FILE: d('auth.json'),
    DOCKER_CONFIG: d('home'),
    NO_PROXY: '*',
  };
}

export async function skopeo(t: ExecutionContext, opts: SkopeoOptions = {}): Promise<Skopeo> {
  const timeoutMs = opts.timeoutMs ?? SKOPEO_TIMEOUT_MS;
  const bin = requireTool('skopeo', 'skopeo');
  const root = await tempDir(t, 'regmirror-skopeo-');
  const d = (...p: string[]) => path.join(root, ...p);
  for (const sub of ['home', 'run', 'config', 'data', 'tmp', 'registries.d', 'certs']) await fs.mkdir(d(sub), { recursive: true, mode: 0o700 });
  await fs.writeFile(d('registries.conf'), '');
  await fs.writeFile(d('containers.conf'), '');
  await fs.writeFile(d('auth.json'), '{"auths":{}}');
  const env: NodeJS.ProcessEnv = {
    ...containersEnv(root),
    // containers/image keeps its blob-info cache in /var/lib/containers/cache for uid 0; for
    // any other uid under $XDG_DATA_HOME, i.e. the temp dir (no cross-test or cross-run
    // state). skopeo only re-execs for containers-storage:, which the tests never use.
    _CONTAINERS_ROOTLESS_UID: '1000',
  };
  // skopeo 1.9 does not honour CONTAINERS_REGISTRIES_CONF (it still reads
  // /etc/containers/registries.conf); the hidden global --registries-conf flag works.
  // --insecure-policy: no policy.json is read.
  const global = ['--insecure-policy', '--registries-conf', d('registries.conf'), '--registries.d', d('registries.d'), '--tmpdir', d('tmp'), '--command-timeout', `${Math.round(timeoutMs / 1000) - 5}s`];
  return {
    certDir: d('certs'),
    registriesConf: d('registries.conf'),
    async setRegistriesConf(toml) {
      await fs.writeFile(d('registries.conf'), toml);
    },
    async run(args) {
      const r = await runOk(bin, [...global, ...args], { env, timeoutMs });
      return { stdout: r.stdout, stdoutBytes: r.stdoutBytes, stderr: r.stderr };
    },
  };
}

/** `copy --all --preserve-digests` into a registry over plain HTTP (optionally with credentials). */
export function pushArgs(sk: Skopeo, src: string, dest: string, creds?: { username: string; password: string }): string[] {
  const auth = creds ? ['--dest-creds', `${creds.username}:${creds.password}`] : ['--dest-no-creds'];
  return ['copy', '--all', '--preserve-digests', '--retry-times', '0', '--dest-tls-verify=false', ...auth, '--dest-cert-dir', sk.certDir, src, dest];
}

/** `copy --all --preserve-digests` out of a registry over plain HTTP, anonymously. */
export function pullArgs(sk: Skopeo, src: string, dest: string): string[] {
  return ['copy', '--all', '--preserve-digests', '--retry-times', '0', '--src-tls-verify=false', '--src-no-creds', '--src-cert-dir', sk.certDir, src, dest];
}
