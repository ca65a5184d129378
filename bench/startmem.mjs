#!/usr/bin/env node
/**
 * Start-up memory of `regmirror serve` with the embedded default config (issue #14 item 3:
 * RSS at most 80 MiB after start). For each build (BENCH_REGMIRROR_CLI, and
 * BENCH_REGMIRROR_CLI_B if set), BENCH_STARTMEM_RUNS (5) fresh starts, alternating builds:
 * each on a loopback port and empty storage, started with the Node options of the CLI's
 * `#!` line as shipped; VmRSS, RssAnon and RssFile are read from /proc once GET /v2/ answers
 * (401: the default config has token auth) and again BENCH_STARTMEM_IDLE_S (5) s later;
 * the median of each is printed (and VmHWM, the peak during start-up).
 * Usage: npm run build && node bench/startmem.mjs
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { cleanup, configure, envNum, freePort, installExitHandlers, log, median, nodeFlagsOf, readStatusKiB, ROOT, sleep, startProcess, stopProcess, tempDirs, waitReady } from './lib.mjs';

configure({ name: 'startmem' });
installExitHandlers();
const RUNS = envNum('BENCH_STARTMEM_RUNS', 5, 1, 50);
const IDLE_S = envNum('BENCH_STARTMEM_IDLE_S', 5, 0, 60);
const builds = [process.env.BENCH_REGMIRROR_CLI || path.join(ROOT, 'dist/cli.js'), process.env.BENCH_REGMIRROR_CLI_B].filter(Boolean).map((p) => path.resolve(p));

const FIELDS = ['VmRSS', 'RssAnon', 'RssFile', 'VmHWM'];
const snapshot = (pid) => Object.fromEntries(FIELDS.map((f) => [f, Math.round((readStatusKiB(pid, f) ?? NaN) / 102.4) / 10]));

async function once(cli) {
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR || '/tmp', 'regmirror-bench-startmem-'));
  tempDirs.push(dir);
  const port = await freePort();
  const yaml = execFileSync(process.execPath, [cli, 'config', 'default'], { encoding: 'utf8' }).replace(/^listen: .*$/m, `listen: 127.0.0.1:${port}`);
  const cfg = path.join(dir, 'config.yml');
  fs.writeFileSync(cfg, yaml.replace(/^storage: .*$/m, `storage: ${path.join(dir, 'storage')}`));
  const entry = startProcess('regmirror', process.execPath, [...nodeFlagsOf(cli), cli, 'serve', '--config', cfg], path.join(dir, 'server.log'));
  await waitReady(`http://127.0.0.1:${port}`, entry, 60_000, [200, 401]);
  const ready = snapshot(entry.pid);
  await sleep(IDLE_S * 1000);
  const idle = snapshot(entry.pid);
  await stopProcess(entry);
  return { ready, idle };
}

const results = new Map(builds.map((b) => [b, []]));
for (let i = 0; i < RUNS; i++) {
  for (const b of i % 2 ? [...builds].reverse() : builds) {
    const r = await once(b);
    results.get(b).push(r);
    log(`${b}: ready ${JSON.stringify(r.ready)} idle ${JSON.stringify(r.idle)}`);
  }
}
const lines = ['| build | flags | VmRSS at ready | RssAnon | RssFile | VmRSS after idle | VmHWM |', '| --- | --- | ---: | ---: | ---: | ---: | ---: |'];
for (const [b, rs] of results) {
  const m = (k, f) => median(rs.map((r) => r[k][f]));
  lines.push(`| ${path.relative(process.cwd(), b)} | ${nodeFlagsOf(b).join(' ') || '-'} | ${m('ready', 'VmRSS')} | ${m('ready', 'RssAnon')} | ${m('ready', 'RssFile')} | ${m('idle', 'VmRSS')} | ${m('idle', 'VmHWM')} |`);
}
process.stdout.write(`\nMedians of ${RUNS} starts each (MiB), embedded default config, node ${process.version}:\n\n${lines.join('\n')}\n`);
await cleanup();
