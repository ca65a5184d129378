/**
 * A throwaway PostgreSQL cluster for tests (Debian's `postgresql` package): its own temp
 * dir, its own 127.0.0.1 port, trust auth, fsync off (tests only). The postmaster is
 * spawned directly as the `postgres` user (initdb and postgres refuse to run as root), so
 * it is this process's child: stopped by PID in t.teardown, SIGKILLed if the worker dies.
 * `kill()` is an immediate shutdown (SIGQUIT: no checkpoint, recovery at next start, as
 * after a crash); `start()` brings the same cluster back on the same port.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { CI, exited, freePort, stopChild, trackChild, waitFor } from './tools.js';

// Ceilings, not waits: readiness is probed; a loaded 2-core machine can be slow.
const INITDB_TIMEOUT_MS = 120_000;
const START_TIMEOUT_MS = 120_000;

export interface PostgresCluster {
  /** postgres://postgres@127.0.0.1:<port>/postgres */
  url: string;
  port: number;
  /** A new, empty database on this cluster; its URL. */
  createDatabase(name?: string): Promise<string>;
  /** Fast shutdown (sessions are ended, a checkpoint written); resolves once it exited. */
  stop(): Promise<void>;
  /** Immediate shutdown, as if the server crashed (recovery runs at the next start). */
  kill(): Promise<void>;
  /** Start again after stop() or kill(), same port and data; resolves once it accepts queries. */
  start(): Promise<void>;
  /** stop() then start(). */
  restart(): Promise<void>;
  /** The server's log so far (for failure messages). */
  output(): string;
}

/** The newest installed server's bin dir (/usr/lib/postgresql/<ver>/bin), or undefined. */
export function postgresBinDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  let versions: string[];
  try {
    versions = fs.readdirSync(root).filter((v) => /^\d+$/.test(v));
  } catch {
    return undefined;
  }
  versions.sort((a, b) => Number(b) - Number(a));
  for (const v of versions) {
    const bin = path.join(root, v, 'bin');
    if (fs.existsSync(path.join(bin, 'initdb')) && fs.existsSync(path.join(bin, 'postgres'))) return bin;
  }
  return undefined;
}

export const HAVE_POSTGRES = postgresBinDir() !== undefined;
if (!HAVE_POSTGRES && !CI) console.warn('PostgreSQL tests skipped: no /usr/lib/postgresql/<ver>/bin/initdb (apt-get install postgresql)');

function requireBinDir(): string {
  const bin = postgresBinDir();
  if (!bin) throw new Error(`PostgreSQL is not installed${CI ? ' but CI=true: these tests require it' : ''} (apt-get install postgresql)`);
  return bin;
}

/** Who the server runs as: `postgres` when we are root (initdb refuses root), else ourselves. */
function serverUser(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

function runAs(bin: string, args: string[], user: { uid: number; gid: number } | null, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, killSignal: 'SIGKILL', ...(user ?? {}), env: { PATH: '/usr/bin:/bin', LC_ALL: 'C' } });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (out += c));
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      code === 0 ? resolve(out) : reject(new Error(`${path.basename(bin)} ${args.join(' ')}: ${signal ?? `exit code ${code}`}\n${out.slice(-4000)}`)),
    );
  });
}

async function chownTree(dir: string, user: { uid: number; gid: number } | null): Promise<void> {
  if (user) await fsp.chown(dir, user.uid, user.gid);
}

// initdb runs once per test process into a template that each cluster copies (a copy is
// milliseconds; initdb is seconds on a busy machine).
let template: Promise<string> | undefined;

function initTemplate(bin: string, user: { uid: number; gid: number } | null): Promise<string> {
  template ??= (async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'regmirror-pgtemplate-'));
    process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
    await chownTree(dir, user);
    const data = path.join(dir, 'data');
    await runAs(path.join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync', '--no-instructions'], user, INITDB_TIMEOUT_MS);
    return data;
  })();
  return template;
}

async function query(url: string, sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  c.on('error', () => {}); // a server going away is the caller's error, not an uncaught one
  try {
    await c.connect();
    await c.query(sql);
  } finally {
    await c.end().catch(() => {});
  }
}

/** Where the cluster's stop-and-remove goes: a test's `t`, or a file-wide list run in test.after.always. */
export interface Teardown {
  teardown(fn: () => unknown): void;
}

export async function startPostgres(t: Teardown): Promise<PostgresCluster> {
  const bin = requireBinDir();
  const user = serverUser();
  const tpl = await initTemplate(bin, user);
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'regmirror-pg-'));
  const data = path.join(dir, 'data');
  await fsp.cp(tpl, data, { recursive: true });
  if (user) await runAs('/bin/chown', ['-R', `${user.uid}:${user.gid}`, dir], null, 60_000);
  await fsp.chmod(data, 0o700);

  let child: ChildProcess | undefined;
  let log = '';
  let port = 0;
  let dbCount = 0;

  const launch = async (p: number): Promise<void> => {
    const args = ['-D', data, '-p', String(p), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'max_connections=200'];
    const c = spawn(path.join(bin, 'postgres'), args, { stdio: ['ignore', 'ignore', 'pipe'], ...(user ?? {}), env: { PATH: '/usr/bin:/bin', LC_ALL: 'C' } });
    if (c.pid === undefined) throw new Error('postgres did not start');
    child = c;
    trackChild(c);
    c.stderr!.setEncoding('utf8').on('data', (chunk: string) => (log = (log + chunk).slice(-256 * 1024)));
    const url = `postgres://postgres@127.0.0.1:${p}/postgres`;
    try {
      await waitFor(
        async () => {
          if (exited(c)) throw new Error(`postgres exited (${c.exitCode ?? c.signalCode})`);
          await query(url, 'SELECT 1'); // a rejection is retried; the last one is in the timeout message
          return true;
        },
        START_TIMEOUT_MS,
        `postgres on 127.0.0.1:${p}`,
        100,
      );
    } catch (e) {
      throw new Error(`${(e as Error).message}\n${log.slice(-3000)}`);
    }
  };

  // A free port can be taken between freePort() and the bind: retry a few times.
  for (let attempt = 0; ; attempt++) {
    port = await freePort();
    try {
      await launch(port);
      break;
    } catch (e) {
      if (child) await stopChild(child, 'SIGKILL');
      if (attempt >= 3 || !/already in use|could not bind/i.test(log)) throw e;
    }
  }
  t.teardown(async () => {
    if (child) await stopChild(child, 'SIGQUIT', 10_000);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const base = `postgres://postgres@127.0.0.1:${port}`;
  const stopWith = async (signal: NodeJS.Signals) => {
    if (child) await stopChild(child, signal, 30_000);
  };
  const cluster: PostgresCluster = {
    url: `${base}/postgres`,
    port,
    async createDatabase(name) {
      const db = name ?? `t${++dbCount}_${process.pid}`;
      await query(cluster.url, `CREATE DATABASE "${db}"`);
      return `${base}/${db}`;
    },
    stop: () => stopWith('SIGINT'),
    kill: () => stopWith('SIGQUIT'),
    async start() {
      if (child && !exited(child)) throw new Error('postgres is already running');
      await launch(port);
    },
    async restart() {
      await cluster.stop();
      await cluster.start();
    },
    output: () => log,
  };
  return cluster;
}
