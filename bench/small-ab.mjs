#!/usr/bin/env node
/**
 * A/B of the small requests (issue #14 item 2): runs `bench/run.mjs` in its quick mode
 * (BENCH_ONLY=small, no docker-registry) alternately against two builds, A B A B ...,
 * `--runs` times each, so load on the shared machine lands on both alike. Each run
 * measures regmirror and the bare node:http reference side by side. Writes every run's
 * JSON under `<out>/runs/` and the medians to `<out>/summary.json` and `<out>/summary.md`.
 *
 *   node bench/small-ab.mjs --a /path/before/dist/cli.js --b dist/cli.js --runs 5 --out DIR
 *   (add --summarize to only summarize the runs already under DIR/runs, e.g. after an interruption)
 *
 * Settings passed through: BENCH_SECONDS (default 4 here), BENCH_WARMUP (1), BENCH_SLICES.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { HERE, median } from './lib.mjs';

const args = Object.fromEntries(
  process.argv
    .slice(2)
    .join(' ')
    .split('--')
    .filter(Boolean)
    .map((x) => x.trim().split(/\s+/)),
);
const A = path.resolve(args.a ?? '');
const B = path.resolve(args.b ?? 'dist/cli.js');
const RUNS = Number(args.runs ?? 5);
const OUT = path.resolve(args.out ?? path.join(HERE, 'results', 'small-requests'));
// --summarize: no runs, only the summary of what `<out>/runs/` holds (an A/B cut short).
const SUMMARIZE = 'summarize' in args;
if (!SUMMARIZE && (!fs.existsSync(A) || !fs.existsSync(B))) throw new Error('--a and --b must name built cli.js files');
if (!(RUNS >= 1 && RUNS <= 20)) throw new Error('--runs: 1..20');
fs.mkdirSync(path.join(OUT, 'runs'), { recursive: true });

const METRICS = ['manifestHead', 'manifestGet', 'manifestHeadDigest', 'manifestGetDigest', 'blobGetTiny'];
const runs = { a: [], b: [] };
const failed = [];
for (let i = 0; i < RUNS; i++) {
  for (const side of i % 2 === 0 ? ['a', 'b'] : ['b', 'a']) {
    const dir = path.join(OUT, 'runs', `${side}-${i + 1}`);
    fs.mkdirSync(dir, { recursive: true });
    const env = {
      ...process.env,
      BENCH_ONLY: 'small',
      BENCH_DOCKER_REGISTRY: '0',
      BENCH_SECONDS: process.env.BENCH_SECONDS ?? '4',
      BENCH_WARMUP: process.env.BENCH_WARMUP ?? '1',
      BENCH_REGMIRROR_CLI: side === 'a' ? A : B,
      BENCH_RESULTS_DIR: dir,
    };
    if (!SUMMARIZE) {
      console.error(`[small-ab] run ${i + 1}/${RUNS} ${side.toUpperCase()} (${env.BENCH_REGMIRROR_CLI})`);
      try {
        execFileSync(process.execPath, [path.join(HERE, 'run.mjs')], { env, stdio: ['ignore', 'ignore', 'inherit'], timeout: 600_000 });
      } catch (err) {
        // One failed run (a server too slow to start on a loaded machine) costs that run, not the A/B.
        console.error(`[small-ab] run ${i + 1} ${side.toUpperCase()} failed, left out: ${err.message.split('\n', 1)[0]}`);
        failed.push(`${side}-${i + 1}`);
        continue;
      }
    }
    const json = fs.existsSync(dir) ? fs.readdirSync(dir).find((f) => f.endsWith('-core.json')) : undefined;
    if (json) runs[side].push(JSON.parse(fs.readFileSync(path.join(dir, json), 'utf8')));
    else if (SUMMARIZE) failed.push(`${side}-${i + 1}`);
  }
}

const med = (xs) => {
  const v = xs.filter((x) => typeof x === 'number');
  return v.length ? median(v) : null;
};
const pick = (side, server, k, field) => runs[side].map((r) => (r.results[server]?.[k]?.valid ? r.results[server][k][field] : null));
const summary = {};
for (const k of METRICS) {
  const row = {};
  for (const side of ['a', 'b']) {
    row[side] = {
      regmirrorReqPerSec: med(pick(side, 'regmirror', k, 'reqPerSec')),
      regmirrorCpuUsPerRequest: med(pick(side, 'regmirror', k, 'serverCpuUsPerRequest')),
      referenceReqPerSec: med(pick(side, 'node-http', k, 'reqPerSec')),
      referenceCpuUsPerRequest: med(pick(side, 'node-http', k, 'serverCpuUsPerRequest')),
      // Ratio per run (same run, same load), then the median of those.
      ratioReqPerSec: med(runs[side].map((r) => r.smallTable?.find((x) => x.key === k)?.ratio ?? null)),
      ratioCpu: med(runs[side].map((r) => r.smallTable?.find((x) => x.key === k)?.cpuRatio ?? null)),
      foreignCpuShareMax: Math.max(...runs[side].map((r) => r.results.regmirror?.[k]?.foreignCpuShareMax ?? 0)),
    };
  }
  summary[k] = row;
}
const doc = { date: new Date().toISOString(), a: A, b: B, runsEach: RUNS, failedRuns: failed, settings: runs.b[0]?.meta?.settings, summary };
fs.writeFileSync(path.join(OUT, 'summary.json'), `${JSON.stringify(doc, null, 2)}\n`);

const f = (v, d = 0) => (v === null ? 'n/a' : Number(v).toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }));
const lines = [
  `# Small requests A/B (${doc.date.slice(0, 10)})`,
  '',
  `A = \`${args.a}\`, B = \`${args.b}\`; ${RUNS} runs each${failed.length ? ` (left out, failed: ${failed.join(', ')})` : ''}, interleaved (A B, B A, ...); every run: bench/run.mjs with BENCH_ONLY=small, ` +
    `${doc.settings?.seconds} s per request kind and server (${doc.settings?.slices} slices) after ${doc.settings?.warmup} s warm-up, regmirror and the bare node:http reference side by side. Medians over the runs.`,
  '',
  '| request | A req/s | B req/s | A CPU µs/req | B CPU µs/req | node:http req/s (A runs / B runs) | node:http CPU µs/req | req/s ratio to node:http, A / B | CPU ratio node:http/regmirror, A / B |',
  '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
];
const labels = { manifestHead: 'Manifest HEAD by tag', manifestGet: 'Manifest GET by tag', manifestHeadDigest: 'Manifest HEAD by digest', manifestGetDigest: 'Manifest GET by digest', blobGetTiny: 'Small blob GET (config)' };
for (const k of METRICS) {
  const { a, b } = summary[k];
  lines.push(
    `| ${labels[k]} | ${f(a.regmirrorReqPerSec)} | ${f(b.regmirrorReqPerSec)} | ${f(a.regmirrorCpuUsPerRequest, 1)} | ${f(b.regmirrorCpuUsPerRequest, 1)} | ${f(a.referenceReqPerSec)} / ${f(b.referenceReqPerSec)} | ` +
      `${f(a.referenceCpuUsPerRequest, 1)} / ${f(b.referenceCpuUsPerRequest, 1)} | ${f(a.ratioReqPerSec, 2)} / ${f(b.ratioReqPerSec, 2)} | ${f(a.ratioCpu, 2)} / ${f(b.ratioCpu, 2)} |`,
  );
}
const maxForeign = Math.max(...METRICS.flatMap((k) => [summary[k].a.foreignCpuShareMax, summary[k].b.foreignCpuShareMax]));
lines.push('', `Highest share of machine CPU used by other processes during a measured slice: ${(maxForeign * 100).toFixed(0)}% (req/s are disturbed above ~15%; CPU µs per request much less).`, '');
fs.writeFileSync(path.join(OUT, 'summary.md'), lines.join('\n'));
process.stdout.write(`${lines.join('\n')}\n`);
