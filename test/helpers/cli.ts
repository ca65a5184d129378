/**
 * The real CLI as a child process (`node dist/cli.js serve|fsck ...`), for the crash tests
 * (test/e2e/crash*.test.ts): start on a config file, SIGKILL, restart on the same storage,
 * run the offline tools, and check the storage invariant of storage/README.md from outside.
 *
 * `npm test` builds dist/ before running ava; the child runs dist/cli.js from the repo root.
 */
import type { ExecutionContext } from 'ava';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { http } from './http.js';

export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const CLI = path.join(REPO_ROOT, 'dist', 'cli.js');

/** Generous: a child start-up on a loaded 2-core machine has taken over 20 s. */
const START_TIMEOUT_MS = 60_000;
const MAX_LOG_LINES = 100_000;
const TOOL_TIMEOUT_MS = 60_000;

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Poll `probe` every `everyMs` until it returns a value other than undefined (bounded). */
export async function waitFor<T>(probe: () => Promise<T | undefined>, ms: number, what: string, everyMs = 20): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

export async function digestOfStream(src: AsyncIterable<Buffer>): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of src) {
    h.update(c);
    size += c.length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

// ---------------------------------------------------------------------------
// the server as a child process

export interface CliServer {
  url: string;
  child: ChildProcess;
  /** The child's stdout/stderr lines (the first MAX_LOG_LINES), e.g. to wait for a log line. */
  output: string[];
  /** SIGKILL and wait (bounded) until the process is gone. */
  kill(): Promise<void>;
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export async function killHard(child: ChildProcess): Promise<void> {
  if (exited(child)) return;
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await withTimeout(gone, 10_000, `server pid ${child.pid} to exit after SIGKILL`);
}

/**
 * A config file for the child in `dir` with storage at `dir/storage`; `extra` are more YAML
 * lines. `store`: a `storage:` mapping instead (e.g. replicas.ts `sharedStorage().config(dir)`).
 */
export async function writeConfig(dir: string, extra: readonly string[] = [], store?: Record<string, unknown>): Promise<{ config: string; storage: string }> {
  const storage = typeof store?.path === 'string' ? store.path : path.join(dir, 'storage');
  const config = path.join(dir, 'config.yml');
  await fs.writeFile(
    config,
    [
      'listen: 127.0.0.1:0',
      `storage: ${JSON.stringify(store ?? storage)}`,
      'log:',
      '  level: info',
      'limits:',
      '  maxManifestBytes: 4MiB',
      '  maxBlobBytes: 0',
      '  uploadTtl: 1h',
      ...extra,
      '',
    ].join('\n'),
  );
  return { config, storage };
}

export interface StartOptions {
  /** Extra environment for the child. */
  env?: Record<string, string>;
  /** Node options before the script, e.g. `--import <preload>`. */
  nodeArgs?: readonly string[];
  /** Statuses of GET /v2/ that mean ready (default 200; 401 with auth, e.g. the embedded default config). */
  readyStatuses?: readonly number[];
}

/** Start `node dist/cli.js serve --config <config>`; resolves when GET /v2/ answers 200 (or `readyStatuses`). */
export async function startCli(t: ExecutionContext, config: string, opts: StartOptions = {}): Promise<CliServer> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), CLI, 'serve', '--config', config], {
    cwd: path.dirname(config),
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NODE_OPTIONS: '', ...opts.env },
  });
  t.teardown(() => killHard(child));
  const output: string[] = [];
  let url: string | undefined;
  let partial = '';
  const onData = (chunk: Buffer) => {
    const lines = (partial + chunk.toString('utf8')).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (output.length < MAX_LOG_LINES) output.push(line);
      if (url === undefined && line.includes('regmirror listening')) {
        try {
          url = (JSON.parse(line) as { url?: string }).url;
        } catch {
          // not JSON: ignore
        }
      }
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const describe = () => `pid ${child.pid}, exit ${child.exitCode ?? child.signalCode}, output:\n${output.slice(-200).join('\n')}${partial}`;
  try {
    const listening = await waitFor(
      async () => {
        if (exited(child)) throw new Error('server exited during start-up');
        return url;
      },
      START_TIMEOUT_MS,
      'the "regmirror listening" log line',
    );
    if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(listening)) throw new Error(`unexpected listen url ${listening}`);
    await waitFor(
      async () => {
        if (exited(child)) throw new Error('server exited during start-up');
        const res = await http('GET', `${listening}/v2/`).catch(() => undefined);
        return res && (opts.readyStatuses ?? [200]).includes(res.status) ? true : undefined;
      },
      START_TIMEOUT_MS,
      `GET ${listening}/v2/`,
    );
    return { url: listening, child, output, kill: () => killHard(child) };
  } catch (e) {
    await killHard(child);
    throw new Error(`${(e as Error).message}\n${describe()}`);
  }
}

/** Run an offline command (`fsck`, `gc`, ...) of the real CLI; never rejects on a non-zero exit. */
export function runCli(args: readonly string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { cwd, env: { ...process.env, NODE_OPTIONS: '' }, timeout: TOOL_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') reject(new Error(`regmirror ${args.join(' ')}: ${err.message}\n${stderr}`));
        else resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
  });
}

// ---------------------------------------------------------------------------
// checks of the storage directory

/**
 * Walk storage/blobs: every file must sit at sha256/<hex[0:2]>/<hex> and hash to <hex>.
 * Returns the digests found.
 */
export async function assertBlobStoreIntact(t: ExecutionContext, storage: string): Promise<Set<string>> {
  const blobsDir = path.join(storage, 'blobs');
  const found = new Set<string>();
  const entries = await fs.readdir(blobsDir, { recursive: true, withFileTypes: true });
  for (const e of entries) {
    const full = path.join(e.parentPath, e.name);
    const rel = path.relative(blobsDir, full);
    if (e.isDirectory()) continue;
    if (!e.isFile()) {
      t.fail(`unexpected non-regular file in blobs: ${rel}`);
      continue;
    }
    const m = /^sha256\/([0-9a-f]{2})\/([0-9a-f]{64})$/.exec(rel.split(path.sep).join('/'));
    if (!m || !m[2]!.startsWith(m[1]!)) {
      t.fail(`unexpected file in blobs (not sha256/<xx>/<hex>): ${rel}`);
      continue;
    }
    const { digest, size } = await digestOfStream(createReadStream(full));
    t.is(digest, `sha256:${m[2]}`, `blobs/${rel} holds partial or wrong content (${size} bytes)`);
    found.add(`sha256:${m[2]}`);
  }
  return found;
}

export async function assertTmpEmpty(t: ExecutionContext, storage: string): Promise<void> {
  t.deepEqual(await fs.readdir(path.join(storage, 'tmp')), [], 'storage/tmp is not empty after restart');
}
