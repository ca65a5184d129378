/**
 * The blob store conformance suite against the S3 driver on a real Ceph RADOS Gateway
 * (test/helpers/radosgw.ts: one throwaway cluster for this file, a fresh bucket per test),
 * plus what only this driver can show: multipart boundaries, a failed assembly leaving
 * nothing, the store going away and coming back (503, no restart), credentials kept out
 * of errors, stages of other replicas left alone by recover(), presigned redirects, upload
 * sessions on S3 and a pull-through fill on S3.
 * Over ~400 lines on purpose: one Ceph cluster per test file (~7 s and ~200 MB to start),
 * so the S3 driver's tests share this file rather than start a second cluster.
 */
import { DeleteObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import pino from 'pino';
import { FillManager } from '../../src/cache/fill.js';
import type { RepoName } from '../../src/registry/names.js';
import { MetadataDb } from '../../src/storage/db.js';
import { LocalMetadataStore } from '../../src/storage/local/metadata.js';
import { partInput, sendPart } from '../../src/storage/s3/partbuf.js';
import { S3BlobStore, type S3BlobStoreOptions } from '../../src/storage/s3/store.js';
import { S3UploadStore } from '../../src/storage/s3/uploads.js';
import { type Radosgw, radosgwMissing, startRadosgw } from '../helpers/radosgw.js';
import { tempDir } from '../helpers/server.js';
import { waitFor } from '../helpers/tools.js';
import { type DriverFactory, blobStoreConformance, readStream as read, sha256 } from './blobstore-conformance.js';
import { uploadStoreConformance } from './uploadstore-conformance.js';

const PART = 5 * 1024 * 1024; // S3's minimum: the smallest blobs that span parts
const link = { repo: 'conformance/repo' as RepoName, provenance: 'pushed' as const };

let gw: Radosgw | null = null;
let bucketNo = 0;

/** A store on a new bucket with its own SQLite metadata; `more` overrides options. */
async function s3Store(t: ExecutionContext, more: Partial<S3BlobStoreOptions> = {}) {
  const g = gw!;
  const dir = await tempDir(t, 'regmirror-s3meta-');
  const metaPath = `${dir}/meta.db`;
  const metas: LocalMetadataStore[] = [];
  const stores: S3BlobStore[] = [];
  const opts: S3BlobStoreOptions = {
    endpoint: g.endpoint,
    region: g.region,
    bucket: `b${process.pid}-${++bucketNo}`,
    prefix: 'mirror/one',
    accessKeyId: g.accessKeyId,
    secretAccessKey: g.secretAccessKey,
    partSize: PART,
    staleStageMs: 0,
    ...more,
  };
  const open = (o: Partial<S3BlobStoreOptions> = {}) => {
    const meta = new LocalMetadataStore(new MetadataDb(metaPath));
    const store = new S3BlobStore({ ...opts, ...o }, meta);
    metas.push(meta);
    stores.push(store);
    return { meta, store, uploads: new S3UploadStore(store, meta) };
  };
  t.teardown(async () => {
    for (const s of stores) s.close();
    for (const m of metas) await m.close();
  });
  const first = open();
  await first.store.recover();
  return { ...first, opts, open };
}

/** Objects under `area` and multipart uploads in the store's bucket: what stages (or upload sessions) leave behind. */
async function pending(client: S3Client, bucket: string, area = 'stages'): Promise<string[]> {
  const objs = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `mirror/one/${area}/` }));
  const mpu = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
  return [...(objs.Contents ?? []).map((o) => o.Key!), ...(mpu.Uploads ?? []).map((u) => `multipart:${u.Key}`)];
}

const s3: DriverFactory = async (t) => {
  const first = await s3Store(t);
  let current = first;
  return {
    store: first.store,
    forget: async (d) => current.meta.deleteBlobRow(d),
    restart: async () => {
      current = { ...first, ...first.open() }; // the old store and metadata handle stay open, as after a SIGKILL
      return current.store;
    },
    leftovers: () => pending(first.store.client, first.opts.bucket),
    uploads: first.uploads,
    replica: async () => {
      const other = first.open(); // the same bucket and metadata file, as a second process
      return { store: other.store, uploads: other.uploads };
    },
    uploadLeftovers: () => pending(first.store.client, first.opts.bucket, 'uploads'),
  };
};

const missing = radosgwMissing();
if (missing) {
  test.skip(`s3: ${missing}`, () => undefined);
} else {
  test.before(async () => {
    gw = await startRadosgw();
  });
  test.after.always(async () => {
    await gw?.stop();
  });

  blobStoreConformance(test, 's3', s3);
  uploadStoreConformance(test, 's3', s3);

  test('s3: multipart boundaries: empty, under a part, exactly one part, one part and a byte, exactly two parts', async (t) => {
    const { store, opts } = await s3Store(t);
    for (const size of [0, 1000, PART, PART + 1, 2 * PART, 2 * PART + 3]) {
      const data = randomBytes(size);
      const w = store.stage({ algorithm: 'sha256' });
      for (let i = 0; i < size; i += 999_983) await w.append(data.subarray(i, i + 999_983));
      if (size === PART) await w.flush(); // one flushed part: the copy path, not the in-memory PUT
      await w.commit(sha256(data), link);
      t.deepEqual(await store.stat(sha256(data)), { size }, `stat ${size}`);
      const body = await store.open(sha256(data));
      t.truthy(body, `open ${size}`);
      if (size > 0) {
        t.true((await read(body!.stream(0, size - 1))).equals(data), `content ${size}`);
        t.true((await read(body!.stream(PART - 2 < size ? PART - 2 : 0, size - 1))).equals(data.subarray(PART - 2 < size ? PART - 2 : 0)), `range across a part edge ${size}`);
      }
      await body!.close();
      t.deepEqual(await store.verify(sha256(data)), { digest: sha256(data), size }, `verify ${size}`);
    }
    t.deepEqual(await pending(store.client, opts.bucket), [], 'no stage object or multipart upload left');
  });

  test('s3: a stage keeps about two parts in memory: append waits while a part is in flight', async (t) => {
    const { store } = await s3Store(t);
    const w = store.stage({ algorithm: 'sha256' });
    const chunk = randomBytes(PART);
    let written = 0;
    w.onWritten = (n) => (written += n);
    for (let i = 0; i < 6; i++) {
      await w.append(chunk);
      // After the i-th full part, at most the part in flight is not written yet.
      t.true(w.received - w.written <= 2 * PART, `received ${w.received}, written ${w.written}`);
    }
    await w.flush();
    t.is(w.written, 6 * PART);
    t.is(written, 6 * PART, 'onWritten counted every part');
    await w.abort();
  });

  test('s3: every PUT of content is streamed and signed with the SHA-256 hashed as its bytes arrived, and the store refuses a wrong one', async (t) => {
    const { store, uploads, opts } = await s3Store(t);
    // The signed request as it goes out (deserialize step: after signing, before sending).
    const puts: { hash: string; length: number; streamed: boolean }[] = [];
    store.client.middlewareStack.add(
      (next) => async (args) => {
        const req = args.request as { method?: string; headers: Record<string, string>; body?: unknown };
        const length = Number(req.headers['content-length']);
        if (req.method === 'PUT' && length > 0) puts.push({ hash: req.headers['x-amz-content-sha256'] ?? '', length, streamed: req.body instanceof Readable });
        return next(args);
      },
      { step: 'deserialize', priority: 'low', name: 'testRecordPuts' },
    );
    const data = randomBytes(2 * PART + 1234);
    // A fill, one that stays in memory, an upload chunk over two parts.
    const w = store.stage({ algorithm: 'sha256' });
    for (let i = 0; i < data.length; i += 999_983) await w.append(data.subarray(i, i + 999_983));
    await w.commit(sha256(data), link);
    t.true((await read((await store.open(sha256(data)))!.stream(0, data.length - 1))).equals(data));
    const small = store.stage({ algorithm: 'sha256' });
    await small.append(data.subarray(0, 1000));
    await small.commit(sha256(data.subarray(0, 1000)), link);
    const s = await uploads.start(link.repo);
    await uploads.append(s.id, Readable.from([data.subarray(0, PART), data.subarray(PART)]), { offset: 0, maxBytes: data.length });
    t.deepEqual(
      puts.map((p) => p.length),
      [PART, PART, 1234, 1000, PART, PART, 1234],
      'content PUTs: 3 stage parts, one small blob, 3 upload parts',
    );
    // Every one carried a real payload hash (not UNSIGNED-PAYLOAD) the store accepted,
    // and the store checks it (below): so each was the hash of exactly the bytes sent.
    for (const [i, p] of puts.entries()) {
      t.regex(p.hash, /^[0-9a-f]{64}$/, `PUT ${i + 1} signed with a payload hash`);
      t.true(p.streamed, `PUT ${i + 1} streamed from its slabs`);
    }
    const body = data.subarray(0, 1000);
    const wrongHash = sha256(data.subarray(1, 1001)).slice('sha256:'.length);
    const e = await t.throwsAsync(sendPart(store.client, new PutObjectCommand({ Bucket: opts.bucket, Key: 'mirror/one/stages/x/00001', ...partInput({ chunks: [body], length: 1000, sha256: wrongHash }) })));
    t.regex(`${(e as Error).name} ${(e as Error).message}`, /SHA256|Mismatch|BadDigest/i);
  });

  test('s3: a failed assembly is aborted: no blob object, no multipart upload, no stage objects', async (t) => {
    const { store, opts } = await s3Store(t);
    const data = randomBytes(3 * PART + 10);
    const w = store.stage({ algorithm: 'sha256' });
    await w.append(data);
    await w.flush();
    const staged = await pending(store.client, opts.bucket);
    t.is(staged.length, 4, 'four stage objects');
    // Part 2 disappears before the commit: its UploadPartCopy fails midway through the assembly.
    const second = staged.find((k) => k.endsWith('/00002'))!;
    await store.client.send(new DeleteObjectCommand({ Bucket: opts.bucket, Key: second }));
    const e = await t.throwsAsync(w.commit(sha256(data), link));
    t.is((e as { status?: number }).status, 503);
    t.is(await store.stat(sha256(data)), null);
    t.is(await store.open(sha256(data)), null, 'no object at the blob key');
    t.deepEqual(await pending(store.client, opts.bucket), [], 'multipart upload aborted, stage objects removed');
  });

  test('s3: a range read started after the object is gone fails with an error, never empty or short bytes', async (t) => {
    const { store, meta } = await s3Store(t);
    const data = randomBytes(PART + 3);
    const w = store.stage({ algorithm: 'sha256' });
    await w.append(data);
    await w.commit(sha256(data), link);
    const body = (await store.open(sha256(data)))!;
    t.true((await read(body.stream(0, 9))).equals(data.subarray(0, 10)));
    await meta.deleteBlobRow(sha256(data));
    await store.delete(sha256(data));
    const e = await t.throwsAsync(read(body.stream(0, data.length - 1)));
    t.is((e as NodeJS.ErrnoException).code, 'ENOENT');
    await body.close();
  });

  test('s3: a commit of a digest whose object is being deleted waits for the delete (the new object is kept)', async (t) => {
    const { store, meta } = await s3Store(t);
    const data = randomBytes(100_000);
    const d = sha256(data);
    const first = store.stage({ algorithm: 'sha256' });
    await first.append(data);
    await first.commit(d, link);
    // Once armed, the DELETE of the blob's key is held until a write to that key is done
    // (which the store must not do meanwhile) or 3 s pass (a store that did not wait
    // would write within that time).
    const client = store.client as unknown as { send: (cmd: { input?: { Key?: string } }, ...rest: unknown[]) => Promise<unknown> };
    const send = client.send.bind(client);
    let armed = false;
    let wrote!: () => void;
    const written = new Promise<void>((r) => (wrote = r));
    client.send = async (cmd, ...rest) => {
      const ours = armed && cmd.input?.Key === store.blobKey(d);
      if (ours && cmd.constructor.name === 'DeleteObjectCommand') await Promise.race([written, new Promise((r) => setTimeout(r, 3000))]);
      const res = await send(cmd, ...rest);
      if (ours && /^(PutObject|CopyObject|CompleteMultipartUpload)Command$/.test(cmd.constructor.name)) wrote();
      return res;
    };
    const second = store.stage({ algorithm: 'sha256' });
    await second.append(data);
    armed = true;
    await meta.deleteBlobRow(d); // eviction: row first, then the object
    const deleting = store.delete(d);
    await second.commit(d, link);
    await deleting;
    t.deepEqual(await store.stat(d), { size: data.length });
    const body = await store.open(d);
    t.truthy(body, 'the committed object is there');
    t.true((await read(body!.stream(0, data.length - 1))).equals(data));
  });

  test('s3: uploads: a chunk over a part is a multipart upload; one cut off midway (client gone) leaves no object and no multipart upload', async (t) => {
    const { store, uploads, opts } = await s3Store(t);
    const data = randomBytes(2 * PART + 5);
    const s = await uploads.start(link.repo);
    const head = data.subarray(0, 1000);
    t.is(await uploads.append(s.id, Readable.from([head]), { maxBytes: data.length }), 1000);
    async function* cut(): AsyncGenerator<Buffer> {
      yield data.subarray(1000, 1000 + PART);
      yield data.subarray(1000 + PART, 1000 + PART + 100_000);
      throw new Error('client went away');
    }
    const e = await t.throwsAsync(uploads.append(s.id, Readable.from(cut()), { offset: 1000, maxBytes: data.length }));
    t.is((e as { code?: string }).code, 'BLOB_UPLOAD_INVALID');
    t.is((await uploads.status(s.id))?.offset, 1000, 'the cut chunk is not counted');
    t.deepEqual(await pending(store.client, opts.bucket, 'uploads'), [`mirror/one/uploads/${s.id}/0000000000000000`], 'only the first chunk; the multipart upload was aborted');
    t.is(await uploads.append(s.id, Readable.from([data.subarray(1000, PART), data.subarray(PART)]), { offset: 1000, length: data.length - 1000, maxBytes: data.length }), data.length);
    t.deepEqual(await uploads.finish(s.id, sha256(data)), { size: data.length });
    t.true((await read((await store.open(sha256(data)))!.stream(0, data.length - 1))).equals(data));
    t.deepEqual(await pending(store.client, opts.bucket, 'uploads'), []);
  });

  test('s3: a pull-through fill on S3: a reader behind the memory window reads the stage objects, then the committed blob', async (t) => {
    const { store } = await s3Store(t);
    const data = randomBytes(3 * PART + 17);
    const d = sha256(data);
    let releaseLast!: () => void;
    const last = new Promise<void>((r) => (releaseLast = r));
    const source = {
      async open() {
        async function* body(): AsyncGenerator<Buffer> {
          for (let i = 0; i < 3 * PART; i += 256 * 1024) yield data.subarray(i, i + 256 * 1024);
          await last; // the fill holds here until the late reader has read from the stage
          yield data.subarray(3 * PART);
        }
        return { size: data.length, body: body() };
      },
    };
    const fills = new FillManager(store, pino({ level: 'silent' }), Number.MAX_SAFE_INTEGER);
    const f = fills.fill(d, link.repo, 'up|conformance/repo', source);
    await waitFor(() => (f.written >= 3 * PART ? true : undefined), 60_000, 'three parts in stage objects');
    const it = f.reader(0, data.length - 1)[Symbol.asyncIterator]();
    const got: Buffer[] = [];
    let n = 0;
    while (n < PART + 1) {
      const r = await it.next();
      if (r.done) break;
      got.push(r.value as Buffer);
      n += (r.value as Buffer).length;
    }
    t.is(f.state, 'streaming', 'read from the stage while the fill is open');
    releaseLast();
    for (let r = await it.next(); !r.done; r = await it.next()) got.push(r.value as Buffer);
    t.true(Buffer.concat(got).equals(data), 'the late reader got every byte right');
    await f.done;
    t.deepEqual(await store.stat(d), { size: data.length });
    const late = await f.stage.reader();
    const buf = Buffer.alloc(1000);
    t.is(await late.read(buf, 1000, 2 * PART), 1000);
    t.true(buf.equals(data.subarray(2 * PART, 2 * PART + 1000)), 'after the commit the stage reads the committed blob');
  });

  test('s3: uploads: chunks that can be parts are copied server-side (one chunk, several), and only bytes that were hashed are committed', async (t) => {
    const { store, uploads, opts } = await s3Store(t);
    const copies: string[] = [];
    const client = store.client as unknown as { send: (cmd: { input?: { Key?: string; CopySource?: string } }, ...rest: unknown[]) => Promise<unknown> };
    const send = client.send.bind(client);
    let beforeCopy: ((source: string) => Promise<void>) | null = null;
    client.send = async (cmd, ...rest) => {
      const source = cmd.input?.CopySource;
      if (source?.includes('/uploads/')) {
        copies.push(cmd.constructor.name);
        await beforeCopy?.(source.slice(opts.bucket.length + 1));
      }
      return send(cmd, ...rest);
    };
    for (const cuts of [[2 * PART + 9], [PART, PART + 1, 77]]) {
      copies.length = 0;
      const data = randomBytes(cuts.reduce((a, b) => a + b, 0));
      const s = await uploads.start(link.repo);
      for (let off = 0, i = 0; i < cuts.length; off += cuts[i]!, i++) {
        await uploads.append(s.id, Readable.from([data.subarray(off, off + cuts[i]!)]), { offset: off, maxBytes: data.length });
      }
      t.deepEqual(await uploads.finish(s.id, sha256(data)), { size: data.length });
      t.deepEqual(copies, cuts.map(() => 'UploadPartCopyCommand'), `copied server-side: ${cuts.join('+')}`);
      t.true((await read((await store.open(sha256(data)))!.stream(0, data.length - 1))).equals(data));
    }
    // A chunk overwritten after it was hashed (a second writer on another replica): the
    // copied part's ETag is not the MD5 that was hashed, so the copy is aborted, nothing
    // becomes visible, and the next finish hashes what is stored now.
    const data = randomBytes(PART + 10);
    const s = await uploads.start(link.repo);
    await uploads.append(s.id, Readable.from([data]), { offset: 0, maxBytes: data.length });
    const evil = Buffer.from(data);
    evil[0] = evil[0]! ^ 1;
    beforeCopy = async (key) => {
      beforeCopy = null;
      await send(new PutObjectCommand({ Bucket: opts.bucket, Key: key, Body: evil }) as never);
    };
    const e = await t.throwsAsync(uploads.finish(s.id, sha256(data)));
    t.is((e as { status?: number }).status, 503, (e as Error).message);
    t.regex((e as Error).message, /CopiedPartChanged/);
    t.is(await store.open(sha256(data)), null, 'the changed chunk was not committed');
    t.is(await store.stat(sha256(data)), null);
    t.is((await t.throwsAsync(uploads.finish(s.id, sha256(data))) as { code?: string }).code, 'DIGEST_INVALID', 'the next finish hashes what is stored now');
    t.deepEqual(await pending(store.client, opts.bucket, 'uploads'), []);
  });

  test("s3: recover() leaves younger stages alone (another replica's), and that replica still commits", async (t) => {
    const a = await s3Store(t, { staleStageMs: 60 * 60 * 1000 });
    const data = randomBytes(PART + 100);
    const w = a.store.stage({ algorithm: 'sha256' });
    await w.append(data);
    await w.flush();
    const before = await pending(a.store.client, a.opts.bucket);
    t.is(before.length, 2);
    const b = a.open(); // a second replica on the same bucket, starting up
    await b.store.recover();
    t.deepEqual(await pending(a.store.client, a.opts.bucket), before, 'kept');
    await w.commit(sha256(data), link);
    t.true((await read((await b.store.open(sha256(data)))!.stream(0, data.length - 1))).equals(data), 'the other replica reads it');
    t.deepEqual(await pending(a.store.client, a.opts.bucket), []);
  });

  test('s3: list() pages through more keys than one ListObjectsV2 answer', async (t) => {
    const { store } = await s3Store(t, { listPageSize: 3 });
    const want = new Set<string>();
    for (let i = 0; i < 10; i++) {
      const data = randomBytes(50 + i);
      const w = store.stage({ algorithm: 'sha256' });
      await w.append(data);
      await w.commit(sha256(data), link);
      want.add(sha256(data));
    }
    const got: string[] = [];
    for await (const e of store.list()) got.push(e.digest!);
    t.deepEqual(got.sort(), [...want].sort());
  });

  test('s3: a presigned redirect URL serves the blob, is refused when tampered with, and expires', async (t) => {
    const { store } = await s3Store(t);
    const data = randomBytes(PART + 7);
    const w = store.stage({ algorithm: 'sha256' });
    await w.append(data);
    await w.commit(sha256(data), link);
    const url = await store.redirectUrl(sha256(data), 600);
    t.true(url.startsWith(`${gw!.endpoint}/`), url.replace(/X-Amz-Signature=[^&]+/, 'X-Amz-Signature=…'));
    t.false(url.includes(gw!.secretAccessKey), 'the secret is never in the URL');
    const ok = await fetch(url);
    t.is(ok.status, 200);
    t.true(Buffer.from(await ok.arrayBuffer()).equals(data));
    const ranged = await fetch(url, { headers: { range: 'bytes=5-9' } });
    t.is(ranged.status, 206);
    t.true(Buffer.from(await ranged.arrayBuffer()).equals(data.subarray(5, 10)));
    const sig = /X-Amz-Signature=([0-9a-f]+)/.exec(url)![1]!;
    const forged = url.replace(sig, (sig[0] === '0' ? '1' : '0') + sig.slice(1));
    const bad = await fetch(forged);
    await bad.arrayBuffer();
    t.is(bad.status, 403, 'a forged signature is refused by the store');
    const other = await fetch(url.replace(sha256(data).slice(7), sha256(Buffer.from('x')).slice(7)));
    await other.arrayBuffer();
    t.is(other.status, 403, 'the signature covers the key');
    // Expiry: valid for 2 s from its X-Amz-Date (whole seconds, so 1-2 s from now); the
    // store refuses it afterwards (polled, bounded).
    const signedAt = Date.now();
    const short = await store.redirectUrl(sha256(data), 2);
    const first = await fetch(short);
    await first.arrayBuffer();
    t.is(first.status, 200, 'valid right after signing');
    const status = await waitFor(
      async () => {
        const r = await fetch(short);
        await r.arrayBuffer();
        return r.status === 200 ? undefined : r.status;
      },
      30_000,
      'the presigned URL to expire',
      250,
    );
    t.is(status, 403);
    t.true(Date.now() - signedAt >= 1000, 'not refused before it expired');
  });

  test('s3: wrong credentials give a clear 503 that names the S3 error and carries no credentials', async (t) => {
    const g = gw!;
    const { store: good, opts } = await s3Store(t);
    const data = randomBytes(1000);
    const w = good.stage({ algorithm: 'sha256' });
    await w.append(data);
    await w.commit(sha256(data), link);
    const secret = `${g.secretAccessKey.slice(0, -4)}XXXX`;
    const dir = await tempDir(t, 'regmirror-s3meta-');
    const meta = new LocalMetadataStore(new MetadataDb(`${dir}/meta.db`));
    const bad = new S3BlobStore({ ...opts, secretAccessKey: secret, maxAttempts: 1 }, meta);
    t.teardown(async () => {
      bad.close();
      await meta.close();
    });
    for (const op of [() => bad.open(sha256(data)), () => bad.verify(sha256(data)), () => bad.recover()]) {
      const e = (await t.throwsAsync(op())) as Error & { code?: string; status?: number };
      t.is(e.code, 'UNAVAILABLE');
      t.is(e.status, 503);
      t.regex(e.message, /^object store unavailable: \w+ failed \(.*(SignatureDoesNotMatch|AccessDenied|HTTP 403)/);
      const everything = `${e.message}\n${e.stack}\n${JSON.stringify(e)}\n${String((e as { cause?: unknown }).cause)}`;
      for (const s of [g.accessKeyId, g.secretAccessKey, secret]) t.false(everything.includes(s), 'no credential in the error');
    }
  });

  // Serial: it stops the file's gateway (ava runs serial tests before the concurrent ones).
  test.serial('s3: the store going away gives clear 503s (no credentials in them), and the same store works again once it is back', async (t) => {
    const g = gw!;
    const { store } = await s3Store(t, { maxAttempts: 2, connectTimeoutMs: 2_000 });
    const kept = randomBytes(PART + 1);
    const w0 = store.stage({ algorithm: 'sha256' });
    await w0.append(kept);
    await w0.commit(sha256(kept), link);
    const w = store.stage({ algorithm: 'sha256' });
    await w.append(randomBytes(1000));
    await g.stopGateway();
    try {
      const errors: unknown[] = [];
      errors.push(await t.throwsAsync(store.open(sha256(kept))));
      errors.push(await t.throwsAsync(w.flush()));
      t.true(w.failed, 'the stage reports its write failure');
      errors.push(await t.throwsAsync(w.commit(w.digest(), link)));
      const w2 = store.stage({ algorithm: 'sha256' });
      const data2 = randomBytes(2000);
      await w2.append(data2);
      errors.push(await t.throwsAsync(w2.commit(sha256(data2), link)));
      t.is(await store.stat(sha256(data2)), null, 'a failed commit records nothing');
      for (const e of errors as Array<Error & { code?: string; status?: number }>) {
        t.is(e.code, 'UNAVAILABLE', e.message);
        t.is(e.status, 503);
        t.regex(e.message, /^object store unavailable: /);
        const everything = `${e.message}\n${e.stack}\n${JSON.stringify(e)}`;
        t.false(everything.includes(g.accessKeyId) || everything.includes(g.secretAccessKey), 'no credential in the error');
      }
    } finally {
      await g.startGateway();
    }
    const body = await store.open(sha256(kept));
    t.truthy(body, 'the same store object works again');
    t.true((await read(body!.stream(0, kept.length - 1))).equals(kept));
    const data3 = randomBytes(PART * 2 + 5);
    const w3 = store.stage({ algorithm: 'sha256' });
    await w3.append(data3);
    await w3.commit(sha256(data3), link);
    t.deepEqual(await store.verify(sha256(data3)), { digest: sha256(data3), size: data3.length });
  });
}
