/**
 * Driver conformance suite for the blob store port (src/storage/ports.ts): every driver
 * runs these same tests (test/storage/blobstore-<driver>.test.ts). What they hold a
 * driver to is the port's contract, not the local driver's files.
 */
import type { ExecutionContext, TestFn } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Digest, RepoName } from '../../src/registry/names.js';
import type { BlobBody, BlobLink, BlobStore, UploadStore } from '../../src/storage/ports.js';

export interface DriverHandle {
  store: BlobStore;
  /**
   * Drop the metadata that makes `digest` visible (what eviction and GC do before
   * `delete`; the port leaves metadata to the metadata store).
   */
  forget(digest: Digest): Promise<void>;
  /** A new store on the same storage, as after a crash and restart; the old one is dropped unclosed. */
  restart(): Promise<BlobStore>;
  /** Anything the driver keeps for stages (local: files in tmp/); empty when none is left. */
  leftovers(): Promise<string[]>;
  /** The upload sessions of the same driver, committing into `store` (uploadstore-conformance.ts). */
  uploads: UploadStore;
  /** A second store over the same storage, alive at the same time: another process or replica. */
  replica(): Promise<{ store: BlobStore; uploads: UploadStore }>;
  /** Anything the driver keeps for upload sessions (local: files in uploads/); empty when none is left. */
  uploadLeftovers(): Promise<string[]>;
}

export type DriverFactory = (t: ExecutionContext) => Promise<DriverHandle>;

const link: BlobLink = { repo: 'conformance/repo' as RepoName, provenance: 'pushed' };

export function sha256(b: Buffer): Digest {
  return `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;
}

export async function readStream(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** All of [start, end] through the positional fast path, when the body has one. */
async function readPositional(body: BlobBody, start: number, end: number): Promise<Buffer | null> {
  const r = body.positional();
  if (!r) return null;
  const out = Buffer.alloc(end - start + 1);
  for (let pos = start; pos <= end; ) {
    const buf = Buffer.alloc(Math.min(64 * 1024, end + 1 - pos));
    const n = await r.read(buf, buf.length, pos);
    if (n === 0) throw new Error(`positional read ended at ${pos}, before ${end}`);
    buf.copy(out, pos - start, 0, n);
    pos += n;
  }
  return out;
}

async function put(store: BlobStore, data: Buffer, chunk = 7919): Promise<Digest> {
  const w = store.stage({ algorithm: 'sha256' });
  for (let i = 0; i < data.length; i += chunk) await w.append(data.subarray(i, i + chunk));
  const d = sha256(data);
  await w.commit(d, link);
  return d;
}

async function listed(store: BlobStore): Promise<Array<Digest | null>> {
  const out: Array<Digest | null> = [];
  for await (const e of store.list()) out.push(e.digest);
  return out;
}

async function openOrFail(t: ExecutionContext, store: BlobStore, d: Digest): Promise<BlobBody> {
  const body = await store.open(d);
  if (!body) return t.fail(`${d} not visible`) as never;
  t.teardown(() => body.close().catch(() => undefined));
  return body;
}

export function blobStoreConformance(test: TestFn, name: string, factory: DriverFactory): void {
  const title = (s: string) => `${name}: ${s}`;

  test(title('commit makes a blob visible whole; before it nothing is (stat, open, list)'), async (t) => {
    const { store } = await factory(t);
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const d = sha256(data);
    const w = store.stage({ algorithm: 'sha256' });
    await w.append(data.subarray(0, 1024 * 1024));
    await w.flush();
    t.is(await store.stat(d), null, 'a stage is not a blob');
    t.is(await store.open(d), null);
    t.deepEqual(await listed(store), []);
    await w.append(data.subarray(1024 * 1024));
    t.is(w.received, data.length);
    t.is(w.digest(), d);
    // Readers polling while the commit runs see nothing, or everything.
    const committing = w.commit(d, link);
    let done = false;
    void committing.finally(() => (done = true));
    let seen = 0;
    for (let i = 0; i < 2000 && !done; i++) {
      const body = await store.open(d);
      if (body) {
        seen++;
        t.true((await readStream(body.stream(0, data.length - 1))).equals(data), 'a visible blob is complete');
        t.is(await (body.positional()?.read(Buffer.alloc(1), 1, data.length) ?? 0), 0, 'and no longer');
        await body.close();
      }
    }
    await committing;
    t.deepEqual(await store.stat(d), { size: data.length });
    const body = await openOrFail(t, store, d);
    t.true((await readStream(body.stream(0, data.length - 1))).equals(data));
    t.deepEqual(await listed(store), [d]);
    t.log(`visible ${seen} times while the commit ran`);
  });

  test(title('appendStream: the same blob from a stream, size limit refused with 413'), async (t) => {
    const { store, leftovers } = await factory(t);
    const data = randomBytes(2 * 1024 * 1024 + 3);
    const w = store.stage({ algorithm: 'sha256', maxBytes: data.length, expectedBytes: data.length });
    await w.appendStream(Readable.from([data.subarray(0, 1000), data.subarray(1000)]));
    t.is(w.received, data.length);
    await w.commit(sha256(data), link);
    t.true((await readStream((await openOrFail(t, store, sha256(data))).stream(0, data.length - 1))).equals(data));
    const big = store.stage({ algorithm: 'sha256', maxBytes: 1024 });
    const e = await t.throwsAsync(big.appendStream(Readable.from([randomBytes(4096), randomBytes(4096)])));
    t.is((e as { code?: string }).code, 'SIZE_INVALID');
    await big.abort();
    t.deepEqual(await leftovers(), [], 'the refused stage left nothing');
  });

  test(title('concurrent commits of the same digest both succeed and leave one blob'), async (t) => {
    const { store, leftovers } = await factory(t);
    const data = randomBytes(2 * 1024 * 1024);
    const d = sha256(data);
    const writers = [0, 1, 2].map(() => store.stage({ algorithm: 'sha256' }));
    for (const w of writers) await w.append(data);
    await Promise.all(writers.map((w) => w.commit(d, link)));
    t.deepEqual(await listed(store), [d], 'one blob');
    t.deepEqual(await store.stat(d), { size: data.length });
    t.true((await readStream((await openOrFail(t, store, d)).stream(0, data.length - 1))).equals(data));
    // And once more after it is stored (the dedupe path).
    await put(store, data);
    t.deepEqual(await listed(store), [d]);
    t.deepEqual(await leftovers(), []);
  });

  test(title('a commit with the wrong digest is refused with DIGEST_INVALID and leaves nothing'), async (t) => {
    const { store, leftovers } = await factory(t);
    const data = randomBytes(100_000);
    const wrong = sha256(Buffer.from('something else'));
    const w = store.stage({ algorithm: 'sha256' });
    await w.append(data);
    const e = await t.throwsAsync(w.commit(wrong, link));
    t.is((e as { code?: string }).code, 'DIGEST_INVALID');
    t.is(await store.stat(wrong), null);
    t.is(await store.stat(sha256(data)), null);
    t.deepEqual(await listed(store), []);
    t.deepEqual(await leftovers(), []);
    await w.abort(); // harmless after a failed commit
  });

  test(title('range reads: whole, first byte, last byte, middle, single-byte and empty blobs'), async (t) => {
    const { store } = await factory(t);
    const data = randomBytes(5 * 1024 * 1024 + 1);
    const d = await put(store, data, 1 << 20);
    t.deepEqual(await store.stat(d), { size: data.length });
    const body = await openOrFail(t, store, d);
    const last = data.length - 1;
    for (const [s, e] of [[0, last], [0, 0], [last, last], [1, 1], [1024 * 1024 - 1, 1024 * 1024], [12345, 4 * 1024 * 1024 + 7]] as const) {
      t.true((await readStream(body.stream(s, e))).equals(data.subarray(s, e + 1)), `stream ${s}-${e}`);
      const p = await readPositional(body, s, e);
      if (p) t.true(p.equals(data.subarray(s, e + 1)), `positional ${s}-${e}`);
    }
    const r = body.positional();
    if (r) t.is(await r.read(Buffer.alloc(16), 16, data.length), 0, 'a positional read at the end reads nothing');
    const one = Buffer.from('x');
    t.true((await readStream((await openOrFail(t, store, await put(store, one))).stream(0, 0))).equals(one));
    const empty = await put(store, Buffer.alloc(0));
    t.deepEqual(await store.stat(empty), { size: 0 });
    await openOrFail(t, store, empty);
  });

  test(title('delete while reading: an opened body reads the complete, right bytes; open after the delete is null'), async (t) => {
    const { store, forget } = await factory(t);
    const data = randomBytes(6 * 1024 * 1024);
    const d = await put(store, data);
    const body = await openOrFail(t, store, d);
    const stream = body.stream(0, data.length - 1);
    const it = stream[Symbol.asyncIterator]();
    const first = await it.next();
    await forget(d);
    await store.delete(d);
    t.is(await store.stat(d), null);
    t.is(await store.open(d), null, 'gone for new readers');
    t.deepEqual(await listed(store), []);
    const parts = [first.value as Buffer];
    for (let n = await it.next(); !n.done; n = await it.next()) parts.push(n.value as Buffer);
    t.true(Buffer.concat(parts).equals(data), 'the reader that had it open finished with the right bytes');
    const p = await readPositional(body, 0, data.length - 1);
    if (p) t.true(p.equals(data), 'positional reads too');
    // The digest can be stored again afterwards.
    await put(store, data);
    t.true((await readStream((await openOrFail(t, store, d)).stream(0, data.length - 1))).equals(data));
  });

  test(title('a commit racing a delete of the same digest keeps the new content'), async (t) => {
    const { store, forget } = await factory(t);
    const data = randomBytes(1024 * 1024);
    const d = await put(store, data);
    const w = store.stage({ algorithm: 'sha256' });
    await w.append(data);
    await w.flush();
    await forget(d);
    const deleting = store.delete(d);
    await w.commit(d, link);
    await deleting;
    t.true((await readStream((await openOrFail(t, store, d)).stream(0, data.length - 1))).equals(data));
    t.deepEqual(await listed(store), [d]);
  });

  test(title('crash before commit: the abandoned stage is never visible, and recover() removes it'), async (t) => {
    const { store, restart, leftovers } = await factory(t);
    const kept = await put(store, randomBytes(1000));
    const data = randomBytes(2 * 1024 * 1024);
    const w = store.stage({ algorithm: 'sha256' });
    await w.append(data);
    await w.flush(); // the bytes reached the stage; then the process "dies"
    t.teardown(() => w.abort()); // only to release what the dead process held
    t.notDeepEqual(await leftovers(), [], 'the stage holds something before the restart');
    const again = await restart();
    await again.recover();
    t.is(await again.stat(sha256(data)), null);
    t.is(await again.open(sha256(data)), null);
    t.deepEqual(await listed(again), [kept], 'only committed content is listed');
    t.deepEqual(await leftovers(), [], 'recover() removed the abandoned stage');
    t.deepEqual(await again.stat(kept), { size: 1000 }, 'committed content survives the restart');
  });

  test(title('abort drops a stage; reading a stage follows it into the committed blob'), async (t) => {
    const { store, leftovers } = await factory(t);
    const dropped = store.stage({ algorithm: 'sha256' });
    await dropped.append(randomBytes(4096));
    await dropped.abort();
    t.deepEqual(await listed(store), []);
    t.deepEqual(await leftovers(), []);

    const data = randomBytes(1024 * 1024 + 5);
    const w = store.stage({ algorithm: 'sha256' });
    let written = 0;
    w.onWritten = (n) => (written += n);
    await w.append(data.subarray(0, 4096));
    await w.flush();
    t.is(written, 4096, 'onWritten counts what reached the stage');
    const early = await w.reader();
    const head = Buffer.alloc(4096);
    t.is(await early.read(head, 4096, 0), 4096);
    t.true(head.equals(data.subarray(0, 4096)), 'a stage can be read back while it is written');
    await w.append(data.subarray(4096));
    await w.commit(sha256(data), link);
    const late = await w.reader();
    const all = Buffer.alloc(data.length);
    let pos = 0;
    while (pos < data.length) pos += await late.read(all.subarray(pos), data.length - pos, pos);
    t.true(all.equals(data), 'after the commit it reads the committed blob');
    await early.close();
    await late.close();
  });

  test(title('seal: ends the appends, reports what was written, and the stage can still be read, committed or aborted'), async (t) => {
    const { store, leftovers } = await factory(t);
    const data = randomBytes(2 * 1024 * 1024 + 9);
    const w = store.stage({ algorithm: 'sha256', maxBytes: data.length });
    await w.appendStream(Readable.from([data.subarray(0, 5000), data.subarray(5000)]));
    const sealed = await w.seal();
    t.deepEqual(sealed, { digest: sha256(data), size: data.length });
    t.is(w.seal(), w.seal(), 'sealing again is the same outcome');
    await t.throwsAsync(w.append(Buffer.from('late')), undefined, 'no append after seal');
    t.is(await store.stat(sealed.digest), null, 'sealed is not committed');
    const r = await w.reader();
    const head = Buffer.alloc(5000);
    t.is(await r.read(head, 5000, 0), 5000);
    await r.close();
    t.true(head.equals(data.subarray(0, 5000)), 'a sealed stage reads back');
    await w.commit(sealed.digest, link);
    t.true((await readStream((await openOrFail(t, store, sealed.digest)).stream(0, data.length - 1))).equals(data));
    const dropped = store.stage({ algorithm: 'sha256' });
    await dropped.append(randomBytes(100_000));
    await dropped.seal();
    await dropped.abort();
    const wrong = store.stage({ algorithm: 'sha256' });
    await wrong.append(randomBytes(1000));
    await wrong.seal();
    t.is((await t.throwsAsync<Error & { code?: string }>(wrong.commit(sha256(data), link)))?.code, 'DIGEST_INVALID');
    t.deepEqual(await listed(store), [sealed.digest]);
    t.deepEqual(await leftovers(), [], 'aborted and refused sealed stages left nothing');
  });

  test(title('list() names every blob once, by digest'), async (t) => {
    const { store } = await factory(t);
    const digests = new Set<Digest>();
    for (let i = 0; i < 40; i++) digests.add(await put(store, randomBytes(10 + i)));
    const got = await listed(store);
    t.is(got.length, digests.size);
    t.deepEqual([...got].sort(), [...digests].sort());
  });

  test(title('verify() hashes stored content; null when it is missing'), async (t) => {
    const { store, forget } = await factory(t);
    const data = randomBytes(300_000);
    const d = await put(store, data);
    t.deepEqual(await store.verify(d), { digest: d, size: data.length });
    await forget(d);
    await store.delete(d);
    t.is(await store.verify(d), null);
  });
}
