/**
 * Driver conformance suite for the upload-session port (src/storage/ports.ts `UploadStore`),
 * part of the blob store suite (blobstore-conformance.ts): every driver runs these through
 * its factory. A second store over the same storage (`replica`) stands for another process
 * or replica, which must be able to carry on any session (issue #13).
 */
import type { ExecutionContext, TestFn } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import type { Digest, RepoName } from '../../src/registry/names.js';
import type { BlobStore } from '../../src/storage/ports.js';
import { type DriverFactory, readStream, sha256 } from './blobstore-conformance.js';

const repo = 'conformance/uploads' as RepoName;
const NO_LIMIT = { maxBytes: Number.MAX_SAFE_INTEGER };

function chunk(b: Buffer): Readable {
  return Readable.from([b]);
}

async function errorOf(t: ExecutionContext, p: Promise<unknown>): Promise<{ code?: string; status?: number; headers?: Record<string, string> }> {
  const e = await t.throwsAsync(p);
  return (e ?? {}) as { code?: string; status?: number; headers?: Record<string, string> };
}

async function content(t: ExecutionContext, store: BlobStore, d: Digest): Promise<Buffer> {
  const st = await store.stat(d);
  const body = await store.open(d);
  if (!st || !body) return t.fail(`${d} is not visible`) as never;
  try {
    return st.size === 0 ? Buffer.alloc(0) : await readStream(body.stream(0, st.size - 1));
  } finally {
    await body.close();
  }
}

/** Wait (bounded) until the clock moved past `ms`, so an age of 0 has expired. */
async function after(ms: number): Promise<void> {
  for (let i = 0; i < 10_000 && Date.now() <= ms; i++) await new Promise((r) => setImmediate(r));
}

export function uploadStoreConformance(test: TestFn, name: string, factory: DriverFactory): void {
  const title = (s: string) => `${name}: uploads: ${s}`;

  test(title('chunked appends at the right offsets, finish commits the blob and ends the session'), async (t) => {
    const { store, uploads, uploadLeftovers } = await factory(t);
    const data = randomBytes(3 * 1024 * 1024 + 11);
    const s = await uploads.start(repo);
    t.like(await uploads.status(s.id), { id: s.id, repo, offset: 0 });
    t.regex(s.id, /^[A-Za-z0-9._-]{1,128}$/);
    const cuts = [0, 1, 1024 * 1024, 2 * 1024 * 1024 + 5, data.length];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const part = data.subarray(cuts[i], cuts[i + 1]);
      t.is(await uploads.append(s.id, chunk(part), { offset: cuts[i]!, length: part.length, ...NO_LIMIT }), cuts[i + 1]);
      t.is((await uploads.status(s.id))?.offset, cuts[i + 1]);
    }
    t.is(await store.stat(sha256(data)), null, 'nothing visible before finish');
    t.deepEqual(await uploads.finish(s.id, sha256(data)), { size: data.length });
    t.true((await content(t, store, sha256(data))).equals(data));
    t.is(await uploads.status(s.id), null, 'the session is gone');
    t.is((await errorOf(t, uploads.append(s.id, chunk(Buffer.from('x')), NO_LIMIT))).code, 'BLOB_UPLOAD_UNKNOWN');
    t.is((await errorOf(t, uploads.finish(s.id, sha256(data)))).code, 'BLOB_UPLOAD_UNKNOWN');
    t.deepEqual(await uploadLeftovers(), []);
  });

  test(title('a wrong offset is 416 RANGE_INVALID with the session Range and changes nothing'), async (t) => {
    const { store, uploads } = await factory(t);
    const data = randomBytes(10_000);
    const s = await uploads.start(repo);
    await uploads.append(s.id, chunk(data.subarray(0, 4000)), { offset: 0, ...NO_LIMIT });
    for (const offset of [0, 3999, 4001]) {
      const e = await errorOf(t, uploads.append(s.id, chunk(data.subarray(4000)), { offset, ...NO_LIMIT }));
      t.is(e.code, 'RANGE_INVALID', `offset ${offset}`);
      t.is(e.status, 416);
      t.is(e.headers?.Range, '0-3999');
    }
    t.is((await uploads.status(s.id))?.offset, 4000);
    t.is(await uploads.append(s.id, chunk(data.subarray(4000)), { offset: 4000, ...NO_LIMIT }), data.length);
    await uploads.finish(s.id, sha256(data));
    t.true((await content(t, store, sha256(data))).equals(data));
  });

  test(title('a chunk is all or nothing: wrong length and size limit roll back to the last offset'), async (t) => {
    const { store, uploads } = await factory(t);
    const data = randomBytes(50_000);
    const s = await uploads.start(repo);
    await uploads.append(s.id, chunk(data.subarray(0, 10_000)), NO_LIMIT); // streamed: no offset
    const short = await errorOf(t, uploads.append(s.id, chunk(data.subarray(10_000, 20_000)), { length: 10_001, ...NO_LIMIT }));
    t.is(short.code, 'SIZE_INVALID');
    t.is((await uploads.status(s.id))?.offset, 10_000, 'a chunk shorter than declared is not counted');
    const big = await errorOf(t, uploads.append(s.id, Readable.from([data.subarray(10_000, 30_000), data.subarray(30_000)]), { maxBytes: 40_000 }));
    t.is(big.code, 'SIZE_INVALID');
    t.is(big.status, 413);
    t.is((await uploads.status(s.id))?.offset, 10_000, 'a chunk over the limit is not counted');
    t.is(await uploads.append(s.id, chunk(data.subarray(10_000)), { offset: 10_000, maxBytes: data.length }), data.length);
    await uploads.finish(s.id, sha256(data));
    t.true((await content(t, store, sha256(data))).equals(data), 'the rolled-back bytes are not in the blob');
  });

  test(title('a session started here is carried on by another process over the same storage'), async (t) => {
    const { store, uploads, replica } = await factory(t);
    const other = await replica();
    const data = randomBytes(3 * 300_000);
    const [a, b, c] = [0, 1, 2].map((i) => data.subarray(i * 300_000, (i + 1) * 300_000));
    const s = await uploads.start(repo);
    await uploads.append(s.id, chunk(a!), { offset: 0, ...NO_LIMIT });
    t.like(await other.uploads.status(s.id), { id: s.id, repo, offset: 300_000 });
    await other.uploads.append(s.id, chunk(b!), { offset: 300_000, ...NO_LIMIT });
    t.is((await uploads.status(s.id))?.offset, 600_000, 'the first process sees what the other appended');
    // The first process appends again: whatever it kept in memory about the session no
    // longer covers the stored bytes and must not be trusted.
    await uploads.append(s.id, chunk(c!), { offset: 600_000, ...NO_LIMIT });
    t.deepEqual(await uploads.finish(s.id, sha256(data)), { size: data.length });
    t.true((await content(t, store, sha256(data))).equals(data));
    t.true((await content(t, other.store, sha256(data))).equals(data));
    // And the other way round: started here, finished there.
    const more = randomBytes(200_000);
    const s2 = await uploads.start(repo);
    await uploads.append(s2.id, chunk(more), { offset: 0, ...NO_LIMIT });
    t.deepEqual(await other.uploads.finish(s2.id, sha256(more)), { size: more.length });
    t.is(await uploads.status(s2.id), null);
    t.true((await content(t, store, sha256(more))).equals(more));
  });

  test(title('finish with the wrong digest is DIGEST_INVALID and leaves nothing'), async (t) => {
    const { store, uploads, uploadLeftovers } = await factory(t);
    const data = randomBytes(100_000);
    const wrong = sha256(Buffer.from('other bytes'));
    const s = await uploads.start(repo);
    await uploads.append(s.id, chunk(data), NO_LIMIT);
    t.is((await errorOf(t, uploads.finish(s.id, wrong))).code, 'DIGEST_INVALID');
    t.is(await store.stat(wrong), null);
    t.is(await store.stat(sha256(data)), null);
    t.is(await uploads.status(s.id), null, 'the session is gone');
    const listed = [];
    for await (const e of store.list()) listed.push(e.digest);
    t.deepEqual(listed, []);
    t.deepEqual(await uploadLeftovers(), []);
  });

  test(title('cancel ends the session and drops its bytes; unknown ids are unknown'), async (t) => {
    const { uploads, uploadLeftovers } = await factory(t);
    const s = await uploads.start(repo);
    await uploads.append(s.id, chunk(randomBytes(5000)), NO_LIMIT);
    await uploads.cancel(s.id);
    t.is(await uploads.status(s.id), null);
    t.is((await errorOf(t, uploads.cancel(s.id))).code, 'BLOB_UPLOAD_UNKNOWN');
    t.is((await errorOf(t, uploads.append(s.id, chunk(Buffer.from('x')), NO_LIMIT))).code, 'BLOB_UPLOAD_UNKNOWN');
    t.deepEqual(await uploadLeftovers(), []);
    for (const id of ['nope', '../../../etc/passwd', '', 'x'.repeat(300)]) {
      t.is(await uploads.status(id), null, JSON.stringify(id.slice(0, 20)));
      t.is((await errorOf(t, uploads.finish(id, sha256(Buffer.alloc(0))))).code, 'BLOB_UPLOAD_UNKNOWN');
      t.is((await errorOf(t, uploads.cancel(id))).code, 'BLOB_UPLOAD_UNKNOWN');
    }
  });

  test(title('sweep removes expired sessions nobody writes to, and keeps the others'), async (t) => {
    const { uploads, uploadLeftovers } = await factory(t);
    const idle = await uploads.start(repo);
    await uploads.append(idle.id, chunk(randomBytes(1000)), NO_LIMIT);
    const busy = await uploads.start(repo);
    t.is(await uploads.sweep(3_600_000), 0, 'nothing is an hour old');
    t.truthy(await uploads.status(idle.id));
    // An append in progress on `busy` while the sweep runs.
    const body = new PassThrough();
    const appending = uploads.append(busy.id, body, NO_LIMIT);
    body.write(randomBytes(1000));
    await after(Math.max(idle.createdAt, busy.createdAt));
    t.is(await uploads.sweep(0), 1);
    t.is(await uploads.status(idle.id), null, 'the idle expired session is gone');
    body.end(randomBytes(500));
    t.is(await appending, 1500, 'the session being written to was kept');
    t.is((await uploads.status(busy.id))?.offset, 1500);
    t.is(await uploads.sweep(0), 1);
    t.is(await uploads.status(busy.id), null);
    t.deepEqual(await uploadLeftovers(), []);
  });

  test(title('one writer at a time: a second append or finish while one runs is 416 BLOB_UPLOAD_INVALID'), async (t) => {
    const { store, uploads } = await factory(t);
    const data = randomBytes(20_000);
    const s = await uploads.start(repo);
    const body = new PassThrough();
    const first = uploads.append(s.id, body, NO_LIMIT);
    body.write(data.subarray(0, 10_000));
    const second = await errorOf(t, uploads.append(s.id, chunk(data.subarray(10_000)), NO_LIMIT));
    t.is(second.code, 'BLOB_UPLOAD_INVALID');
    t.is(second.status, 416);
    t.regex(second.headers?.Range ?? '', /^0-\d+$/);
    t.is((await errorOf(t, uploads.finish(s.id, sha256(data)))).code, 'BLOB_UPLOAD_INVALID');
    body.end();
    t.is(await first, 10_000);
    await uploads.append(s.id, chunk(data.subarray(10_000)), { offset: 10_000, ...NO_LIMIT });
    await uploads.finish(s.id, sha256(data));
    t.true((await content(t, store, sha256(data))).equals(data));
  });

  test(title('concurrent finishes: exactly one commits, the blob is stored once, nothing is left'), async (t) => {
    const { store, uploads, uploadLeftovers } = await factory(t);
    const data = randomBytes(2 * 1024 * 1024);
    const s = await uploads.start(repo);
    await uploads.append(s.id, chunk(data), NO_LIMIT);
    const results = await Promise.allSettled([0, 1, 2].map(() => uploads.finish(s.id, sha256(data))));
    const ok = results.filter((r) => r.status === 'fulfilled');
    t.is(ok.length, 1);
    t.deepEqual((ok[0] as PromiseFulfilledResult<{ size: number }>).value, { size: data.length });
    for (const r of results) {
      if (r.status === 'rejected') t.true(['BLOB_UPLOAD_INVALID', 'BLOB_UPLOAD_UNKNOWN'].includes((r.reason as { code?: string }).code ?? ''), String(r.reason));
    }
    t.true((await content(t, store, sha256(data))).equals(data));
    t.is(await uploads.status(s.id), null);
    t.deepEqual(await uploadLeftovers(), []);
  });

  test(title('finishing a digest already stored links it; an empty session is an empty blob'), async (t) => {
    const { store, uploads, uploadLeftovers } = await factory(t);
    const data = randomBytes(70_000);
    for (let i = 0; i < 2; i++) {
      const s = await uploads.start(repo);
      await uploads.append(s.id, chunk(data), NO_LIMIT);
      await uploads.finish(s.id, sha256(data));
    }
    const listed = [];
    for await (const e of store.list()) listed.push(e.digest);
    t.deepEqual(listed, [sha256(data)]);
    const empty = await uploads.start(repo, 'sha512');
    const d512 = `sha512:${createHash('sha512').update(Buffer.alloc(0)).digest('hex')}` as Digest;
    t.deepEqual(await uploads.finish(empty.id, d512), { size: 0 });
    t.deepEqual(await store.stat(d512), { size: 0 });
    t.deepEqual(await uploadLeftovers(), []);
  });
}
