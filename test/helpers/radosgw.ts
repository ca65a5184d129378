/**
 * A throwaway single-node Ceph cluster with the RADOS Gateway (Debian's `radosgw`,
 * `ceph-mon`, `ceph-osd`) as the real S3-compatible store for tests (issue #13; recipe in
 * ../shared/docs/sandbox.md "An S3-compatible object store"): one monitor, one memstore
 * OSD, no auth inside the cluster, S3 on a free 127.0.0.1 port, everything in one temp
 * dir. One cluster per test file (start it in `test.before`, stop it in
 * `test.after.always`); tests take a fresh bucket each. Readiness is probed, never slept
 * for: a busy 2-core machine can take many times the usual 5-8 s.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CI, exited, freePort, missingTools, requireTool, runOk, stopChild, trackChild, waitFor } from './tools.js';

const BINS = ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'ceph', 'monmaptool', 'ceph-authtool'] as const;
// Ceilings, not waits: each step is probed.
const STEP_TIMEOUT_MS = 120_000;
const CMD_TIMEOUT_MS = 60_000;

export interface Radosgw {
  /** http://127.0.0.1:<port> */
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Stop the gateway only (the store becomes unreachable); `startGateway` brings it back. */
  stopGateway(): Promise<void>;
  startGateway(): Promise<void>;
  /** SIGSTOP / SIGCONT the gateway: a hung store (connections accepted by the kernel, never answered). */
  pauseGateway(): void;
  resumeGateway(): void;
  /** The gateway's own log so far (failure messages). */
  output(): string;
  /** Stop rgw, osd, mon (TERM, then KILL, by PID) and remove the cluster's dir. */
  stop(): Promise<void>;
}

/** Why the cluster cannot run here, or null; under CI=true a missing binary is an error, not a skip. */
export function radosgwMissing(): string | null {
  const missing = missingTools(BINS);
  if (missing.length === 0) return null;
  if (CI) throw new Error(`${missing.join(', ')} not installed but CI=true (apt-get install radosgw ceph-mon ceph-osd)`);
  return `not installed: ${missing.join(', ')}`;
}

function conf(dir: string, fsid: string, monPort: number, s3Port: number): string {
  return `[global]
fsid = ${fsid}
mon host = [v2:127.0.0.1:${monPort},v1:127.0.0.1:${monPort + 1}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
log file = ${dir}/log/$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false

[mon]
mon data = ${dir}/$name
paxos propose interval = 0.1

[osd]
osd data = ${dir}/$name
osd objectstore = memstore

[client.rgw]
ms mon client mode = crc
rgw frontends = beast endpoint=127.0.0.1:${s3Port}
rgw data = ${dir}/rgw
# Deleted objects' data goes away soon (memstore keeps it in RAM), not after 2 h.
rgw gc obj min wait = 30
rgw gc processor period = 30
`;
}

function daemon(bin: string, args: string[], log: { text: string }): ChildProcess {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(child);
  const keep = (c: Buffer) => (log.text = (log.text + c.toString('utf8')).slice(-64 * 1024));
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return child;
}

/** A port `p` with `p + 1` very likely free too (the monitor's v2 and v1 addresses); a clash fails the start, which is retried. */
async function portPair(): Promise<number> {
  for (;;) {
    const p = await freePort();
    if (p < 65_000) return p;
  }
}

/** Start a cluster; a start that fails (e.g. a port taken between the probe and the bind) is retried twice on new ports. */
export async function startRadosgw(): Promise<Radosgw> {
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce();
    } catch (e) {
      last = e;
    }
  }
  throw last;
}

async function startOnce(): Promise<Radosgw> {
  const bin = Object.fromEntries(BINS.map((b) => [b, requireTool(b, 'radosgw ceph-mon ceph-osd')])) as Record<(typeof BINS)[number], string>;
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-ceph-'));
  await fs.mkdir(path.join(dir, 'run'));
  await fs.mkdir(path.join(dir, 'log'));
  await fs.mkdir(path.join(dir, 'rgw'));
  const fsid = randomUUID();
  const monPort = await portPair();
  const s3Port = await freePort();
  const confFile = path.join(dir, 'ceph.conf');
  await fs.writeFile(confFile, conf(dir, fsid, monPort, s3Port));
  const c = ['-c', confFile];
  const opt = { timeoutMs: CMD_TIMEOUT_MS };
  const log = { text: '' };
  const children: ChildProcess[] = [];
  let rgw: ChildProcess | null = null;
  const endpoint = `http://127.0.0.1:${s3Port}`;
  const accessKeyId = `K${randomBytes(8).toString('hex').toUpperCase()}`;
  const secretAccessKey = randomBytes(24).toString('base64url');

  const stopAll = async () => {
    if (rgw) await stopChild(rgw);
    for (const ch of [...children].reverse()) await stopChild(ch);
    await fs.rm(dir, { recursive: true, force: true });
  };
  const startGateway = async () => {
    rgw = daemon(bin.radosgw, [...c, '-n', 'client.rgw', '-f'], log);
    const child = rgw;
    await waitFor(
      async () => {
        if (exited(child)) throw new Error(`radosgw exited (${child.exitCode ?? child.signalCode}): ${log.text.slice(-2000)}`);
        const res = await fetch(`${endpoint}/`, { signal: AbortSignal.timeout(2_000) }).catch(() => undefined);
        const body = res ? await res.text() : '';
        return body.includes('ListAllMyBucketsResult') ? true : undefined;
      },
      STEP_TIMEOUT_MS,
      `radosgw on ${endpoint}`,
      200,
    );
  };

  try {
    const keyring = path.join(dir, 'keyring');
    const monmap = path.join(dir, 'monmap');
    await runOk(bin['ceph-authtool'], ['--create-keyring', keyring, '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *'], opt);
    await runOk(bin.monmaptool, ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monPort},v1:127.0.0.1:${monPort + 1}]`, monmap], opt);
    await runOk(bin['ceph-mon'], [...c, '--mkfs', '-i', 'a', '--monmap', monmap, '--keyring', keyring], opt);
    children.push(daemon(bin['ceph-mon'], [...c, '-i', 'a', '-f'], log));
    await waitFor(async () => ((await runOk(bin.ceph, [...c, '--connect-timeout', '5', 'mon', 'stat'], opt)).code === 0 ? true : undefined), STEP_TIMEOUT_MS, 'ceph-mon', 200);

    const osdUuid = randomUUID();
    const id = (await runOk(bin.ceph, [...c, 'osd', 'new', osdUuid], opt)).stdout.trim();
    await fs.mkdir(path.join(dir, `osd.${id}`));
    await runOk(bin['ceph-osd'], [...c, '-i', id, '--mkfs', '--osd-uuid', osdUuid], opt);
    children.push(daemon(bin['ceph-osd'], [...c, '-i', id, '-f'], log));
    await waitFor(
      async () => ((await runOk(bin.ceph, [...c, 'osd', 'dump'], opt)).stdout.includes(`osd.${id} up`) ? true : undefined),
      STEP_TIMEOUT_MS,
      `osd.${id} up`,
      200,
    );
    await runOk(bin['radosgw-admin'], [...c, 'user', 'create', '--uid=test', '--display-name=test', `--access-key=${accessKeyId}`, `--secret-key=${secretAccessKey}`], {
      timeoutMs: STEP_TIMEOUT_MS,
    });
    await startGateway();
  } catch (e) {
    await stopAll();
    throw e;
  }

  return {
    endpoint,
    region: 'default',
    accessKeyId,
    secretAccessKey,
    stopGateway: async () => {
      if (rgw) await stopChild(rgw);
      rgw = null;
    },
    startGateway,
    pauseGateway: () => void (rgw?.pid !== undefined && process.kill(rgw.pid, 'SIGSTOP')),
    resumeGateway: () => void (rgw?.pid !== undefined && process.kill(rgw.pid, 'SIGCONT')),
    output: () => log.text,
    stop: stopAll,
  };
}
