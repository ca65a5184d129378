#!/usr/bin/env node
/**
 * Paired blob-GET comparison of two regmirror builds on a shared, noisy machine: both
 * servers run at once and are measured in alternating short slices (A B, B A, ...), so
 * both see the same background load; the ratio per pair is what counts.
 *
 *   node bench/results/session4-blob-port/paired.mjs <before/dist/cli.js> <after/dist/cli.js>
 *
 * Env: PAIRED_ROUNDS (12), PAIRED_SLICE_MS (1500), PAIRED_CONNS (16). Loopback only.
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { CLK_TCK, MIB, cleanup, configure, envNum, expectStatus, freePort, genBuffer, installExitHandlers, log, median, pidCpuTicks, request, sha256, startProcess, stopProcess, waitReady } from '../../lib.mjs';

configure({ name: 'paired', keep: false });
installExitHandlers();
const [beforeCli, afterCli] = process.argv.slice(2).map((p) => path.resolve(p));
if (!beforeCli || !afterCli) throw new Error('usage: paired.mjs <before cli.js> <after cli.js>');
const ROUNDS = envNum('PAIRED_ROUNDS', 12, 2, 100);
const SLICE_MS = envNum('PAIRED_SLICE_MS', 1500, 200, 10_000);
const CONNS = envNum('PAIRED_CONNS', 16, 1, 64);
const REPO = 'bench/paired';

async function start(name, cli) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `paired-${name}-`));
  const port = await freePort();
  const cfg = path.join(dir, 'regmirror.yml');
  fs.writeFileSync(cfg, `listen: 127.0.0.1:${port}\nstorage: ${path.join(dir, 'storage')}\nlog:\n  level: warn\n`);
  const entry = startProcess(`regmirror-${name}`, process.execPath, [cli, 'serve', '--config', cfg], path.join(dir, 'server.log'));
  const base = `http://127.0.0.1:${port}`;
  await waitReady(base, entry);
  return { name, base, entry, dir };
}

async function push(base, data) {
  const digest = sha256(data);
  expectStatus(await request('POST', `${base}/v2/${REPO}/blobs/uploads/?digest=${digest}`, { body: data, headers: { 'content-type': 'application/octet-stream' } }), 201, 'push');
  return digest;
}

/** GETs of `paths` round robin on CONNS keep-alive connections for SLICE_MS: bytes and server CPU. */
async function slice(srv, paths) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONNS });
  const cpu0 = pidCpuTicks(srv.entry.pid);
  const t0 = process.hrtime.bigint();
  const end = Date.now() + SLICE_MS;
  let bytes = 0;
  let reqs = 0;
  let next = 0;
  const one = (p) =>
    new Promise((resolve, reject) => {
      http
        .get(`${srv.base}${p}`, { agent }, (res) => {
          if (res.statusCode !== 200) reject(new Error(`${srv.name}: GET ${p}: ${res.statusCode}`));
          res.on('data', (c) => (bytes += c.length));
          res.on('end', resolve);
          res.on('error', reject);
        })
        .on('error', reject);
    });
  await Promise.all(
    Array.from({ length: CONNS }, async () => {
      while (Date.now() < end) {
        await one(paths[next++ % paths.length]);
        reqs++;
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu1 = pidCpuTicks(srv.entry.pid);
  agent.destroy();
  const cpuS = (cpu1.user + cpu1.sys - cpu0.user - cpu0.sys) / CLK_TCK;
  return { mbps: bytes / 1e6 / secs, cpuSPerGB: cpuS / (bytes / 1e9), reqs };
}

const servers = [await start('before', beforeCli), await start('after', afterCli)];
const sets = { small: [], big: [] };
for (let i = 0; i < 32; i++) {
  const data = genBuffer(`paired-small-${i}`, MIB);
  for (const s of servers) sets.small[i] = `/v2/${REPO}/blobs/${await push(s.base, data)}`;
}
const bigData = genBuffer('paired-big', 64 * MIB);
for (const s of servers) sets.big[0] = `/v2/${REPO}/blobs/${await push(s.base, bigData)}`;
log(`seeded; ${ROUNDS} rounds of ${SLICE_MS} ms slices, ${CONNS} connections`);

const out = { settings: { rounds: ROUNDS, sliceMs: SLICE_MS, conns: CONNS, before: beforeCli, after: afterCli }, kinds: {} };
for (const kind of ['small', 'big']) {
  const rounds = [];
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? servers : [...servers].reverse();
    const res = {};
    for (const s of order) res[s.name] = await slice(s, sets[kind]);
    rounds.push({ before: res.before, after: res.after, mbpsRatio: res.after.mbps / res.before.mbps, cpuRatio: res.after.cpuSPerGB / res.before.cpuSPerGB });
  }
  const summary = {
    medianMBps: { before: median(rounds.map((x) => x.before.mbps)), after: median(rounds.map((x) => x.after.mbps)) },
    medianCpuSPerGB: { before: median(rounds.map((x) => x.before.cpuSPerGB)), after: median(rounds.map((x) => x.after.cpuSPerGB)) },
    medianPairRatio: { mbps: median(rounds.map((x) => x.mbpsRatio)), cpuPerGB: median(rounds.map((x) => x.cpuRatio)) },
  };
  out.kinds[kind] = { summary, rounds };
  log(kind === 'small' ? '1 MiB blobs' : '64 MiB blob (sendfile path)', JSON.stringify(summary));
}
for (const s of servers) await stopProcess(s.entry);
for (const s of servers) fs.rmSync(s.dir, { recursive: true, force: true });
process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
cleanup();
