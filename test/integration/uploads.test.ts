/**
 * Blob uploads over a real socket (protocol.md 1.6; conformance v1.1.1 02_push and the
 * main suite's push styles): monolithic POST, POST+PUT, chunked PATCH, streamed PATCH,
 * PUT with a final chunk, status, cancel, cross-repository mount, bad digests.
 */
import path from 'node:path';
import { Writable } from 'node:stream';
import test, { type ExecutionContext } from 'ava';
import { buildApp } from '../../src/app.js';
import { configFromObject } from '../../src/config/load.js';
import { createLogger } from '../../src/ops/logger.js';
import { tempDir } from '../helpers/server.js';
import { http, pushBlob, sha256, type Res } from '../helpers/http.js';
import { randomBytes } from '../fixtures/images.js';
import { assertError, connectionsDrain, listTree, noServerErrors, rawGet, serve, sha512, streamRequest } from './_support.js';

test.afterEach(noServerErrors);

const OCTET = { 'content-type': 'application/octet-stream' };
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** POST a new session; checks the 202 and returns its Location (relative, as sent). */
async function startSession(t: ExecutionContext, base: string, repo: string, query = ''): Promise<string> {
  const r = await http('POST', `${base}/v2/${repo}/blobs/uploads/${query}`, { headers: { 'content-length': '0' } });
  t.is(r.status, 202, r.body.toString());
  const loc = r.header('location') ?? '';
  t.true(loc.startsWith(`/v2/${repo}/blobs/uploads/`), loc);
  t.is(r.header('range'), '0-0');
  const id = r.header('docker-upload-uuid') ?? '';
  t.regex(id, UUID_RE);
  t.true(loc.endsWith(id), 'Docker-Upload-UUID is the session id in the Location');
  return loc;
}

function patch(base: string, loc: string, body: Buffer, range?: string): Promise<Res> {
  const headers: Record<string, string> = { ...OCTET };
  if (range !== undefined) headers['content-range'] = range;
  return http('PATCH', `${base}${loc}`, { headers, body });
}

function withDigest(loc: string, d: string): string {
  return `${loc}${loc.includes('?') ? '&' : '?'}digest=${encodeURIComponent(d)}`;
}

async function assertBlob(t: ExecutionContext, base: string, repo: string, d: string, bytes: Buffer): Promise<void> {
  const g = await http('GET', `${base}/v2/${repo}/blobs/${d}`);
  t.is(g.status, 200, `GET ${d}`);
  t.true(g.body.equals(bytes), 'blob bytes');
  const h = await http('HEAD', `${base}/v2/${repo}/blobs/${d}`);
  t.is(h.header('content-length'), String(bytes.length));
  t.is(h.body.length, 0);
}

function assertCreated(t: ExecutionContext, r: Res, repo: string, d: string): void {
  t.is(r.status, 201, r.body.toString());
  t.is(r.header('location'), `/v2/${repo}/blobs/${d}`);
  t.is(r.header('docker-content-digest'), d);
}

test('monolithic POST ?digest=: 201 with an exact Location; a wrong digest is 400 and nothing is readable', async (t) => {
  const s = await serve(t);
  const bytes = randomBytes(10_000, 'mono');
  const d = sha256(bytes);
  const r = await http('POST', `${s.url}/v2/up/mono/blobs/uploads/?digest=${d}`, { headers: OCTET, body: bytes });
  assertCreated(t, r, 'up/mono', d);
  // The Location is fetchable and byte-identical (new conformance BlobVerifyLocation).
  t.true((await http('GET', `${s.url}${r.header('location')}`)).body.equals(bytes));
  await assertBlob(t, s.url, 'up/mono', d, bytes);

  const other = randomBytes(10_000, 'mono-bad');
  const claimed = sha256(Buffer.concat([other, Buffer.from('oh no')]));
  const bad = await http('POST', `${s.url}/v2/up/mono/blobs/uploads/?digest=${claimed}`, { headers: OCTET, body: other });
  assertError(t, bad, 400, 'DIGEST_INVALID');
  t.is((await http('HEAD', `${s.url}/v2/up/mono/blobs/${claimed}`)).status, 404);
  t.is((await http('HEAD', `${s.url}/v2/up/mono/blobs/${sha256(other)}`)).status, 404, 'the bytes are not stored under their real digest either');
  // A malformed digest is rejected before anything is written.
  assertError(t, await http('POST', `${s.url}/v2/up/mono/blobs/uploads/?digest=sha256:nope`, { headers: OCTET, body: other }), 400, 'DIGEST_INVALID');
  // Nothing is left in the temp area.
  const leftovers = (await listTree(s.dataDir)).filter((p) => /(^|\/)(tmp|uploads)\/./.test(p));
  t.deepEqual(leftovers, []);
});

test('POST then PUT (body in the PUT, no Content-Range): 201; wrong digest is 400 and the session is gone', async (t) => {
  const s = await serve(t);
  const bytes = randomBytes(4321, 'post-put');
  const d = sha256(bytes);
  const loc = await startSession(t, s.url, 'up/pp');
  const put = await http('PUT', `${s.url}${withDigest(loc, d)}`, { headers: OCTET, body: bytes });
  assertCreated(t, put, 'up/pp', d);
  await assertBlob(t, s.url, 'up/pp', d, bytes);
  assertError(t, await http('GET', `${s.url}${loc}`), 404, 'BLOB_UPLOAD_UNKNOWN');

  const loc2 = await startSession(t, s.url, 'up/pp');
  const other = randomBytes(4321, 'post-put-bad');
  const bad = await http('PUT', `${s.url}${withDigest(loc2, sha256('something else'))}`, { headers: OCTET, body: other });
  assertError(t, bad, 400, 'DIGEST_INVALID');
  t.is((await http('HEAD', `${s.url}/v2/up/pp/blobs/${sha256('something else')}`)).status, 404);
  t.is((await http('HEAD', `${s.url}/v2/up/pp/blobs/${sha256(other)}`)).status, 404);
  assertError(t, await http('GET', `${s.url}${loc2}`), 404, 'BLOB_UPLOAD_UNKNOWN');
});

test('chunked upload, exactly as conformance v1.1.1 drives it (416s keep the session usable)', async (t) => {
  const s = await serve(t);
  const blob = randomBytes(42, 'chunked-v111');
  const c1 = blob.subarray(0, 22);
  const c2 = blob.subarray(22);
  const d = sha256(blob);

  // "Out-of-order blob upload should return 416": second chunk first on a fresh session.
  const locA = await startSession(t, s.url, 'up/chunk');
  const ooo = await patch(s.url, locA, c2, '22-41');
  t.is(ooo.status, 416);
  t.is(ooo.header('range'), '0-0');

  const loc = await startSession(t, s.url, 'up/chunk');
  const p1 = await patch(s.url, loc, c1, '0-21');
  t.is(p1.status, 202, p1.body.toString());
  t.is(p1.header('range'), '0-21');
  t.true((p1.header('location') ?? '').startsWith('/v2/up/chunk/blobs/uploads/'));
  t.truthy(p1.header('docker-upload-uuid'));

  // "Retry previous blob chunk should return 416".
  const again = await patch(s.url, loc, c1, '0-21');
  t.is(again.status, 416);
  t.is(again.header('range'), '0-21');

  // "Get on stale blob upload should return 204 with a range and location".
  const status = await http('GET', `${s.url}${loc}`);
  t.is(status.status, 204);
  t.is(status.header('range'), '0-21');
  t.truthy(status.header('location'));
  t.is(status.body.length, 0);

  const p2 = await patch(s.url, status.header('location')!, c2, '22-41');
  t.is(p2.status, 202);
  t.is(p2.header('range'), '0-41');

  // Final PUT with Content-Length: 0 and no body.
  const put = await http('PUT', `${s.url}${withDigest(p2.header('location')!, d)}`, { headers: { ...OCTET, 'content-length': '0' } });
  assertCreated(t, put, 'up/chunk', d);
  await assertBlob(t, s.url, 'up/chunk', d, blob);
  // The finished session is closed.
  assertError(t, await http('GET', `${s.url}${loc}`), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(t, await patch(s.url, loc, c1, '0-21'), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(t, await http('PUT', `${s.url}${withDigest(loc, d)}`), 404, 'BLOB_UPLOAD_UNKNOWN');
  // The session that only ever got a 416 is still alive at offset 0.
  t.is((await http('GET', `${s.url}${locA}`)).header('range'), '0-0');
});

test('chunked upload with the new conformance out-of-order algorithm (3 chunks, wrap-around), sha256 and sha512', async (t) => {
  const s = await serve(t);
  for (const [alg, hash] of [
    ['sha256', sha256],
    ['sha512', sha512],
  ] as const) {
    for (const putLastChunk of [false, true]) {
      const blob = randomBytes(3 * 1000 - 5, `ooo-${alg}-${putLastChunk}`);
      const d = hash(blob);
      const chunkSize = Math.floor(blob.length / 3) + 1;
      let loc = await startSession(t, s.url, 'up/ooo');
      let lastByte = -1;
      for (let guard = 0; lastByte < blob.length - 1 && guard < 10; guard++) {
        // An out-of-order chunk first (skipping ahead, or back to 0), then recover via GET.
        let badStart = lastByte + 1 + chunkSize;
        if (badStart >= blob.length) badStart = 0;
        const badEnd = Math.min(badStart + chunkSize - 1, blob.length - 1);
        const bad = await patch(s.url, loc, blob.subarray(badStart, badEnd + 1), `${badStart}-${badEnd}`);
        t.is(bad.status, 416, `${alg} bad chunk ${badStart}-${badEnd}`);
        const st = await http('GET', `${s.url}${loc}`);
        t.is(st.status, 204);
        const m = /^0-(\d+)$/.exec(st.header('range') ?? '');
        t.truthy(m, st.header('range'));
        if (lastByte >= 0) t.is(Number(m![1]), lastByte);
        loc = st.header('location')!;

        const start = lastByte + 1;
        lastByte = Math.min(start + chunkSize - 1, blob.length - 1);
        const chunk = blob.subarray(start, lastByte + 1);
        if (putLastChunk && lastByte === blob.length - 1) {
          const put = await http('PUT', `${s.url}${withDigest(loc, d)}`, { headers: { ...OCTET, 'content-range': `${start}-${lastByte}` }, body: chunk });
          assertCreated(t, put, 'up/ooo', d);
        } else {
          const p = await patch(s.url, loc, chunk, `${start}-${lastByte}`);
          t.is(p.status, 202);
          t.is(p.header('range'), `0-${lastByte}`);
          loc = p.header('location')!;
        }
      }
      if (!putLastChunk) {
        const put = await http('PUT', `${s.url}${withDigest(loc, d)}`, { headers: { ...OCTET, 'content-length': '0' } });
        assertCreated(t, put, 'up/ooo', d);
      }
      await assertBlob(t, s.url, 'up/ooo', d, blob);
    }
  }
});

test('PUT with a final chunk: in order gives 201; out of order gives 416 and the session stays usable', async (t) => {
  const s = await serve(t);
  const blob = randomBytes(3000, 'final-chunk');
  const d = sha256(blob);
  const loc = await startSession(t, s.url, 'up/final');
  t.is((await patch(s.url, loc, blob.subarray(0, 1000), '0-999')).status, 202);
  const early = await http('PUT', `${s.url}${withDigest(loc, d)}`, { headers: { ...OCTET, 'content-range': '2000-2999' }, body: blob.subarray(2000) });
  t.is(early.status, 416);
  t.is((await http('GET', `${s.url}${loc}`)).header('range'), '0-999');
  t.is((await http('HEAD', `${s.url}/v2/up/final/blobs/${d}`)).status, 404);
  t.is((await patch(s.url, loc, blob.subarray(1000, 2000), '1000-1999')).status, 202);
  const put = await http('PUT', `${s.url}${withDigest(loc, d)}`, { headers: { ...OCTET, 'content-range': '2000-2999' }, body: blob.subarray(2000) });
  assertCreated(t, put, 'up/final', d);
  await assertBlob(t, s.url, 'up/final', d, blob);
});

test('streamed PATCH (no Content-Range, chunked transfer encoding, several PATCHes) then PUT', async (t) => {
  const s = await serve(t);
  const blob = randomBytes(300_000, 'streamed');
  const d = sha256(blob);
  const loc = await startSession(t, s.url, 'up/stream');
  const parts = [blob.subarray(0, 1), blob.subarray(1, 65_537), blob.subarray(65_537, 200_000)];
  const p1 = await streamRequest(`${s.url}${loc}`, 'PATCH', parts, OCTET);
  t.is(p1.status, 202, p1.body.toString());
  t.is(p1.headers['range'], '0-199999');
  t.is(p1.headers['transfer-encoding'], undefined);
  // A second streamed PATCH appends.
  const p2 = await streamRequest(`${s.url}${p1.headers['location']}`, 'PATCH', [blob.subarray(200_000)], OCTET);
  t.is(p2.status, 202);
  t.is(p2.headers['range'], `0-${blob.length - 1}`);
  // A plain undici PATCH without Content-Range (conformance "stream" sends it this way).
  const put = await http('PUT', `${s.url}${withDigest(String(p2.headers['location']), d)}`, { headers: { ...OCTET, 'content-length': '0' } });
  assertCreated(t, put, 'up/stream', d);
  await assertBlob(t, s.url, 'up/stream', d, blob);

  const small = randomBytes(777, 'streamed-undici');
  const loc2 = await startSession(t, s.url, 'up/stream');
  const sp = await patch(s.url, loc2, small);
  t.is(sp.status, 202);
  t.is(sp.header('range'), '0-776');
  const sput = await http('PUT', `${s.url}${withDigest(sp.header('location')!, sha256(small))}`);
  assertCreated(t, sput, 'up/stream', sha256(small));
});

test('bad digest for every push style gives 400 and leaves nothing readable', async (t) => {
  const s = await serve(t);
  const repo = 'up/baddig';
  const make = (seed: string) => {
    const good = randomBytes(2995, seed);
    return { digest: sha256(good), sent: Buffer.concat([good, Buffer.from('oh no')]) };
  };
  // post only (400; 202 would also be allowed by the suite, we implement monolithic POST)
  const a = make('bad-post');
  assertError(t, await http('POST', `${s.url}/v2/${repo}/blobs/uploads/?digest=${a.digest}`, { headers: OCTET, body: a.sent }), 400, 'DIGEST_INVALID');
  // post+put
  const b = make('bad-post-put');
  const lb = await startSession(t, s.url, repo);
  assertError(t, await http('PUT', `${s.url}${withDigest(lb, b.digest)}`, { headers: OCTET, body: b.sent }), 400, 'DIGEST_INVALID');
  // chunked (final PUT empty)
  const c = make('bad-chunked');
  const lc = await startSession(t, s.url, repo);
  t.is((await patch(s.url, lc, c.sent.subarray(0, 1000), '0-999')).status, 202);
  t.is((await patch(s.url, lc, c.sent.subarray(1000), `1000-${c.sent.length - 1}`)).status, 202);
  assertError(t, await http('PUT', `${s.url}${withDigest(lc, c.digest)}`, { headers: { 'content-length': '0' } }), 400, 'DIGEST_INVALID');
  // chunked and put chunk
  const e = make('bad-chunked-put');
  const le = await startSession(t, s.url, repo);
  t.is((await patch(s.url, le, e.sent.subarray(0, 1000), '0-999')).status, 202);
  assertError(t, await http('PUT', `${s.url}${withDigest(le, e.digest)}`, { headers: { ...OCTET, 'content-range': `1000-${e.sent.length - 1}` }, body: e.sent.subarray(1000) }), 400, 'DIGEST_INVALID');
  // stream
  const f = make('bad-stream');
  const lf = await startSession(t, s.url, repo);
  t.is((await streamRequest(`${s.url}${lf}`, 'PATCH', [f.sent.subarray(0, 10), f.sent.subarray(10)], OCTET)).status, 202);
  assertError(t, await http('PUT', `${s.url}${withDigest(lf, f.digest)}`, { headers: { 'content-length': '0' } }), 400, 'DIGEST_INVALID');

  for (const x of [a, b, c, e, f]) {
    t.is((await http('HEAD', `${s.url}/v2/${repo}/blobs/${x.digest}`)).status, 404);
    t.is((await http('HEAD', `${s.url}/v2/${repo}/blobs/${sha256(x.sent)}`)).status, 404);
  }
  const leftovers = (await listTree(s.dataDir)).filter((p) => /(^|\/)(tmp|uploads)\/./.test(p));
  t.deepEqual(leftovers, [], 'failed uploads leave no files behind');
});

test('sha512 uploads: digest-algorithm=sha512 session, plain session closed with a sha512 digest, chunked', async (t) => {
  const s = await serve(t);
  const blob = randomBytes(5000, 'sha512-upload');
  const d = sha512(blob);
  const loc = await startSession(t, s.url, 'up/s512', '?digest-algorithm=sha512');
  t.is((await patch(s.url, loc, blob.subarray(0, 2500), '0-2499')).status, 202);
  t.is((await patch(s.url, loc, blob.subarray(2500), '2500-4999')).status, 202);
  assertCreated(t, await http('PUT', `${s.url}${withDigest(loc, d)}`), 'up/s512', d);
  await assertBlob(t, s.url, 'up/s512', d, blob);

  const blob2 = randomBytes(100, 'sha512-plain');
  const loc2 = await startSession(t, s.url, 'up/s512');
  assertCreated(t, await http('PUT', `${s.url}${withDigest(loc2, sha512(blob2))}`, { headers: OCTET, body: blob2 }), 'up/s512', sha512(blob2));
  await assertBlob(t, s.url, 'up/s512', sha512(blob2), blob2);

  assertError(t, await http('POST', `${s.url}/v2/up/s512/blobs/uploads/?digest-algorithm=md5`), 400, 'DIGEST_INVALID');
});

test('zero-byte blob via POST+PUT without a body', async (t) => {
  const s = await serve(t);
  const d = sha256(Buffer.alloc(0));
  const loc = await startSession(t, s.url, 'up/zero');
  assertCreated(t, await http('PUT', `${s.url}${withDigest(loc, d)}`, { headers: { 'content-length': '0' } }), 'up/zero', d);
  const g = await http('GET', `${s.url}/v2/up/zero/blobs/${d}`);
  t.is(g.status, 200);
  t.is(g.header('content-length'), '0');
});

test('GET status, DELETE cancel (204), and unknown or foreign sessions', async (t) => {
  const s = await serve(t);
  const loc = await startSession(t, s.url, 'up/cancel');
  const st = await http('GET', `${s.url}${loc}`);
  t.is(st.status, 204);
  t.is(st.header('range'), '0-0');
  t.is(st.header('location'), loc);
  t.is((await patch(s.url, loc, Buffer.from('abc'), '0-2')).status, 202);
  const head = await http('HEAD', `${s.url}${loc}`);
  t.is(head.status, 204);
  t.is(head.header('range'), '0-2');

  const del = await http('DELETE', `${s.url}${loc}`, { headers: { 'content-length': '0' } });
  t.is(del.status, 204);
  t.is(del.body.length, 0);
  assertError(t, await http('GET', `${s.url}${loc}`), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(t, await http('DELETE', `${s.url}${loc}`), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(t, await patch(s.url, loc, Buffer.from('d'), '3-3'), 404, 'BLOB_UPLOAD_UNKNOWN');
  const leftovers = (await listTree(s.dataDir)).filter((p) => /(^|\/)uploads\/./.test(p));
  t.deepEqual(leftovers, [], 'the session file is removed');

  // A session belongs to its repository.
  const loc2 = await startSession(t, s.url, 'up/owner');
  const id = loc2.split('/').pop()!;
  assertError(t, await http('GET', `${s.url}/v2/up/intruder/blobs/uploads/${id}`), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(t, await http('PUT', `${s.url}/v2/up/intruder/blobs/uploads/${id}?digest=${sha256('')}`), 404, 'BLOB_UPLOAD_UNKNOWN');
  t.is((await http('GET', `${s.url}${loc2}`)).status, 204, 'still usable by its owner');
  // Unknown and malformed ids.
  assertError(t, await http('GET', `${s.url}/v2/up/owner/blobs/uploads/00000000-0000-4000-8000-000000000000`), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(t, await http('PATCH', `${s.url}/v2/up/owner/blobs/uploads/not-a-session`, { headers: OCTET, body: 'x' }), 404, 'BLOB_UPLOAD_UNKNOWN');
  assertError(t, await http('DELETE', `${s.url}/v2/up/owner/blobs/uploads/${'f'.repeat(36)}`), 404, 'BLOB_UPLOAD_UNKNOWN');
});

test('PUT without ?digest= is 400 DIGEST_INVALID and the session survives; bad Content-Range is 416', async (t) => {
  const s = await serve(t);
  const blob = randomBytes(100, 'no-digest');
  const loc = await startSession(t, s.url, 'up/nodigest');
  t.is((await patch(s.url, loc, blob, '0-99')).status, 202);
  assertError(t, await http('PUT', `${s.url}${loc}`, { headers: { 'content-length': '0' } }), 400, 'DIGEST_INVALID');
  t.is((await http('GET', `${s.url}${loc}`)).header('range'), '0-99');
  for (const cr of ['abc', '10-5', '-5', 'bytes=*']) {
    const r = await patch(s.url, loc, Buffer.from('x'), cr);
    t.is(r.status, 416, cr);
    t.is(r.header('range'), '0-99', 'the 416 reports the current offset');
  }
  assertCreated(t, await http('PUT', `${s.url}${withDigest(loc, sha256(blob))}`), 'up/nodigest', sha256(blob));
});

test('a chunk whose Content-Length disagrees with its Content-Range is rejected and rolled back', async (t) => {
  const s = await serve(t);
  const loc = await startSession(t, s.url, 'up/mismatch');
  // Declares 10 bytes in Content-Range but sends 5 (raw request: undici would fix the length).
  const r = await rawGet(s.hostPort, 'PATCH', loc, ['Content-Type: application/octet-stream', 'Content-Range: 0-9'], Buffer.from('12345'));
  t.true(r.status === 400 || r.status === 416, String(r.status));
  if (r.status === 400) t.is(JSON.parse(r.body.toString()).errors[0].code, 'SIZE_INVALID');
  const st = await http('GET', `${s.url}${loc}`);
  t.is(st.status, 204);
  t.is(st.header('range'), '0-0', 'nothing was appended');
  // The session is still usable.
  const blob = Buffer.from('0123456789');
  t.is((await patch(s.url, loc, blob, '0-9')).status, 202);
  assertCreated(t, await http('PUT', `${s.url}${withDigest(loc, sha256(blob))}`), 'up/mismatch', sha256(blob));
});

test('cross-repository mount: 201 with the exact Location when mounted, 202 with a new session otherwise', async (t) => {
  const s = await serve(t);
  const bytes = randomBytes(2048, 'mount');
  const d = await pushBlob(s.url, 'conformance/repo1', bytes);

  const m = await http('POST', `${s.url}/v2/conformance/repo2/blobs/uploads/?mount=${d}&from=conformance/repo1`);
  t.is(m.status, 201, m.body.toString());
  t.is(m.header('location'), `/v2/conformance/repo2/blobs/${d}`);
  t.is(m.header('docker-content-digest'), d);
  const g = await http('GET', `${s.url}${m.header('location')}`);
  t.is(g.status, 200);
  t.true(g.body.equals(bytes));

  // Without `from`: no automatic content discovery, a fresh session instead.
  const noFrom = await http('POST', `${s.url}/v2/conformance/repo3/blobs/uploads/?mount=${d}`);
  t.is(noFrom.status, 202);
  t.true((noFrom.header('location') ?? '').startsWith('/v2/conformance/repo3/blobs/uploads/'), noFrom.header('location'));
  t.is((await http('HEAD', `${s.url}/v2/conformance/repo3/blobs/${d}`)).status, 404);
  // The fallback session is a normal one: finish it with a PUT.
  assertCreated(t, await http('PUT', `${s.url}${withDigest(noFrom.header('location')!, d)}`, { headers: OCTET, body: bytes }), 'conformance/repo3', d);

  // Unknown digest, or a source that does not hold it, or an unusable source: 202.
  for (const q of [`mount=${sha256('never pushed')}`, `mount=${sha256('never pushed')}&from=conformance/repo1`, `mount=${d}&from=conformance/empty`, `mount=${d}&from=Not..A..Repo`]) {
    const r = await http('POST', `${s.url}/v2/conformance/repo4/blobs/uploads/?${q}`);
    t.is(r.status, 202, q);
    t.true((r.header('location') ?? '').startsWith('/v2/conformance/repo4/blobs/uploads/'), q);
  }
  t.is((await http('HEAD', `${s.url}/v2/conformance/repo4/blobs/${d}`)).status, 404);
  // A malformed mount digest.
  assertError(t, await http('POST', `${s.url}/v2/conformance/repo4/blobs/uploads/?mount=sha256:bad&from=conformance/repo1`), 400, 'DIGEST_INVALID');
});

test('uploads to a namespace that does not exist yet work, under deep names too', async (t) => {
  const s = await serve(t);
  const bytes = randomBytes(999, 'fresh-ns');
  const loc = await startSession(t, s.url, 'conformance-1234/a/b/c');
  assertCreated(t, await http('PUT', `${s.url}${withDigest(loc, sha256(bytes))}`, { headers: OCTET, body: bytes }), 'conformance-1234/a/b/c', sha256(bytes));
  await assertBlob(t, s.url, 'conformance-1234/a/b/c', sha256(bytes), bytes);
});

test('limits.maxBlobBytes: oversized uploads are refused with 413 and the server stays healthy', async (t) => {
  const s = await serve(t, { limits: { maxBlobBytes: '64KiB' } });
  const big = randomBytes(100 * 1024, 'too-big');
  const mono = await http('POST', `${s.url}/v2/up/limit/blobs/uploads/?digest=${sha256(big)}`, { headers: OCTET, body: big });
  t.is(mono.status, 413);
  t.is((await http('HEAD', `${s.url}/v2/up/limit/blobs/${sha256(big)}`)).status, 404);
  // Streamed bodies (no Content-Length) are cut while being written. The server answers 413
  // and closes the connection (the rest of the body cannot be drained), so a client that is
  // still sending may see the reset before the response (RFC 9112 9.6 allows both).
  const chunks: Buffer[] = [];
  for (let off = 0; off < big.length; off += 8192) chunks.push(big.subarray(off, off + 8192));
  const monoStreamed = await streamRequest(`${s.url}/v2/up/limit/blobs/uploads/?digest=${sha256(big)}`, 'POST', chunks, OCTET).catch((e: NodeJS.ErrnoException) => ({ status: e.code ?? e.message }));
  t.true(monoStreamed.status === 413 || monoStreamed.status === 'EPIPE' || monoStreamed.status === 'ECONNRESET', String(monoStreamed.status));
  const loc = await startSession(t, s.url, 'up/limit');
  const streamed = await streamRequest(`${s.url}${loc}`, 'PATCH', chunks, OCTET).catch((e: NodeJS.ErrnoException) => ({ status: e.code ?? e.message }));
  t.true(streamed.status === 413 || streamed.status === 'EPIPE' || streamed.status === 'ECONNRESET', String(streamed.status));
  t.is((await http('GET', `${s.url}${loc}`)).header('range'), '0-0', 'the oversized chunk was rolled back');
  // The server must not keep the half-read connections: they would stay open, paused,
  // until the idle timeout and make server.close() hang.
  t.true(await connectionsDrain(s.app.fastify.server), 'no connection left hanging');
  t.is((await http('HEAD', `${s.url}/v2/up/limit/blobs/${sha256(big)}`)).status, 404);
  // A blob under the limit still works.
  const ok = randomBytes(1000, 'fits');
  t.is(await pushBlob(s.url, 'up/limit', ok), sha256(ok));
});


test('concurrency: two PUTs closing the same session, parallel pushes of identical content — never a 5xx', async (t) => {
  const s = await serve(t);
  const blob = randomBytes(200_000, 'double-put');
  const d = sha256(blob);
  const loc = await startSession(t, s.url, 'up/race');
  t.is((await patch(s.url, loc, blob, `0-${blob.length - 1}`)).status, 202);
  const puts = await Promise.all([0, 1, 2].map(() => http('PUT', `${s.url}${withDigest(loc, d)}`, { headers: { 'content-length': '0' } })));
  const statuses = puts.map((r) => r.status).sort();
  t.true(statuses.every((st) => st < 500), `statuses ${statuses.join(',')}: ${puts.map((r) => r.body.toString()).join(' | ')}`);
  t.true(statuses.includes(201), statuses.join(','));
  await assertBlob(t, s.url, 'up/race', d, blob);

  // The same blob pushed into several repositories at once (dedupe in the content store).
  const shared = randomBytes(100_000, 'parallel-same');
  const repos = ['par/a', 'par/b', 'par/c', 'par/d', 'par/e'];
  const res = await Promise.all(repos.map((r) => http('POST', `${s.url}/v2/${r}/blobs/uploads/?digest=${sha256(shared)}`, { headers: OCTET, body: shared })));
  t.deepEqual(res.map((r) => r.status), repos.map(() => 201));
  for (const r of repos) await assertBlob(t, s.url, r, sha256(shared), shared);
});

test('a second PATCH while one is still streaming into the session is refused and does not corrupt it', async (t) => {
  const s = await serve(t);
  const loc = await startSession(t, s.url, 'up/busy');
  // Over 1 MiB per half: the server writes in ~1 MiB batches, so half the body is visible
  // in the session's offset only once a batch is full.
  const first = randomBytes(3 * 1024 * 1024, 'busy-first');
  const half = first.length / 2;
  // Raw socket: headers and half of the body now, the rest later.
  const [host, port] = s.hostPort.split(':') as [string, string];
  const net = await import('node:net');
  const sock = net.connect({ host, port: Number(port) });
  await new Promise<void>((r) => sock.once('connect', () => r()));
  const response = new Promise<string>((resolve) => {
    let out = '';
    sock.on('data', (c: Buffer) => (out += c.toString('latin1')));
    sock.on('close', () => resolve(out));
  });
  sock.write(`PATCH ${loc} HTTP/1.1\r\nHost: ${s.hostPort}\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Range: 0-${first.length - 1}\r\nContent-Length: ${first.length}\r\n\r\n`);
  sock.write(first.subarray(0, half));
  // Wait (bounded) until the first half has landed: the first PATCH is then mid-body.
  for (let i = 0; i < 250; i++) {
    const st = await http('GET', `${s.url}${loc}`);
    if (st.header('range') !== '0-0') break;
    await new Promise((r) => setTimeout(r, 20));
  }
  t.not((await http('GET', `${s.url}${loc}`)).header('range'), '0-0', 'the first PATCH is in progress');

  const second = await patch(s.url, loc, Buffer.from('intruder'), '0-7');
  t.true(second.status === 416 || second.status === 409 || second.status === 400, `concurrent PATCH got ${second.status}`);

  // write, not end: a half-closed request is aborted by node's server (httpAllowHalfOpen).
  sock.write(first.subarray(half));
  const raw = await response;
  t.regex(raw, /^HTTP\/1\.1 202 /, raw.slice(0, 200));
  t.regex(raw, new RegExp(`\\r\\nrange: 0-${first.length - 1}\\r\\n`, 'i'));
  const put = await http('PUT', `${s.url}${withDigest(loc, sha256(first))}`);
  assertCreated(t, put, 'up/busy', sha256(first));
  await assertBlob(t, s.url, 'up/busy', sha256(first), first);
});

test('an upload session and pushed content survive a restart of the server', async (t) => {
  const dir = await tempDir(t);
  const start = async () => {
    const cfg = configFromObject({ listen: '127.0.0.1:0', storage: path.join(dir, 'storage'), log: { level: 'warn' } });
    const app = await buildApp(cfg, { logger: createLogger(cfg, new Writable({ write: (_c, _e, cb) => cb() })) });
    const addr = await app.listen(0, '127.0.0.1');
    return { app, url: addr.url };
  };
  const blob = randomBytes(30_000, 'restart');
  const d = sha256(blob);
  const kept = randomBytes(500, 'restart-kept');

  const a = await start();
  let closed = false;
  t.teardown(async () => {
    if (!closed) await a.app.close();
  });
  const keptD = await pushBlob(a.url, 'restart/repo', kept);
  const loc = await startSession(t, a.url, 'restart/repo');
  t.is((await patch(a.url, loc, blob.subarray(0, 10_000), '0-9999')).status, 202);
  await a.app.close();
  closed = true;

  const b = await start();
  t.teardown(() => b.app.close());
  // The session resumes at the offset its file has; the running hash is rebuilt at the end.
  const st = await http('GET', `${b.url}${loc}`);
  t.is(st.status, 204);
  t.is(st.header('range'), '0-9999');
  t.is((await patch(b.url, loc, blob.subarray(10_000), `10000-${blob.length - 1}`)).status, 202);
  assertCreated(t, await http('PUT', `${b.url}${withDigest(loc, d)}`), 'restart/repo', d);
  await assertBlob(t, b.url, 'restart/repo', d, blob);
  await assertBlob(t, b.url, 'restart/repo', keptD, kept);
  // A wrong digest is still caught on the restarted server.
  const loc2 = await startSession(t, b.url, 'restart/repo');
  t.is((await patch(b.url, loc2, blob.subarray(0, 100), '0-99')).status, 202);
  assertError(t, await http('PUT', `${b.url}${withDigest(loc2, sha256('other'))}`), 400, 'DIGEST_INVALID');
});
