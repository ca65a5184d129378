// S3 blob driver throughput against a throwaway Ceph RADOS Gateway (issue #13), with the
// local driver as reference on the same machine in the same run: a 256 MiB
// stage+commit (64 KiB appends, as from a socket) and a 256 MiB open/stream, MB/s and
// this process's CPU seconds; peak RSS while staging (sampled every 20 ms); and a 256 MiB
// push as an upload session (one streamed chunk, then finish).
// Needs `npm run build && npm run build:test` (the cluster helper is a test helper).
// Usage: node bench/s3-blobs.mjs [MiB=256] [partMiB=16]
import { randomBytes, createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { S3BlobStore } from '../dist/storage/s3/store.js';
import { S3UploadStore } from '../dist/storage/s3/uploads.js';
import { LocalUploadStore } from '../dist/storage/uploads.js';
import { LocalBlobStore } from '../dist/storage/blobs.js';
import { MetadataStore } from '../dist/storage/db.js';
import { LocalMetadataStore } from '../dist/storage/local/metadata.js';
import { storagePaths } from '../dist/storage/paths.js';
import { startRadosgw } from '../build/test/helpers/radosgw.js';

const MiB = 1024 * 1024;
const total = Number(process.argv[2] ?? 256) * MiB;
const partSize = Number(process.argv[3] ?? 16) * MiB;
const block = randomBytes(MiB);
const CHUNK = 64 * 1024;
const link = { repo: 'bench/repo', provenance: 'cached' };

function digestOf() {
  const h = createHash('sha256');
  for (let off = 0; off < total; off += MiB) h.update(block.subarray(0, Math.min(MiB, total - off)));
  return `sha256:${h.digest('hex')}`;
}

async function measure(fn) {
  let peak = process.memoryUsage().rss;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await fn();
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  clearInterval(timer);
  peak = Math.max(peak, process.memoryUsage().rss);
  return { seconds: +s.toFixed(2), MBps: +(total / 1e6 / s).toFixed(1), cpuSeconds: +((cpu.user + cpu.system) / 1e6).toFixed(2), peakRssMiB: Math.round(peak / MiB) };
}

async function run(name, store, digest) {
  if (global.gc) global.gc();
  const rssBefore = Math.round(process.memoryUsage().rss / MiB);
  let commitSeconds = 0;
  const stage = await measure(async () => {
    const w = store.stage({ algorithm: 'sha256' });
    for (let off = 0; off < total; off += CHUNK) {
      const b = off % MiB;
      await w.append(block.subarray(b, b + Math.min(CHUNK, total - off)));
    }
    await w.flush();
    const t0 = Date.now();
    await w.commit(digest, link);
    commitSeconds = (Date.now() - t0) / 1000;
  });
  stage.commitSeconds = commitSeconds;
  const read = await measure(async () => {
    const body = await store.open(digest);
    let n = 0;
    for await (const c of body.stream(0, total - 1)) n += c.length;
    await body.close();
    if (n !== total) throw new Error(`read ${n} of ${total}`);
  });
  const v = await store.verify(digest);
  if (v?.digest !== digest) throw new Error('verify mismatch');
  return { driver: name, rssBeforeMiB: rssBefore, stageCommit: stage, openStream: read };
}

/** A push as one streamed PATCH then PUT (upload session append + finish) of a blob not stored yet. */
async function push(uploads) {
  const tail = Buffer.from('push');
  const h = createHash('sha256');
  for (let off = 0; off < total; off += MiB) h.update(block.subarray(0, Math.min(MiB, total - off)));
  h.update(tail);
  const d = `sha256:${h.digest('hex')}`;
  async function* body() {
    for (let off = 0; off < total; off += CHUNK) {
      const b = off % MiB;
      yield block.subarray(b, b + Math.min(CHUNK, total - off));
    }
    yield tail;
  }
  const s = await uploads.start('bench/repo');
  return measure(async () => {
    await uploads.append(s.id, Readable.from(body()), { offset: 0, maxBytes: Number.MAX_SAFE_INTEGER });
    await uploads.finish(s.id, d);
  });
}

const digest = digestOf();
const results = [];
const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-s3bench-'));
const gw = await startRadosgw();
try {
  const meta = new LocalMetadataStore(new MetadataStore(path.join(dir, 's3meta.db')));
  const s3 = new S3BlobStore({ endpoint: gw.endpoint, region: gw.region, bucket: 'bench', prefix: 'regmirror', accessKeyId: gw.accessKeyId, secretAccessKey: gw.secretAccessKey, partSize }, meta);
  await s3.recover();
  results.push(await run(`s3 (radosgw memstore, ${partSize / MiB} MiB parts)`, s3, digest));
  results.push({ driver: 's3 upload session (one streamed chunk, then finish)', appendFinish: await push(new S3UploadStore(s3, meta)) });
  s3.close();
  await meta.close();
  await fs.mkdir(path.join(dir, 'local'));
  const paths = storagePaths(path.join(dir, 'local'));
  const lmeta = new MetadataStore(paths.db);
  const local = new LocalBlobStore(paths, lmeta);
  await local.recover();
  results.push(await run('local (reference)', local, digest));
  results.push({ driver: 'local upload session (reference)', appendFinish: await push(new LocalUploadStore(paths, lmeta, local)) });
  lmeta.close();
} finally {
  await gw.stop();
  await fs.rm(dir, { recursive: true, force: true });
}
console.log(JSON.stringify({ bytes: total, node: process.version, cpus: os.cpus().length, results }, null, 2));
