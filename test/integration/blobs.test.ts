/**
 * Blobs over a real socket: GET | HEAD | DELETE /v2/<name>/blobs/<digest> (protocol.md
 * 1.5): exact headers, the range table of the new conformance on a 2048-byte blob,
 * multipart/byteranges, zero-byte blobs, per-repository visibility, delete.
 */
import test from 'ava';
import { http, pushBlob, sha256 } from '../helpers/http.js';
import { EMPTY_BLOB, randomBytes } from '../fixtures/images.js';
import { assertError, noServerErrors, parseMultipart, rawGet, serve, sha512 } from './_support.js';

test.afterEach(noServerErrors);

const EMPTY_SHA256 = 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

test('GET and HEAD of a blob: exact bytes and headers; unknown blob is 404 BLOB_UNKNOWN', async (t) => {
  const s = await serve(t);
  const bytes = randomBytes(70_000, 'get-head');
  const d = await pushBlob(s.url, 'b/repo', bytes);
  const get = await http('GET', `${s.url}/v2/b/repo/blobs/${d}`);
  t.is(get.status, 200);
  t.true(get.body.equals(bytes));
  t.is(get.header('content-length'), String(bytes.length));
  t.is(get.header('content-type'), 'application/octet-stream');
  t.is(get.header('docker-content-digest'), d);
  t.is(get.header('content-encoding'), undefined);
  t.is(get.header('docker-distribution-api-version'), 'registry/2.0');

  const head = await http('HEAD', `${s.url}/v2/b/repo/blobs/${d}`, { headers: { 'accept-encoding': 'zstd;q=1.0, gzip;q=0.8, deflate;q=0.5' } });
  t.is(head.status, 200);
  t.is(head.body.length, 0);
  t.is(head.header('content-length'), String(bytes.length));
  t.is(head.header('docker-content-digest'), d);
  t.is(head.header('content-encoding'), undefined, 'never compressed, even when the client offers');

  const missing = sha256('not pushed');
  assertError(t, await http('GET', `${s.url}/v2/b/repo/blobs/${missing}`), 404, 'BLOB_UNKNOWN');
  assertError(t, await http('HEAD', `${s.url}/v2/b/repo/blobs/${missing}`), 404, 'BLOB_UNKNOWN', true);
  assertError(t, await http('GET', `${s.url}/v2/never/pushed/blobs/${missing}`), 404, 'BLOB_UNKNOWN');
});

test('range table on a 2048-byte blob (new conformance "range requests")', async (t) => {
  const s = await serve(t);
  const blob = randomBytes(2048, 'range-table');
  const d = await pushBlob(s.url, 'range/repo', blob);
  const url = `${s.url}/v2/range/repo/blobs/${d}`;
  const cases: Array<{ range: string; start: number; end: number }> = [
    { range: 'bytes=500-1499', start: 500, end: 1499 },
    { range: 'bytes=500-', start: 500, end: 2047 },
    { range: 'bytes=-500', start: 1548, end: 2047 },
    { range: 'bytes=2000-5000', start: 2000, end: 2047 },
    { range: 'bytes=0-0', start: 0, end: 0 },
    { range: 'bytes=2047-2047', start: 2047, end: 2047 },
    { range: 'bytes=-5000', start: 0, end: 2047 },
    { range: 'bytes=0-2047', start: 0, end: 2047 },
  ];
  for (const c of cases) {
    const r = await http('GET', url, { headers: { range: c.range } });
    t.is(r.status, 206, c.range);
    t.true(r.body.equals(blob.subarray(c.start, c.end + 1)), `${c.range} body`);
    t.is(r.header('content-length'), String(c.end - c.start + 1), `${c.range} length`);
    t.is(r.header('content-range'), `bytes ${c.start}-${c.end}/2048`, c.range);
    t.is(r.header('docker-content-digest'), d, 'digest of the whole blob on a 206');
    t.is(r.header('content-type'), 'application/octet-stream');

    const h = await http('HEAD', url, { headers: { range: c.range } });
    t.is(h.status, 206);
    t.is(h.body.length, 0);
    t.is(h.header('content-range'), `bytes ${c.start}-${c.end}/2048`);
  }
  for (const range of ['bytes=500-0', 'bytes=5000-10000', 'bytes=2048-', 'bytes=-0', 'bytes=2048-2048']) {
    const r = await http('GET', url, { headers: { range } });
    t.is(r.status, 416, range);
    t.is(r.header('content-range'), 'bytes */2048', range);
    const h = await http('HEAD', url, { headers: { range } });
    t.is(h.status, 416, `HEAD ${range}`);
    t.is(h.body.length, 0);
  }
  // Not a byte range we understand: ignore the header and send the whole blob (RFC 9110 14.2).
  for (const range of ['items=0-5', 'bytes=abc', 'bytes=', 'bytes=--5', 'bytes=1-2-3']) {
    const r = await http('GET', url, { headers: { range } });
    t.is(r.status, 200, range);
    t.true(r.body.equals(blob));
    t.is(r.header('content-length'), '2048');
  }
  t.is((await http('GET', url)).header('accept-ranges'), 'bytes');
});

test('multi-range requests answer 206 multipart/byteranges with every part exact', async (t) => {
  const s = await serve(t);
  const blob = randomBytes(2048, 'multi-range');
  const d = await pushBlob(s.url, 'mr/repo', blob);
  const url = `${s.url}/v2/mr/repo/blobs/${d}`;
  const r = await http('GET', url, { headers: { range: 'bytes=0-9,20-29, -16, 5000-6000' } });
  t.is(r.status, 206, 'never 416 for multi-range with satisfiable parts');
  const m = /^multipart\/byteranges; boundary=(\S+)$/.exec(r.header('content-type') ?? '');
  t.truthy(m, r.header('content-type'));
  t.is(r.header('content-length'), String(r.body.length));
  t.is(r.header('docker-content-digest'), d);
  const parts = parseMultipart(r.body, m![1]!);
  t.is(parts.length, 3, 'the unsatisfiable part is dropped');
  const expected = [
    [0, 9],
    [20, 29],
    [2032, 2047],
  ];
  parts.forEach((p, i) => {
    const [a, b] = expected[i]!;
    t.is(p.headers['content-range'], `bytes ${a}-${b}/2048`);
    t.is(p.headers['content-type'], 'application/octet-stream');
    t.true(p.data.equals(blob.subarray(a!, b! + 1)), `part ${i}`);
  });
  // HEAD of the same: headers only, same declared length.
  const h = await http('HEAD', url, { headers: { range: 'bytes=0-9,20-29' } });
  t.is(h.status, 206);
  t.is(h.body.length, 0);
  t.regex(h.header('content-type') ?? '', /^multipart\/byteranges; boundary=/);
  // Content-Length of a multipart answer is exact (a raw socket sees exactly that many bytes).
  const raw = await rawGet(s.hostPort, 'GET', `/v2/mr/repo/blobs/${d}`, ['Range: bytes=1-1,3-3,5-5']);
  t.is(raw.status, 206);
  t.is(raw.body.length, Number(raw.header('content-length')));
});

test('the zero-byte blob and the empty JSON blob are ordinary blobs', async (t) => {
  const s = await serve(t);
  t.is(await pushBlob(s.url, 'empty/repo', Buffer.alloc(0)), EMPTY_SHA256);
  for (const method of ['GET', 'HEAD'] as const) {
    const r = await http(method, `${s.url}/v2/empty/repo/blobs/${EMPTY_SHA256}`);
    t.is(r.status, 200, method);
    t.is(r.header('content-length'), '0');
    t.is(r.header('docker-content-digest'), EMPTY_SHA256);
    t.is(r.body.length, 0);
  }
  // A range on an empty blob is unsatisfiable.
  const rr = await http('GET', `${s.url}/v2/empty/repo/blobs/${EMPTY_SHA256}`, { headers: { range: 'bytes=0-' } });
  t.is(rr.status, 416);
  t.is(rr.header('content-range'), 'bytes */0');

  t.is(await pushBlob(s.url, 'empty/repo', EMPTY_BLOB.bytes), EMPTY_BLOB.digest, 'the {} blob has its well-known digest');
  const j = await http('GET', `${s.url}/v2/empty/repo/blobs/${EMPTY_BLOB.digest}`);
  t.is(j.body.toString(), '{}');
  t.is(j.header('content-length'), '2');

  // sha512 of the empty blob.
  const e512 = sha512(Buffer.alloc(0));
  const p = await http('POST', `${s.url}/v2/empty/repo/blobs/uploads/?digest=${e512}`, { headers: { 'content-type': 'application/octet-stream' }, body: Buffer.alloc(0) });
  t.is(p.status, 201, p.body.toString());
  const g = await http('GET', `${s.url}/v2/empty/repo/blobs/${e512}`);
  t.is(g.status, 200);
  t.is(g.header('content-length'), '0');
  t.is(g.header('docker-content-digest'), e512);
});

test('a blob is visible only in repositories that link it (push or mount)', async (t) => {
  const s = await serve(t);
  const bytes = randomBytes(1000, 'visibility');
  const d = await pushBlob(s.url, 'team/a', bytes);
  t.is((await http('HEAD', `${s.url}/v2/team/a/blobs/${d}`)).status, 200);
  assertError(t, await http('GET', `${s.url}/v2/team/b/blobs/${d}`), 404, 'BLOB_UNKNOWN');
  await pushBlob(s.url, 'team/b', 'make team/b exist');
  assertError(t, await http('GET', `${s.url}/v2/team/b/blobs/${d}`), 404, 'BLOB_UNKNOWN');
  // A prefix of a repository is another repository.
  t.is((await http('HEAD', `${s.url}/v2/team/blobs/${d}`)).status, 404);
  t.is((await http('HEAD', `${s.url}/v2/team/a/x/blobs/${d}`)).status, 404);

  const mount = await http('POST', `${s.url}/v2/team/b/blobs/uploads/?mount=${d}&from=team/a`);
  t.is(mount.status, 201);
  const g = await http('GET', `${s.url}/v2/team/b/blobs/${d}`);
  t.true(g.body.equals(bytes));
});

test('DELETE a blob: 202, then 404 at once; other repositories keep it; it can be pushed again', async (t) => {
  const s = await serve(t);
  const bytes = randomBytes(5000, 'delete');
  const d = await pushBlob(s.url, 'del/one', bytes);
  await pushBlob(s.url, 'del/two', bytes);

  const del = await http('DELETE', `${s.url}/v2/del/one/blobs/${d}`);
  t.is(del.status, 202);
  t.is(del.body.length, 0);
  assertError(t, await http('HEAD', `${s.url}/v2/del/one/blobs/${d}`), 404, 'BLOB_UNKNOWN', true);
  assertError(t, await http('GET', `${s.url}/v2/del/one/blobs/${d}`), 404, 'BLOB_UNKNOWN');
  assertError(t, await http('DELETE', `${s.url}/v2/del/one/blobs/${d}`), 404, 'BLOB_UNKNOWN');
  // Still in the other repository, with its bytes.
  const two = await http('GET', `${s.url}/v2/del/two/blobs/${d}`);
  t.true(two.body.equals(bytes));
  // And a mount from del/one no longer works.
  const mount = await http('POST', `${s.url}/v2/del/three/blobs/uploads/?mount=${d}&from=del/one`);
  t.is(mount.status, 202);
  // Pushing it again makes it visible again.
  t.is(await pushBlob(s.url, 'del/one', bytes), d);
  t.true((await http('GET', `${s.url}/v2/del/one/blobs/${d}`)).body.equals(bytes));

  assertError(t, await http('DELETE', `${s.url}/v2/no/such/repo/blobs/${d}`), 404, 'BLOB_UNKNOWN');
  assertError(t, await http('DELETE', `${s.url}/v2/del/one/blobs/sha256:totallywrong`), 400, 'DIGEST_INVALID');
});

test('blob GET is byte-exact for a multi-chunk blob and for concurrent readers', async (t) => {
  const s = await serve(t);
  const bytes = randomBytes(3 * 1024 * 1024 + 17, 'big-blob');
  const d = await pushBlob(s.url, 'big/repo', bytes);
  const results = await Promise.all(
    [undefined, 'bytes=1048576-', 'bytes=-17', undefined].map((range) =>
      http('GET', `${s.url}/v2/big/repo/blobs/${d}`, range ? { headers: { range } } : {}),
    ),
  );
  t.true(results[0]!.body.equals(bytes));
  t.true(results[1]!.body.equals(bytes.subarray(1048576)));
  t.is(results[1]!.header('content-range'), `bytes 1048576-${bytes.length - 1}/${bytes.length}`);
  t.true(results[2]!.body.equals(bytes.subarray(bytes.length - 17)));
  t.true(results[3]!.body.equals(bytes));
  t.is(sha256(results[3]!.body), d);
});

test('overlapping ranges never make the answer larger than the blob (RFC 9110 14.2: ignore the header)', async (t) => {
  const s = await serve(t);
  const blob = randomBytes(64 * 1024, 'amplify');
  const d = await pushBlob(s.url, 'amp/repo', blob);
  // 1,000 copies of the whole blob were asked for in one ~3 KB header.
  const r = await http('GET', `${s.url}/v2/amp/repo/blobs/${d}`, { headers: { range: `bytes=${Array(1000).fill('0-').join(',')}` } });
  t.true(r.body.length <= blob.length + 4096, `answer is ${r.body.length} bytes for a ${blob.length}-byte blob`);
  t.is(r.status, 200);
  t.true(r.body.equals(blob));
  // Partly overlapping ranges are ignored as well; disjoint ones still give multipart.
  t.is((await http('GET', `${s.url}/v2/amp/repo/blobs/${d}`, { headers: { range: 'bytes=0-99,50-149' } })).status, 200);
  const ok = await http('GET', `${s.url}/v2/amp/repo/blobs/${d}`, { headers: { range: 'bytes=0-32767,32768-65535' } });
  t.is(ok.status, 206);
  t.regex(ok.header('content-type') ?? '', /^multipart\/byteranges/);
});
