/**
 * Plumbing shared by the helpers that drive real binaries (docker-registry, containerd,
 * ctr, skopeo): PATH lookup, the CI skip rule, free 127.0.0.1 ports, bounded command
 * runs, bounded polling, and stopping a child by its PID.
 */
import { type ChildProcess, execFile } from 'node:child_process';
import { accessSync, constants as fsConstants } from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export const CI = process.env.CI === 'true';

export function findOnPath(bin: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, bin);
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/** Tools from `bins` that are not on PATH. */
export function missingTools(bins: readonly string[]): string[] {
  return bins.filter((b) => !findOnPath(b));
}

/** The absolute path of `bin`, or an error that says how to install it. */
export function requireTool(bin: string, pkg: string): string {
  const p = findOnPath(bin);
  if (!p) throw new Error(`${bin} is not installed${CI ? ' but CI=true: the e2e tests require it' : ''} (apt-get install ${pkg})`);
  return p;
}

/** A TCP port on 127.0.0.1 that was free a moment ago (the caller retries on a clash). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('no port'))));
    });
  });
}

export interface RunResult {
  code: number | null;
  stdout: string;
  /** stdout exactly as the command wrote it (for byte-for-byte comparisons). */
  stdoutBytes: Buffer;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

/** Run a command to completion (SIGKILL after `timeoutMs`); never rejects on a non-zero exit. */
export function run(
  file: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs: number; cwd?: string },
): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    execFile(
      file,
      [...args],
      { env: opts.env ?? process.env, cwd: opts.cwd, timeout: opts.timeoutMs, killSignal: 'SIGKILL', maxBuffer: 32 * 1024 * 1024, encoding: 'buffer' },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; killed?: boolean; signal?: string }) | null;
        resolve({
          code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
          stdout: stdout.toString('utf8'),
          stdoutBytes: stdout,
          stderr: stderr.toString('utf8'),
          timedOut: Boolean(e?.killed && e.signal === 'SIGKILL'),
          ms: Date.now() - started,
        });
      },
    );
  });
}

/** Like `run`, but rejects (with the command's stderr) unless it exits 0. */
export async function runOk(file: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs: number; cwd?: string }): Promise<RunResult> {
  const r = await run(file, args, opts);
  if (r.code !== 0) {
    const why = r.timedOut ? `timed out after ${opts.timeoutMs} ms` : `exit code ${r.code}`;
    throw new Error(`${path.basename(file)} ${args.join(' ')}: ${why}\n${r.stderr.slice(-4000)}${r.stdout.slice(-2000)}`);
  }
  return r;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Poll `probe` every `everyMs` until it returns something other than undefined; bounded. */
export async function waitFor<T>(probe: () => Promise<T | undefined> | T | undefined, ms: number, what: string, everyMs = 50): Promise<T> {
  const deadline = Date.now() + ms;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}${lastErr ? `: ${(lastErr as Error).message}` : ''}`);
    await sleep(everyMs);
  }
}

const live = new Set<ChildProcess>();
let exitHook = false;

/**
 * Remember a long-running child (a daemon) so it is SIGKILLed by PID if this worker exits
 * without running the test's teardown (e.g. a hard timeout), instead of being orphaned.
 */
export function trackChild(child: ChildProcess): void {
  if (child.pid === undefined) return;
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const c of live) {
        try {
          if (c.pid !== undefined && !exited(c)) process.kill(c.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    });
  }
}

/** Whether the child has exited (or was never started). */
export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/**
 * Stop a child by its PID: `signal` first, SIGKILL if it is still there after `graceMs`,
 * and resolve once it has exited (bounded: gives up waiting 5 s after the SIGKILL).
 */
export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5_000): Promise<void> {
  if (child.pid === undefined || exited(child)) return;
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const within = (ms: number) => Promise.race([gone.then(() => true), sleep(ms).then(() => false)]);
  try {
    process.kill(child.pid, signal);
  } catch {
    return; // already gone
  }
  if (signal === 'SIGKILL' || (await within(graceMs))) {
    await within(5_000);
    return;
  }
  try {
    process.kill(child.pid, 'SIGKILL');
  } catch {
    return;
  }
  await within(5_000);
}
