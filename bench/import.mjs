#!/usr/bin/env node
/**
 * Import benchmark (issue #9): loading image archives into regmirror with its import
 * endpoint vs what a user would otherwise run, `skopeo copy --all oci-archive:<file>
 * docker://<mirror>/...` once per archive, into the same kind of fresh server.
 *
 *   npm run build && node bench/import.mjs
 *
 * Input: BENCH_IMPORT_ARCHIVES (2) OCI archives of BENCH_IMPORT_ARCHIVE_MIB (256) each, every
 * one a two-platform index (linux/amd64, linux/arm64) with two incompressible layers per
 * platform (AES-256-CTR of zeros), written once to a temp dir. regmirror's side sends them
 * as BENCH_IMPORT_MODE: `bundle` (default; one tar holding the archives, one raw POST, what
 * `regmirror import bundle.tar` sends) or `multipart` (one POST, one file part per archive).
 * Each repetition (BENCH_IMPORT_REPS, 3) starts a fresh regmirror with empty storage per
 * method, runs `sync` first, and measures wall time, the server's CPU time and its VmRSS
 * (sampled every 100 ms: start, peak). Runs are interleaved A B / B A. Afterwards every
 * image's index digest is read back through /v2 and compared with the archive's.
 * Writes bench/results/<YYYY-MM-DD>-import.json and bench/results/latest-import.md.
 * BENCH_IMPORT_TIMEOUT (900 s) is a hard limit; BENCH_KEEP=1 keeps the temp dir.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import {
  CLK_TCK, MIB, MT, ROOT, cleanup, configure, envNum, expectStatus, freePort, genStream, installExitHandlers, log, median, onPath,
  pidCpuTicks, readRssKiB, request, rssSampler, rssSummary, sha256, startProcess, stopProcess, streamDigest, tempDirs, versionOf, waitReady,
} from './lib.mjs';

configure({ name: 'bench-import', keep: process.env.BENCH_KEEP === '1' });
const ARCHIVES = envNum('BENCH_IMPORT_ARCHIVES', 2, 1, 16);
const ARCHIVE_MIB = envNum('BENCH_IMPORT_ARCHIVE_MIB', 256, 8, 4096);
const REPS = envNum('BENCH_IMPORT_REPS', 3, 1, 10);
const HARD_LIMIT_S = envNum('BENCH_IMPORT_TIMEOUT', 900, 60, 7200);
const MODE = process.env.BENCH_IMPORT_MODE === 'multipart' ? 'multipart' : 'bundle';
const CLI = process.env.BENCH_REGMIRROR_CLI ?? path.join(ROOT, 'dist', 'cli.js');
const RESULTS = process.env.BENCH_RESULTS_DIR ?? path.join(ROOT, 'bench', 'results');

const json = (v) => Buffer.from(JSON.stringify(v));

function addEntry(pack, name, body) {
  return new Promise((resolve, reject) => pack.entry({ name }, body, (e) => (e ? reject(e) : resolve())));
}

/** One two-platform OCI archive file; returns its path and index digest. */
async function writeArchive(dir, i) {
  const layerBytes = Math.floor((ARCHIVE_MIB * MIB) / 4);
  const labels = [0, 1, 2, 3].map((l) => `import-${i}-${l}`);
  const digests = labels.map((l) => streamDigest(l, layerBytes));
  const plats = ['amd64', 'arm64'].map((arch, p) => {
    const layers = digests.slice(p * 2, p * 2 + 2);
    const cfg = json({ architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: layers } });
    const manifest = json({
      schemaVersion: 2, mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: sha256(cfg), size: cfg.length },
      layers: layers.map((digest) => ({ mediaType: MT.ociLayer, digest, size: layerBytes })),
    });
    return { arch, cfg, manifest };
  });
  const index = json({
    schemaVersion: 2, mediaType: MT.ociIndex,
    manifests: plats.map((p) => ({ mediaType: MT.ociManifest, digest: sha256(p.manifest), size: p.manifest.length, platform: { architecture: p.arch, os: 'linux' } })),
  });
  const name = `bench/image-${i}:1`;
  const top = json({ schemaVersion: 2, manifests: [{ mediaType: MT.ociIndex, digest: sha256(index), size: index.length, annotations: { 'org.opencontainers.image.ref.name': name } }] });
  const file = path.join(dir, `image-${i}.tar`);
  const pack = tar.pack();
  const done = pipeline(pack, fs.createWriteStream(file));
  await addEntry(pack, 'oci-layout', json({ imageLayoutVersion: '1.0.0' }));
  for (const [n, label] of labels.entries()) {
    await new Promise((resolve, reject) => {
      const entry = pack.entry({ name: `blobs/sha256/${digests[n].slice(7)}`, size: layerBytes }, (e) => (e ? reject(e) : resolve()));
      genStream(label, layerBytes).pipe(entry);
    });
  }
  for (const p of plats) {
    await addEntry(pack, `blobs/sha256/${sha256(p.cfg).slice(7)}`, p.cfg);
    await addEntry(pack, `blobs/sha256/${sha256(p.manifest).slice(7)}`, p.manifest);
  }
  await addEntry(pack, `blobs/sha256/${sha256(index).slice(7)}`, index);
  await addEntry(pack, 'index.json', top);
  pack.finalize();
  await done;
  return { file, name, repo: `bench/image-${i}`, tag: '1', digest: sha256(index), bytes: fs.statSync(file).size };
}

/** A plain tar holding the archive files: the bundle `regmirror import` would send. */
async function writeBundle(dir, archives) {
  const file = path.join(dir, 'bundle.tar');
  const pack = tar.pack();
  const done = pipeline(pack, fs.createWriteStream(file));
  for (const a of archives) {
    await new Promise((resolve, reject) => {
      const entry = pack.entry({ name: path.basename(a.file), size: a.bytes }, (e) => (e ? reject(e) : resolve()));
      fs.createReadStream(a.file).pipe(entry);
    });
  }
  pack.finalize();
  await done;
  return file;
}

async function startRegmirror(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const cfg = path.join(dir, 'regmirror.yml');
  fs.writeFileSync(cfg, `listen: 127.0.0.1:${port}\nstorage: ${path.join(dir, 'storage')}\nlog:\n  level: warn\nlimits:\n  maxBlobBytes: 0\n`);
  const entry = startProcess('regmirror', process.execPath, [CLI, 'serve', '--config', cfg], path.join(dir, 'server.log'));
  const base = `http://127.0.0.1:${port}`;
  await waitReady(base, entry, 60_000);
  return { base, entry, pid: entry.pid, hostPort: `127.0.0.1:${port}` };
}

function run(cmd, args, env) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env, timeout: HARD_LIMIT_S * 1000, maxBuffer: 16 * MIB }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr.slice(-2000)}`));
      else resolve(stdout);
    });
  });
}

async function importWithRegmirror(srv, archives, bundle) {
  const url = `${srv.base}/api/v1/import?namespace=${encodeURIComponent('site')}`;
  let res;
  if (MODE === 'bundle') {
    res = await request('POST', url, { headers: { 'content-type': 'application/x-tar', 'content-length': String(fs.statSync(bundle).size) }, body: fs.createReadStream(bundle), timeoutMs: HARD_LIMIT_S * 1000 });
  } else {
    const boundary = `----regmirror-bench-${Date.now()}`;
    async function* form() {
      for (const a of archives) {
        yield Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="archive"; filename="${path.basename(a.file)}"\r\nContent-Type: application/x-tar\r\n\r\n`);
        yield* fs.createReadStream(a.file, { highWaterMark: MIB });
        yield Buffer.from('\r\n');
      }
      yield Buffer.from(`--${boundary}--\r\n`);
    }
    res = await request('POST', url, { headers: { 'content-type': `multipart/form-data; boundary=${boundary}` }, body: Readable.from(form()), timeoutMs: HARD_LIMIT_S * 1000 });
  }
  expectStatus(res, 200, 'import');
}

async function importWithSkopeo(srv, archives, home) {
  for (const a of archives) {
    await run('skopeo', ['copy', '--all', '--preserve-digests', '--insecure-policy', '--dest-tls-verify=false', '--quiet', `oci-archive:${a.file}`, `docker://${srv.hostPort}/site/${a.repo}:${a.tag}`], {
      ...process.env, HOME: home, REGISTRY_AUTH_FILE: path.join(home, 'auth.json'), CONTAINERS_REGISTRIES_CONF: path.join(home, 'registries.conf'),
    });
  }
}

async function verify(srv, archives) {
  for (const a of archives) {
    const r = await request('HEAD', `${srv.base}/v2/site/${a.repo}/manifests/${a.tag}`, { headers: { accept: MT.ociIndex } });
    if (r.status !== 200 || r.headers['docker-content-digest'] !== a.digest) throw new Error(`site/${a.repo}:${a.tag}: HTTP ${r.status}, digest ${r.headers['docker-content-digest']} (want ${a.digest})`);
  }
}

async function measure(method, root, rep, archives, bundle) {
  const dir = path.join(root, `${method}-${rep}`);
  const srv = await startRegmirror(dir);
  await run('sync', [], process.env);
  const cpu0 = pidCpuTicks(srv.pid);
  const rss = rssSampler(srv.pid, 100);
  const t0 = process.hrtime.bigint();
  if (method === 'regmirror-import') await importWithRegmirror(srv, archives, bundle);
  else await importWithSkopeo(srv, archives, dir);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const samples = rss.stop();
  const cpu1 = pidCpuTicks(srv.pid);
  await verify(srv, archives);
  await stopProcess(srv.entry);
  fs.rmSync(path.join(dir, 'storage'), { recursive: true, force: true });
  const serverCpuSeconds = (cpu1.user + cpu1.sys - cpu0.user - cpu0.sys) / CLK_TCK;
  const r = { method, rep, seconds: Math.round(seconds * 100) / 100, serverCpuSeconds: Math.round(serverCpuSeconds * 100) / 100, rss: rssSummary(samples) };
  log(`${method} #${rep}: ${r.seconds} s, server CPU ${r.serverCpuSeconds} s, RSS ${JSON.stringify(r.rss)}`);
  return r;
}

async function main() {
  const hard = setTimeout(() => {
    log(`hard limit of ${HARD_LIMIT_S} s reached: aborting`);
    cleanup().finally(() => process.exit(3));
  }, HARD_LIMIT_S * 1000);
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} missing: run \`npm run build\``);
  const withSkopeo = onPath('skopeo');
  if (!withSkopeo) log('skopeo is not on PATH: measuring regmirror import alone');
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-bench-import-'));
  tempDirs.push(root);
  log(`writing ${ARCHIVES} archives of ${ARCHIVE_MIB} MiB`);
  const archives = [];
  for (let i = 0; i < ARCHIVES; i++) archives.push(await writeArchive(root, i));
  const bundle = MODE === 'bundle' ? await writeBundle(root, archives) : null;
  const totalBytes = archives.reduce((n, a) => n + a.bytes, 0);

  const methods = withSkopeo ? ['regmirror-import', 'skopeo-copy'] : ['regmirror-import'];
  const runs = [];
  for (let rep = 0; rep < REPS; rep++) {
    const order = rep % 2 === 0 ? methods : [...methods].reverse();
    for (const m of order) runs.push(await measure(m, root, rep, archives, bundle));
  }
  const summary = {};
  for (const m of methods) {
    const mine = runs.filter((r) => r.method === m);
    summary[m] = {
      medianSeconds: median(mine.map((r) => r.seconds)),
      medianMBps: Math.round((totalBytes / MIB / median(mine.map((r) => r.seconds))) * 10) / 10,
      medianServerCpuSeconds: median(mine.map((r) => r.serverCpuSeconds)),
      medianRssGrowthMiB: median(mine.map((r) => Math.round((r.rss.peakMiB - r.rss.startMiB) * 10) / 10)),
    };
  }
  const speedup = summary['skopeo-copy'] ? Math.round((summary['skopeo-copy'].medianSeconds / summary['regmirror-import'].medianSeconds) * 100) / 100 : null;
  const meta = {
    date: new Date().toISOString(),
    node: process.version,
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '?' },
    regmirror: versionOf('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']),
    skopeo: withSkopeo ? versionOf('skopeo', ['--version']) : null,
    settings: { archives: ARCHIVES, archiveMiB: ARCHIVE_MIB, totalMiB: Math.round(totalBytes / MIB), reps: REPS, mode: MODE },
    loadavgAfter: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
  const out = { meta, summary, speedupVsSkopeo: speedup, runs };
  fs.mkdirSync(RESULTS, { recursive: true });
  fs.writeFileSync(path.join(RESULTS, `${meta.date.slice(0, 10)}-import.json`), `${JSON.stringify(out, null, 2)}\n`);
  const row = (m, s) => `| ${m} | ${s.medianSeconds} | ${s.medianMBps} | ${s.medianServerCpuSeconds} | ${s.medianRssGrowthMiB} |`;
  const md = [
    '# Import benchmark',
    '',
    `${meta.date}, node ${meta.node}, ${meta.machine.cpus} x ${meta.machine.cpuModel}, regmirror ${meta.regmirror}, ${meta.skopeo ?? 'no skopeo'}.`,
    `${ARCHIVES} two-platform OCI archives, ${meta.settings.totalMiB} MiB in all, into a fresh server per run; regmirror as one ${MODE} POST, skopeo as \`copy --all oci-archive:\` per archive. Medians of ${REPS} interleaved runs; load average after: ${meta.loadavgAfter.join(' ')}.`,
    '',
    '| method | wall s | MB/s | server CPU s | server RSS growth MiB |',
    '|---|---:|---:|---:|---:|',
    ...methods.map((m) => row(m, summary[m])),
    '',
    speedup === null ? '' : `regmirror import is **${speedup}x** as fast as skopeo copy (aim: at least 1.5x).`,
    '',
  ].join('\n');
  fs.writeFileSync(path.join(RESULTS, 'latest-import.md'), md);
  console.log(md);
  clearTimeout(hard);
}

installExitHandlers();
main()
  .catch((e) => {
    log(`failed: ${e.stack ?? e}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
