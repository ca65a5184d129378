#!/usr/bin/env node
/**
 * Metadata hot-read latency: the PostgreSQL driver over its pool vs the local driver
 * (db.ts, SQLite, behind the same async call shape), on the same data, in one run.
 *
 *   npm run build && npm run build:test && node bench/metadata.mjs
 *
 * Starts a throwaway PostgreSQL (test/helpers/postgres.ts, fsync off as in tests), seeds
 * 200 repositories x 5 tags (a manifest and 3 blobs each) into both drivers, then times
 * the calls a manifest or blob request makes: tag (manifest by tag), manifest (by digest),
 * repoBlobSize (blob HEAD/GET), blobSize. Sequential (latency: p50/p99 per call) and 16
 * in flight (throughput). Writes bench/results/latest-metadata.md.
 * Settings (env): BENCH_CALLS (3000 per operation), BENCH_RESULTS_DIR.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HERE, envNum, median, sha256 } from './lib.mjs';

const BUILD = path.resolve(HERE, '..', 'build');
const { startPostgres } = await import(path.join(BUILD, 'test/helpers/postgres.js'));
const { createPool } = await import(path.join(BUILD, 'src/storage/pg/pool.js'));
const { PgMetadataStore } = await import(path.join(BUILD, 'src/storage/pg/metadata.js'));
const { MetadataStore: SqliteDb } = await import(path.join(BUILD, 'src/storage/db.js'));

const CALLS = envNum('BENCH_CALLS', 3000, 100, 1_000_000);
const RESULTS = process.env.BENCH_RESULTS_DIR ?? path.join(HERE, 'results');
const digest = sha256;

const cleanups = [];
const cluster = await startPostgres({ teardown: (fn) => cleanups.push(fn) });
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-benchmeta-'));
try {
  const pool = createPool({ url: await cluster.createDatabase('bench'), host: null, port: 5432, database: null, user: null, password: null, poolSize: 16, statementTimeoutMs: 30_000, connectTimeoutMs: 5_000, ssl: null });
  const pg = await PgMetadataStore.open(pool);
  const sqlite = new SqliteDb(path.join(dir, 'regmirror.db'));
  // The local driver's shape: each db.ts call behind an async method (one microtask).
  const local = {
    tag: async (r, t) => sqlite.tag(r, t),
    manifest: async (r, d) => sqlite.manifest(r, d),
    repoBlobSize: async (r, d) => sqlite.repoBlobSize(r, d),
    blobSize: async (d) => sqlite.blobSize(d),
  };

  const keys = [];
  for (let r = 0; r < 200; r++) {
    const repo = `bench/repo${r}`;
    for (let t = 0; t < 5; t++) {
      const blobs = [0, 1, 2].map((b) => digest(`${r}/${t}/${b}`));
      const body = Buffer.from(JSON.stringify({ r, t, blobs, pad: 'x'.repeat(1500) }));
      const m = { digest: digest(body.toString()), mediaType: 'application/vnd.oci.image.manifest.v1+json', size: body.length, artifactType: null, subject: null, annotations: null, body, refs: blobs.map((d) => ({ digest: d, kind: 'blob' })) };
      for (const [i, d] of blobs.entries()) {
        sqlite.recordBlob(repo, d, 1000 + i, 'pushed');
        await pg.recordBlob(repo, d, 1000 + i, 'pushed');
      }
      sqlite.putManifest(repo, m, [`v${t}`], 'pushed');
      await pg.putManifest(repo, m, [`v${t}`], 'pushed');
      keys.push({ repo, tag: `v${t}`, manifest: m.digest, blob: blobs[0] });
    }
  }

  const ops = {
    'tag (manifest by tag)': (s, k) => s.tag(k.repo, k.tag),
    'manifest (by digest)': (s, k) => s.manifest(k.repo, k.manifest),
    'repoBlobSize (blob HEAD/GET)': (s, k) => s.repoBlobSize(k.repo, k.blob),
    blobSize: (s, k) => s.blobSize(k.blob),
  };
  const pick = (i) => keys[(i * 7919) % keys.length];

  async function sequential(store, op) {
    for (let i = 0; i < 200; i++) await op(store, pick(i)); // warm (prepared statements, caches)
    const us = [];
    for (let i = 0; i < CALLS; i++) {
      const t0 = process.hrtime.bigint();
      const v = await op(store, pick(i));
      us.push(Number(process.hrtime.bigint() - t0) / 1000);
      if (v === undefined) throw new Error('a seeded key was not found');
    }
    us.sort((a, b) => a - b);
    return { p50: median(us), p99: us[Math.floor(us.length * 0.99)] };
  }

  async function concurrent(store, op, inFlight = 16) {
    let next = 0;
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: inFlight }, async () => {
      while (next < CALLS) await op(store, pick(next++));
    }));
    return CALLS / (Number(process.hrtime.bigint() - t0) / 1e9);
  }

  const rows = [];
  for (const [name, op] of Object.entries(ops)) {
    const l = await sequential(local, op);
    const p = await sequential(pg, op);
    const lc = await concurrent(local, op);
    const pc = await concurrent(pg, op);
    rows.push({ name, l, p, lc, pc });
    console.error(`${name}: local p50 ${l.p50.toFixed(1)} us, pg p50 ${p.p50.toFixed(1)} us`);
  }
  const f = (n) => n.toFixed(1);
  const md = [
    '# Metadata hot reads: PostgreSQL driver vs local (SQLite) driver',
    '',
    `${new Date().toISOString().slice(0, 10)}, \`node bench/metadata.mjs\`, ${CALLS} calls per operation, 1000 manifests / 3000 blobs in 200 repositories.`,
    'PostgreSQL 15 on 127.0.0.1 (throwaway cluster, fsync off), pool of 16; SQLite in WAL mode on the same disk. Same machine, same run;',
    'the machine is shared (2 cores), so compare the ratios.',
    '',
    '| call | local p50 (us) | local p99 | pg p50 (us) | pg p99 | local calls/s (16 in flight) | pg calls/s (16 in flight) |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.name} | ${f(r.l.p50)} | ${f(r.l.p99)} | ${f(r.p.p50)} | ${f(r.p.p99)} | ${Math.round(r.lc)} | ${Math.round(r.pc)} |`),
    '',
  ].join('\n');
  fs.mkdirSync(RESULTS, { recursive: true });
  fs.writeFileSync(path.join(RESULTS, 'latest-metadata.md'), md);
  console.log(md);
  sqlite.db.close();
  await pg.close();
} finally {
  for (const fn of cleanups.reverse()) await fn();
  fs.rmSync(dir, { recursive: true, force: true });
}
