/**
 * The shortened soak (issue #8 item 6): bench/soak.mjs — the same driver `npm run soak`
 * runs with 100 clients for 120 s — with 20 clients for 20 s, the upstream (Debian's
 * docker-registry) frozen and killed alternately every few seconds. The driver starts the
 * mirror from dist/ as a child process and judges everything itself; this test runs it,
 * reads its JSON result and asserts every check (0 wrong bytes, 0 unexplained failures,
 * RSS growth after warm-up, fd and temp-file leaks, final verified pass, /healthz, clean
 * exit, fsck), plus that the run really exercised the failure paths (flaps happened,
 * stale answers were served, cold images were pulled, pushes were pulled back).
 *
 * `npm test` builds dist/ first; the driver needs docker-registry (skipped without it
 * unless CI=true).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../helpers/server.js';
import { CI, exited, missingTools, stopChild, trackChild } from '../helpers/tools.js';

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const DRIVER = path.join(REPO_ROOT, 'bench', 'soak.mjs');
const CLIENTS = 20;
const DURATION_S = 20;
/** The driver stops itself (cleanly, children included) after this; the test waits a bit longer. */
const DRIVER_LIMIT_S = 200;

interface Check {
  name: string;
  value: unknown;
  limit: unknown;
  ok: boolean;
}

interface SoakResult {
  pass: boolean;
  checks: Check[];
  actions: Record<string, { ok: number; failed: number }>;
  staleAnswers: number;
  flaps: { frozen: number; refused: number; errors: string[] };
  images: { cold: number; coldReleased: number };
  failureSamples: Array<{ category: string; what: string; detail: string }>;
  memory: unknown;
  fds: unknown;
}

const missing = missingTools(['docker-registry']);
const soakTest = missing.length > 0 && !CI ? test.skip : test;

soakTest('soak: 20 clients x 20 s with the upstream flapping: no wrong bytes, no unexplained failures, no leaks', async (t) => {
  t.timeout((DRIVER_LIMIT_S + 60) * 1000);
  const out = await tempDir(t, 'regmirror-soak-results-');
  const args = [DRIVER, '--clients', String(CLIENTS), '--duration', String(DURATION_S), '--cold', '12', '--flap-up', '2-4', '--flap-down', '1.5-3', '--hard-limit', String(DRIVER_LIMIT_S), '--out', out];
  const child = spawn(process.execPath, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } });
  trackChild(child);
  // SIGTERM lets the driver stop its own children (mirror, upstream) by PID.
  t.teardown(() => stopChild(child, 'SIGTERM', 20_000));
  let stderr = '';
  child.stdout.resume();
  child.stderr.setEncoding('utf8').on('data', (c: string) => {
    stderr = (stderr + c).slice(-64 * 1024);
  });
  const code = await new Promise<number | null>((resolve) => {
    if (exited(child)) resolve(child.exitCode);
    child.once('exit', (c) => resolve(c));
  });
  // 0: every check passed; 2: a check failed (results written); 1: error; 3: time limit.
  t.true(code === 0 || code === 2, `driver exited ${code}:\n${stderr.slice(-6000)}`);
  if (code !== 0 && code !== 2) return;

  const files = (await fs.readdir(out)).filter((f) => f.endsWith('-soak.json'));
  t.is(files.length, 1, `one JSON result in ${out}: ${files.join(', ')}`);
  const r = JSON.parse(await fs.readFile(path.join(out, files[0]!), 'utf8')) as SoakResult;
  t.true((await fs.stat(path.join(out, 'latest-soak.md'))).size > 0);

  for (const c of r.checks) t.true(c.ok, `${c.name}: ${String(c.value)} (limit ${String(c.limit)})`);
  if (!r.pass) {
    t.log(JSON.stringify(r.failureSamples.slice(0, 10), null, 2));
    t.log(JSON.stringify({ memory: r.memory, fds: r.fds }));
  }
  t.is(r.pass, r.checks.every((c) => c.ok));
  t.is(code, r.pass ? 0 : 2);

  // The run must have exercised what it claims to.
  t.true(r.flaps.frozen >= 1 && r.flaps.refused >= 1, `upstream frozen and refused at least once each: ${JSON.stringify(r.flaps)}`);
  t.true(r.staleAnswers > 0, 'cached tags were served stale while the upstream was down');
  t.true(r.images.coldReleased >= 2, `cold images released during the run: ${r.images.coldReleased}`);
  for (const a of ['warmPull', 'digestPull', 'head', 'tagList', 'push', 'coldPull']) {
    t.true((r.actions[a]?.ok ?? 0) > 0, `action ${a} succeeded at least once: ${JSON.stringify(r.actions[a])}`);
  }
});
