/**
 * Debian's `docker-registry` (CNCF distribution 2.8) as a real upstream for tests:
 * 127.0.0.1 on a free port, filesystem storage in a temp dir, optional htpasswd Basic
 * auth (bcrypt entries from `htpasswd -Bbn`). Its access log (combined format, stdout)
 * is parsed so tests can count exactly what the upstream served. Stopped by PID in
 * t.teardown; `kill()` simulates the upstream dying mid-test.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import type { Blob } from '../fixtures/images.js';
import { writeOciLayout } from '../fixtures/images.js';
import { tempDir } from './server.js';
import { type Skopeo, pushArgs, skopeo } from './skopeo.js';
import { exited, freePort, requireTool, runOk, sleep, stopChild, trackChild, waitFor } from './tools.js';

// A ceiling, not a wait: readiness is probed; a loaded 2-core machine can take long.
const START_TIMEOUT_MS = 90_000;

export interface BasicCredentials {
  username: string;
  password: string;
}

export interface AccessEntry {
  method: string;
  /** Request URI as sent (path and query). */
  uri: string;
  /** The path without the query. */
  path: string;
  status: number;
  userAgent: string;
}

export interface DockerRegistry {
  /** http://127.0.0.1:<port> */
  url: string;
  /** 127.0.0.1:<port> */
  hostPort: string;
  port: number;
  pid: number;
  credentials: BasicCredentials | null;
  /** Every request the registry has logged so far, in order. */
  accessLog(): AccessEntry[];
  /** stderr (the registry's own log), for failure messages. */
  output(): string;
  /** SIGKILL by PID, as if the upstream crashed; resolves once it has exited. */
  kill(): Promise<void>;
  /** SIGTERM (then SIGKILL); resolves once it has exited. */
  stop(): Promise<void>;
}

// 127.0.0.1 - - [22/Nov/2026:03:19:14 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "curl/7.88.1"
const ACCESS_RE = /^\S+ \S+ \S+ \[[^\]]*\] "([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) \S+ "[^"]*" "([^"]*)"/;

export function parseAccessLine(line: string): AccessEntry | undefined {
  const m = ACCESS_RE.exec(line);
  if (!m) return undefined;
  const uri = m[2]!;
  const q = uri.indexOf('?');
  return { method: m[1]!, uri, path: q === -1 ? uri : uri.slice(0, q), status: Number(m[3]), userAgent: m[4]! };
}

/** A bcrypt htpasswd line for `user`, made by apache2-utils' htpasswd. */
async function htpasswdLine(creds: BasicCredentials): Promise<string> {
  const bin = requireTool('htpasswd', 'apache2-utils');
  const r = await runOk(bin, ['-Bbn', creds.username, creds.password], { timeoutMs: 15_000 });
  const line = r.stdout.split('\n').find((l) => l.startsWith(`${creds.username}:$2`));
  if (!line) throw new Error(`htpasswd printed no bcrypt entry: ${r.stdout}`);
  return `${line.trim()}\n`;
}

function configYaml(storage: string, port: number, htpasswdFile: string | null): string {
  return [
    'version: 0.1',
    'log:',
    '  level: info',
    '  accesslog:',
    '    disabled: false',
    'storage:',
    `  filesystem: { rootdirectory: ${JSON.stringify(storage)} }`,
    '  delete: { enabled: true }',
    '  maintenance:',
    '    uploadpurging: { enabled: false }',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    ...(htpasswdFile ? ['auth:', `  htpasswd: { realm: regmirror-test, path: ${JSON.stringify(htpasswdFile)} }`] : []),
    '',
  ].join('\n');
}

export async function startDockerRegistry(t: ExecutionContext, opts: { auth?: BasicCredentials } = {}): Promise<DockerRegistry> {
  const bin = requireTool('docker-registry', 'docker-registry');
  const dir = await tempDir(t, 'regmirror-upstream-');
  const storage = path.join(dir, 'storage');
  await fs.mkdir(storage, { recursive: true });
  let htpasswdFile: string | null = null;
  if (opts.auth) {
    htpasswdFile = path.join(dir, 'htpasswd');
    await fs.writeFile(htpasswdFile, await htpasswdLine(opts.auth), { mode: 0o600 });
  }

  // A free port can be taken between freePort() and the bind: retry a few times.
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 4; attempt++) {
    const port = await freePort();
    const configFile = path.join(dir, `config-${attempt}.yml`);
    await fs.writeFile(configFile, configYaml(storage, port, htpasswdFile));
    const child = spawn(bin, ['serve', configFile], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
    if (child.pid === undefined) throw new Error('docker-registry did not start');
    trackChild(child);
    t.teardown(() => stopChild(child));
    const entries: AccessEntry[] = [];
    let stdoutRest = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      const lines = (stdoutRest + chunk).split('\n');
      stdoutRest = lines.pop() ?? '';
      for (const l of lines) {
        const e = parseAccessLine(l);
        if (e) entries.push(e);
      }
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-256 * 1024);
    });
    const url = `http://127.0.0.1:${port}`;
    try {
      await waitFor(
        async () => {
          if (exited(child)) throw new Error(`docker-registry exited (${child.exitCode ?? child.signalCode}): ${stderr.slice(-2000)}`);
          const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1_000) }).catch(() => undefined);
          if (!res) return undefined;
          await res.arrayBuffer();
          return res.status === 200 || res.status === 401 ? true : undefined;
        },
        START_TIMEOUT_MS,
        `docker-registry on ${url}/v2/`,
      );
    } catch (e) {
      lastError = e as Error;
      await stopChild(child, 'SIGKILL');
      if (!exited(child) || !/address already in use/.test(stderr)) throw lastError;
      continue;
    }
    return {
      url,
      hostPort: `127.0.0.1:${port}`,
      port,
      pid: child.pid,
      credentials: opts.auth ?? null,
      accessLog: () => [...entries],
      output: () => stderr,
      kill: () => stopChild(child, 'SIGKILL'),
      stop: () => stopChild(child, 'SIGTERM'),
    };
  }
  throw lastError ?? new Error('docker-registry did not start');
}

/**
 * Push an image (index or manifest `root` with all of `blobs`) into the registry as
 * `<repo>:<tag>` with `skopeo copy --all --preserve-digests` from an OCI layout built
 * in a temp dir. Uses the registry's credentials when it has any.
 */
export async function seedRegistry(
  t: ExecutionContext,
  reg: DockerRegistry,
  image: { repo: string; tag: string; root: Blob; blobs: readonly Blob[] },
  sk?: Skopeo,
): Promise<void> {
  const runner = sk ?? (await skopeo(t));
  const layout = path.join(await tempDir(t, 'regmirror-seed-'), 'layout');
  await writeOciLayout(layout, [{ tag: image.tag, root: image.root }], [...image.blobs]);
  await runner.run(pushArgs(runner, `oci:${layout}:${image.tag}`, `docker://${reg.hostPort}/${image.repo}:${image.tag}`, reg.credentials ?? undefined));
}

/**
 * Wait until the access log stops growing (it is written after each response, and read
 * from a pipe, so a loaded machine delivers lines late): unchanged for 3 polls of `ms`,
 * bounded at 25 polls.
 */
export async function settleAccessLog(reg: DockerRegistry, ms = 200): Promise<void> {
  let last = -1;
  let stable = 0;
  for (let polls = 0; polls < 25 && stable < 3; polls++) {
    const n = reg.accessLog().length;
    stable = n === last ? stable + 1 : 0;
    last = n;
    await sleep(ms);
  }
}
