/**
 * Hardening against hostile input, each against a live in-process server:
 *  - names, tags, digests and upload ids are validated before storage or SQL: traversal
 *    (`..`, `%2e%2e`, encoded slashes, NUL, backslashes), absolute paths, over-long values
 *    all answer 4xx, and no file ever appears outside the storage directory;
 *  - body limits: manifests over limits.maxManifestBytes -> 413 (with and without
 *    Content-Length), blobs over limits.maxBlobBytes -> 413 (monolithic, chunked, final PUT);
 *  - stalled clients (headers or bodies) are cut after http.idleTimeout and release what
 *    they held (upload session usable again, temp files gone);
 *  - malformed manifests, digest/size mismatches, out-of-order/overlapping chunks and
 *    garbage Content-Range give OCI errors and store nothing;
 *  - `ns` and name-derived upstream selection only reach configured upstreams (a trap
 *    listener on 127.0.0.1 sees zero connections);
 *  - upstream credentials and client passwords/tokens never reach logs, error bodies or
 *    GET /api/v1/resolve.
 *
 * Raw sockets are used wherever undici would normalise the request (paths, framing).
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { basic, decodeJwt, getToken, req, writeHtpasswd } from '../helpers/authn.js';
import { errorCode, http, pushBlob, sha256 } from '../helpers/http.js';
import { type TestServer, startServer, tempDir } from '../helpers/server.js';
import { MediaTypes } from '../fixtures/images.js';
import { OCI_INDEX, OCI_MANIFEST, listTree, rawGet, rawRequest, sampleImage, streamRequest } from '../integration/_support.js';
import { startFake } from '../integration/_pullthrough.js';

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Every path under the test's data dir must be one regmirror's storage layout allows. */
const ALLOWED_STORAGE_PATHS = [
  /^storage$/,
  /^storage\/regmirror\.db(-wal|-shm|-journal)?$/,
  /^storage\/token-key\.pem$/,
  /^storage\/(blobs|uploads|tmp)$/,
  /^storage\/blobs\/sha(256|512)$/,
  /^storage\/blobs\/sha256\/[0-9a-f]{2}(\/[0-9a-f]{64})?$/,
  /^storage\/blobs\/sha512\/[0-9a-f]{2}(\/[0-9a-f]{128})?$/,
  /^storage\/uploads\/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
  /^storage\/tmp\/[0-9a-f]{24}$/,
];

async function assertStorageLayout(t: ExecutionContext, s: TestServer): Promise<void> {
  const tree = await listTree(s.dataDir);
  const odd = tree.filter((p) => !ALLOWED_STORAGE_PATHS.some((re) => re.test(p)));
  t.deepEqual(odd, [], 'no file outside the storage layout');
}

/** Names (recursively, bounded depth) under `dir` that contain `marker`. */
async function findMarker(dir: string, marker: string, depth: number): Promise<string[]> {
  const out: string[] = [];
  let entries: import('node:fs').Dirent[];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.name.includes(marker)) out.push(p);
    if (depth > 0 && e.isDirectory() && !e.isSymbolicLink()) out.push(...(await findMarker(p, marker, depth - 1)));
  }
  return out;
}

test('path traversal, encoded separators, NUL, absolute and over-long names: 4xx and nothing outside storage', async (t) => {
  const s = await startServer(t);
  const marker = `pwned-${randomBytes(4).toString('hex')}`;
  const d = sha256('some content');
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] }));
  const long = (n: number) => 'a'.repeat(n);
  // [method, target, body?]
  const cases: Array<[string, string, Buffer?]> = [
    ['GET', `/v2/../../../../tmp/${marker}/manifests/latest`],
    ['PUT', `/v2/../../../../tmp/${marker}/manifests/latest`, manifest],
    ['PUT', `/v2/foo/../../../../../tmp/${marker}/manifests/latest`, manifest],
    ['PUT', `/v2/%2e%2e/%2e%2e/%2e%2e/tmp/${marker}/manifests/latest`, manifest],
    ['PUT', `/v2/%2E%2E%2F%2E%2E%2Ftmp%2F${marker}/manifests/latest`, manifest],
    ['PUT', `/v2/foo%2f..%2f..%2f${marker}/manifests/latest`, manifest],
    ['PUT', `/v2/foo%252f..%252f${marker}/manifests/latest`, manifest],
    ['PUT', `/v2/foo/manifests/..%2f..%2f${marker}`, manifest],
    ['PUT', `/v2/foo/manifests/../../${marker}`, manifest],
    ['PUT', `/v2/foo/manifests/${marker}%00`, manifest],
    ['PUT', `/v2/foo\\..\\..\\${marker}/manifests/latest`, manifest],
    ['PUT', `/v2//tmp/${marker}/manifests/latest`, manifest],
    ['PUT', `/v2///${marker}/manifests/latest`, manifest],
    ['PUT', `/v2/foo/manifests/${long(129)}`, manifest],
    ['PUT', `/v2/foo/manifests/.hidden`, manifest],
    ['PUT', `/v2/${long(256)}/manifests/latest`, manifest],
    ['PUT', `/v2/${Array.from({ length: 130 }, () => 'ab').join('/')}/manifests/latest`, manifest],
    ['PUT', `/v2/${long(5000)}/manifests/latest`, manifest],
    ['PUT', `/v2/Foo/manifests/latest`, manifest],
    ['PUT', `/v2/foo./manifests/latest`, manifest],
    ['PUT', `/v2/./manifests/latest`, manifest],
    ['PUT', `/v2/../manifests/latest`, manifest],
    ['GET', `/v2/foo/blobs/sha256:../../../../tmp/${marker}`],
    ['GET', `/v2/foo/blobs/sha256:..%2f..%2f..%2f${marker}`],
    ['GET', `/v2/foo/blobs/sha256:${'A'.repeat(64)}`],
    ['GET', `/v2/foo/blobs/sha256:${'a'.repeat(63)}`],
    ['GET', `/v2/foo/blobs/sha256:${'a'.repeat(64)}%00`],
    ['GET', `/v2/foo/blobs/md5:${'a'.repeat(32)}`],
    ['GET', `/v2/foo/blobs/${d.replace(':', '%3a')}`],
    ['DELETE', `/v2/foo/blobs/sha256:../../${marker}`],
    ['POST', `/v2/foo/blobs/uploads/?digest=sha256:..%2f..%2f${marker}`, Buffer.from('x')],
    ['POST', `/v2/foo/blobs/uploads/?digest=sha256%3a${'a'.repeat(64)}%2f..`, Buffer.from('x')],
    ['POST', `/v2/../${marker}/blobs/uploads/`],
    ['PATCH', `/v2/foo/blobs/uploads/..`, Buffer.from('x')],
    ['PATCH', `/v2/foo/blobs/uploads/../../../../tmp/${marker}`, Buffer.from('x')],
    ['PATCH', `/v2/foo/blobs/uploads/..%2f..%2f${marker}`, Buffer.from('x')],
    ['PUT', `/v2/foo/blobs/uploads/${marker}?digest=${d}`, Buffer.from('x')],
    ['PUT', `/v2/foo/blobs/uploads/%2e%2e?digest=${d}`, Buffer.from('x')],
    ['GET', `/v2/foo/blobs/uploads/${long(5000)}`],
    ['DELETE', `/v2/foo/blobs/uploads/${randomUUID().toUpperCase()}`],
    ['GET', `/v2/foo/tags/list?last=../../${marker}&n=1`],
    ['GET', `/v2/foo/referrers/sha256:../../${marker}`],
    ['GET', `/api/v1/resolve?path=../../../tmp/${marker}`],
    ['GET', `/api/v1/resolve?path=/../../etc/passwd`],
    ['GET', `/api/v1/resolve?path=foo&reference=../../${marker}`],
  ];
  const statuses: string[] = [];
  for (const [method, target, body] of cases) {
    const headers = body ? [`Content-Type: ${method === 'PUT' && target.includes('/manifests/') ? OCI_INDEX : 'application/octet-stream'}`] : [];
    const r = await rawGet(s.hostPort, method, target, headers, body);
    statuses.push(`${method} ${target.slice(0, 60)} -> ${r.status}`);
    t.true(r.status >= 400 && r.status < 500, `${method} ${target.slice(0, 100)} -> ${r.status} ${r.body.toString('utf8').slice(0, 200)}`);
  }
  t.log(`${cases.length} traversal cases, all 4xx`);
  // A mount whose `from` is not a valid name is just "no mount": a plain upload session starts.
  const mount = await rawGet(s.hostPort, 'POST', `/v2/foo/blobs/uploads/?mount=${d}&from=../../../${marker}`);
  t.is(mount.status, 202);
  t.regex(mount.header('location') ?? '', /^\/v2\/foo\/blobs\/uploads\/[0-9a-f-]{36}$/);
  t.is((await http('DELETE', `${s.url}${mount.header('location')}`)).status, 204);
  // NUL as a raw byte (not percent-encoded) in the request target and in a header.
  const nul = await rawRequest(s.hostPort, Buffer.from(`GET /v2/foo\0/manifests/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, 'latin1')).catch(() => null);
  t.true(nul === null || (nul.status >= 400 && nul.status < 500));

  await assertStorageLayout(t, s);
  const leaked = [
    ...(await findMarker(s.dataDir, marker, 6)),
    ...(await findMarker(path.dirname(s.dataDir), marker, 1)),
    ...(await findMarker(os.tmpdir(), marker, 1)),
    ...(await findMarker('/', marker, 0)),
  ];
  t.deepEqual(leaked, [], 'no file named after the traversal marker anywhere near the storage dir');
  t.is((await http('GET', `${s.url}/v2/_catalog`)).json<{ repositories: string[] }>().repositories.length, 0, 'no repository was created');
});

test('upload ids are validated and bound to their repository', async (t) => {
  const s = await startServer(t);
  const start = await http('POST', `${s.url}/v2/owner/repo/blobs/uploads/`);
  t.is(start.status, 202);
  const loc = start.header('location')!;
  const id = loc.slice(loc.lastIndexOf('/') + 1);
  t.regex(id, /^[0-9a-f-]{36}$/);

  for (const bad of ['not-a-uuid', id.toUpperCase(), `${id}x`, `${id.slice(0, -1)}`, '0', '-'.repeat(36), randomUUID()]) {
    const r = await http('PATCH', `${s.url}/v2/owner/repo/blobs/uploads/${bad}`, { body: Buffer.from('data') });
    t.is(r.status, 404, bad);
    t.is(errorCode(r), 'BLOB_UPLOAD_UNKNOWN', bad);
  }
  // Someone else's session id under another repository name.
  for (const method of ['GET', 'PATCH', 'PUT', 'DELETE'] as const) {
    const r = await http(method, `${s.url}/v2/other/repo/blobs/uploads/${id}?digest=${sha256('')}`, method === 'PATCH' ? { body: Buffer.from('x') } : {});
    t.is(r.status, 404, `${method} with a foreign repository`);
  }
  // The real session was not disturbed.
  const ok = await http('PATCH', `${s.url}${loc}`, { body: Buffer.from('hello') });
  t.is(ok.status, 202);
  t.is(ok.header('range'), '0-4');
  await assertStorageLayout(t, s);
});

test('manifest body limit: over maxManifestBytes -> 413 with or without Content-Length; exactly 4 MiB is accepted', async (t) => {
  const s = await startServer(t);
  const over = Buffer.alloc(4 * MiB + 1, 0x20);
  const withLength = await http('PUT', `${s.url}/v2/big/manifests/v1`, { headers: { 'content-type': OCI_INDEX }, body: over });
  t.is(withLength.status, 413);
  t.is(errorCode(withLength), 'MANIFEST_INVALID');
  const chunks = Array.from({ length: 5 }, () => Buffer.alloc(MiB, 0x20));
  const chunked = await streamRequest(`${s.url}/v2/big/manifests/v2`, 'PUT', chunks, { 'content-type': OCI_INDEX });
  t.is(chunked.status, 413);
  t.is((await http('GET', `${s.url}/v2/big/tags/list`)).status, 404, 'nothing stored');

  // The spec requires accepting manifests of at least 4 MB: a 4 MiB index is fine.
  const head = JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [], annotations: { pad: '' } });
  const pad = 4 * MiB - Buffer.byteLength(head);
  const exact = Buffer.from(head.replace('"pad":""', `"pad":"${'p'.repeat(pad)}"`));
  t.is(exact.length, 4 * MiB);
  const put = await http('PUT', `${s.url}/v2/big/manifests/v3`, { headers: { 'content-type': OCI_INDEX }, body: exact });
  t.is(put.status, 201);
});

test('blob size limit (limits.maxBlobBytes): monolithic, streamed, chunked and final PUT beyond it -> 413, nothing kept', async (t) => {
  const LIMIT = 64 * 1024;
  const s = await startServer(t, { limits: { maxBlobBytes: LIMIT } });
  const big = randomBytes(LIMIT + 1);
  const exact = randomBytes(LIMIT);

  const mono = await http('POST', `${s.url}/v2/lim/blobs/uploads/?digest=${sha256(big)}`, { body: big, headers: { 'content-type': 'application/octet-stream' } });
  t.is(mono.status, 413);
  t.is(errorCode(mono), 'SIZE_INVALID');
  const streamed = await streamRequest(`${s.url}/v2/lim/blobs/uploads/?digest=${sha256(big)}`, 'POST', [big.subarray(0, 40_000), big.subarray(40_000)]);
  t.is(streamed.status, 413);
  t.is((await http('HEAD', `${s.url}/v2/lim/blobs/${sha256(big)}`)).status, 404);
  t.is(await pushBlob(s.url, 'lim', exact), sha256(exact), 'exactly the limit is accepted');

  // Chunked session: the chunk that crosses the limit is refused and rolled back.
  const start = await http('POST', `${s.url}/v2/lim/blobs/uploads/`);
  const loc = start.header('location')!;
  const first = big.subarray(0, 40_000);
  t.is((await http('PATCH', `${s.url}${loc}`, { body: first, headers: { 'content-range': '0-39999' } })).status, 202);
  const second = await http('PATCH', `${s.url}${loc}`, { body: big.subarray(40_000), headers: { 'content-range': `40000-${LIMIT}` } });
  t.is(second.status, 413);
  const status = await http('GET', `${s.url}${loc}`);
  t.is(status.status, 204);
  t.is(status.header('range'), '0-39999', 'the refused chunk left nothing behind');
  const finalPut = await http('PUT', `${s.url}${loc}?digest=${sha256(big)}`, { body: big.subarray(40_000) });
  t.is(finalPut.status, 413, 'the final PUT cannot push past the limit either');
  t.is((await http('HEAD', `${s.url}/v2/lim/blobs/${sha256(big)}`)).status, 404);
  // The session is still usable within the limit.
  const done = await http('PUT', `${s.url}${loc}?digest=${sha256(first)}`);
  t.is(done.status, 201);
  await sleep(50);
  t.deepEqual(await fs.readdir(path.join(s.dataDir, 'storage', 'tmp')), [], 'no temp files left');
});

/** Open a socket, write `data`, never finish; resolves with ms until the server closed it. */
function stall(hostPort: string, data: Buffer | string, maxMs: number): Promise<{ closedAfterMs: number | null; received: string }> {
  const [host, port] = hostPort.split(':') as [string, string];
  return new Promise((resolve) => {
    const sock = net.connect({ host, port: Number(port) });
    const started = Date.now();
    let received = '';
    const timer = setTimeout(() => {
      sock.destroy();
      resolve({ closedAfterMs: null, received });
    }, maxMs);
    sock.on('connect', () => sock.write(data));
    sock.on('data', (c: Buffer) => (received += c.toString('latin1')));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ closedAfterMs: Date.now() - started, received });
    });
  });
}

test('stalled clients are cut after http.idleTimeout and release what they held', async (t) => {
  const s = await startServer(t, { http: { idleTimeout: '1s', headersTimeout: '2s' } });
  const start = await http('POST', `${s.url}/v2/slow/blobs/uploads/`);
  const loc = start.header('location')!;
  const d = sha256(Buffer.alloc(1000, 1));

  const [headers, patchBody, monoBody] = await Promise.all([
    // Slowloris: headers never finish.
    stall(s.hostPort, `GET /v2/ HTTP/1.1\r\nHost: ${s.hostPort}\r\nX-Slow: 1\r\n`, 8_000),
    // A chunk that promises 1000 bytes and sends 100.
    stall(s.hostPort, Buffer.concat([Buffer.from(`PATCH ${loc} HTTP/1.1\r\nHost: ${s.hostPort}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n`), Buffer.alloc(100, 1)]), 8_000),
    // A monolithic upload that stops after 10 bytes.
    stall(s.hostPort, Buffer.concat([Buffer.from(`POST /v2/slow/blobs/uploads/?digest=${d} HTTP/1.1\r\nHost: ${s.hostPort}\r\nContent-Length: 1000\r\n\r\n`), Buffer.alloc(10, 1)]), 8_000),
  ]);
  for (const [what, r] of [['headers', headers], ['PATCH body', patchBody], ['POST body', monoBody]] as const) {
    t.not(r.closedAfterMs, null, `${what}: the server closed the stalled connection`);
    t.true((r.closedAfterMs ?? 0) >= 800, `${what}: not before the idle timeout (${r.closedAfterMs} ms)`);
    t.false(/^HTTP\/1\.1 5/.test(r.received), `${what}: no 5xx`);
  }

  // The session is not left busy or half-written: it continues from offset 0.
  const status = await http('GET', `${s.url}${loc}`);
  t.is(status.status, 204);
  t.is(status.header('range'), '0-0');
  const resumed = await http('PATCH', `${s.url}${loc}`, { body: Buffer.alloc(1000, 1) });
  t.is(resumed.status, 202, resumed.body.toString());
  t.is(resumed.header('range'), '0-999');
  t.is((await http('PUT', `${s.url}${loc}?digest=${d}`)).status, 201);
  // The stalled monolithic upload left no temp file.
  const tmp = path.join(s.dataDir, 'storage', 'tmp');
  const deadline = Date.now() + 3_000;
  while ((await fs.readdir(tmp)).length > 0 && Date.now() < deadline) await sleep(50);
  t.deepEqual(await fs.readdir(tmp), []);
  t.is((await http('GET', `${s.url}/v2/`)).status, 200);
});

test('malformed manifests, wrong media types and bad descriptors: MANIFEST_INVALID / 4xx, nothing stored', async (t) => {
  const s = await startServer(t);
  const img = sampleImage('malformed');
  for (const b of [...img.layers, img.config]) await pushBlob(s.url, 'bad/m', b.bytes);
  const good = JSON.parse(img.manifest.bytes.toString('utf8')) as Record<string, unknown> & { config: Record<string, unknown>; layers: Array<Record<string, unknown>> };
  const variant = (f: (m: typeof good) => unknown) => Buffer.from(JSON.stringify(f(structuredClone(good))));
  const cases: Array<[string, string, Buffer, string]> = [
    ['not JSON', OCI_MANIFEST, Buffer.from('{"schemaVersion": 2,'), 'MANIFEST_INVALID'],
    ['empty body', OCI_MANIFEST, Buffer.alloc(0), 'MANIFEST_INVALID'],
    ['invalid UTF-8', OCI_MANIFEST, Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]), 'MANIFEST_INVALID'],
    ['JSON array', OCI_MANIFEST, Buffer.from('[1,2,3]'), 'MANIFEST_INVALID'],
    ['JSON string', OCI_MANIFEST, Buffer.from('"manifest"'), 'MANIFEST_INVALID'],
    ['deeply nested', OCI_MANIFEST, Buffer.from(`${'['.repeat(100_000)}${']'.repeat(100_000)}`), 'MANIFEST_INVALID'],
    ['schemaVersion 1', OCI_MANIFEST, variant((m) => ({ ...m, schemaVersion: 1 })), 'MANIFEST_INVALID'],
    ['schemaVersion "2"', OCI_MANIFEST, variant((m) => ({ ...m, schemaVersion: '2' })), 'MANIFEST_INVALID'],
    ['no config', OCI_MANIFEST, variant((m) => ({ ...m, config: undefined })), 'MANIFEST_INVALID'],
    ['config digest invalid', OCI_MANIFEST, variant((m) => ({ ...m, config: { ...m.config, digest: 'sha256:../../etc/passwd' } })), 'MANIFEST_INVALID'],
    ['config digest uppercase', OCI_MANIFEST, variant((m) => ({ ...m, config: { ...m.config, digest: String(m.config.digest).toUpperCase() } })), 'MANIFEST_INVALID'],
    ['negative size', OCI_MANIFEST, variant((m) => ({ ...m, config: { ...m.config, size: -1 } })), 'MANIFEST_INVALID'],
    ['fractional size', OCI_MANIFEST, variant((m) => ({ ...m, config: { ...m.config, size: 1.5 } })), 'MANIFEST_INVALID'],
    ['string size', OCI_MANIFEST, variant((m) => ({ ...m, config: { ...m.config, size: '10' } })), 'MANIFEST_INVALID'],
    ['huge size', OCI_MANIFEST, variant((m) => ({ ...m, config: { ...m.config, size: 1e300 } })), 'MANIFEST_INVALID'],
    ['missing mediaType in descriptor', OCI_MANIFEST, variant((m) => ({ ...m, config: { ...m.config, mediaType: undefined } })), 'MANIFEST_INVALID'],
    ['layers not a list', OCI_MANIFEST, variant((m) => ({ ...m, layers: { 0: m.layers[0] } })), 'MANIFEST_INVALID'],
    ['layer is a string', OCI_MANIFEST, variant((m) => ({ ...m, layers: ['sha256:abc'] })), 'MANIFEST_INVALID'],
    ['urls not strings', OCI_MANIFEST, variant((m) => ({ ...m, layers: [{ ...m.layers[0], urls: [1] }] })), 'MANIFEST_INVALID'],
    ['annotations not strings', OCI_MANIFEST, variant((m) => ({ ...m, annotations: { a: 1 } })), 'MANIFEST_INVALID'],
    ['subject not a descriptor', OCI_MANIFEST, variant((m) => ({ ...m, subject: 'sha256:x' })), 'MANIFEST_INVALID'],
    ['Content-Type/mediaType mismatch', OCI_INDEX, img.manifest.bytes, 'MANIFEST_INVALID'],
    ['schema1 media type', 'application/vnd.docker.distribution.manifest.v1+prettyjws', Buffer.from('{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}'), 'MANIFEST_INVALID'],
    ['unknown media type, no hints', 'application/x-not-a-manifest', Buffer.from('{"schemaVersion":2}'), 'MANIFEST_INVALID'],
    ['index with a bad child', OCI_INDEX, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_MANIFEST, digest: 'nope', size: 1 }] })), 'MANIFEST_INVALID'],
    ['index without manifests', OCI_INDEX, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX })), 'MANIFEST_INVALID'],
    ['layer never pushed', OCI_MANIFEST, variant((m) => ({ ...m, layers: [...m.layers, { mediaType: MediaTypes.ociLayerGzip, digest: sha256('never pushed'), size: 12 }] })), 'MANIFEST_BLOB_UNKNOWN'],
    ['child manifest never pushed', OCI_INDEX, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_MANIFEST, digest: sha256('nope'), size: 4 }] })), 'MANIFEST_BLOB_UNKNOWN'],
  ];
  for (const [what, ct, body, code] of cases) {
    const r = await http('PUT', `${s.url}/v2/bad/m/manifests/t1`, { headers: { 'content-type': ct }, body });
    t.is(r.status, 400, `${what}: ${r.body.toString().slice(0, 200)}`);
    t.is(errorCode(r), code, what);
  }
  // Digest in the URL that does not match the body.
  const mismatch = await http('PUT', `${s.url}/v2/bad/m/manifests/${sha256('other')}`, { headers: { 'content-type': OCI_MANIFEST }, body: img.manifest.bytes });
  t.is(mismatch.status, 400);
  t.is(errorCode(mismatch), 'DIGEST_INVALID');
  // Invalid tag on PUT.
  const badTag = await http('PUT', `${s.url}/v2/bad/m/manifests/-tag`, { headers: { 'content-type': OCI_MANIFEST }, body: img.manifest.bytes });
  t.is(errorCode(badTag), 'TAG_INVALID');

  t.deepEqual((await http('GET', `${s.url}/v2/bad/m/tags/list`)).json<{ tags: string[] }>().tags, [], 'no tag was created');
  t.is((await http('HEAD', `${s.url}/v2/bad/m/manifests/${img.manifest.digest}`)).status, 404, 'no manifest was stored');
  // And the real manifest still goes in afterwards.
  t.is((await http('PUT', `${s.url}/v2/bad/m/manifests/t1`, { headers: { 'content-type': OCI_MANIFEST }, body: img.manifest.bytes })).status, 201);
});

test('blob uploads: digest and size mismatches, out-of-order and overlapping chunks, garbage Content-Range', async (t) => {
  const s = await startServer(t);
  const base = s.url;
  const data = randomBytes(20);

  // Monolithic with the wrong digest / unsupported algorithm.
  const wrong = await http('POST', `${base}/v2/up/b/blobs/uploads/?digest=${sha256('something else')}`, { body: data });
  t.is(wrong.status, 400);
  t.is(errorCode(wrong), 'DIGEST_INVALID');
  const md5 = await http('POST', `${base}/v2/up/b/blobs/uploads/?digest=md5:${'a'.repeat(32)}`, { body: data });
  t.is(errorCode(md5), 'DIGEST_INVALID');
  t.is((await http('HEAD', `${base}/v2/up/b/blobs/${sha256(data)}`)).status, 404);
  t.is((await http('HEAD', `${base}/v2/up/b/blobs/${sha256('something else')}`)).status, 404);

  const session = async () => (await http('POST', `${base}/v2/up/b/blobs/uploads/`)).header('location')!;
  const loc = await session();
  // Out of order: the first chunk must start at 0.
  const ooo = await http('PATCH', `${base}${loc}`, { body: data.subarray(10), headers: { 'content-range': '10-19' } });
  t.is(ooo.status, 416);
  t.is(ooo.header('range'), '0-0');
  // First chunk, then an overlapping one.
  t.is((await http('PATCH', `${base}${loc}`, { body: data.subarray(0, 10), headers: { 'content-range': '0-9' } })).status, 202);
  const overlap = await http('PATCH', `${base}${loc}`, { body: data.subarray(5, 15), headers: { 'content-range': '5-14' } });
  t.is(overlap.status, 416);
  t.is(overlap.header('range'), '0-9', 'the client learns where to resume');
  const gap = await http('PATCH', `${base}${loc}`, { body: data.subarray(15), headers: { 'content-range': '15-19' } });
  t.is(gap.status, 416);
  // Garbage Content-Range values.
  for (const cr of ['bytes=abc', '9-5', '-1-3', 'a-b', '10-', '10-19/abc', '0x0-0x9', '99999999999999999999-99999999999999999999', '10 - 19', '1e1-19']) {
    const r = await http('PATCH', `${base}${loc}`, { body: data.subarray(10), headers: { 'content-range': cr } });
    t.is(r.status, 416, `Content-Range ${cr}`);
  }
  // Content-Length disagreeing with Content-Range (raw: undici frames bodies itself).
  const lenMismatch = await rawGet(s.hostPort, 'PATCH', loc, ['Content-Type: application/octet-stream', 'Content-Range: 10-29'], data.subarray(10));
  t.is(lenMismatch.status, 400);
  t.is(JSON.parse(lenMismatch.body.toString('utf8')).errors[0].code, 'SIZE_INVALID');
  // After all that, the session is intact at offset 10 and completes correctly.
  const st = await http('GET', `${base}${loc}`);
  t.is(st.header('range'), '0-9');
  t.is((await http('PATCH', `${base}${loc}`, { body: data.subarray(10), headers: { 'content-range': '10-19' } })).status, 202);
  t.is((await http('PUT', `${base}${loc}?digest=${sha256(data)}`)).status, 201);
  t.deepEqual((await http('GET', `${base}/v2/up/b/blobs/${sha256(data)}`)).body, data);

  // Finishing with the wrong digest: refused, the session is gone, nothing stored.
  const loc2 = await session();
  const other = randomBytes(30);
  t.is((await http('PATCH', `${base}${loc2}`, { body: other })).status, 202);
  const badFinish = await http('PUT', `${base}${loc2}?digest=${sha256('not it')}`);
  t.is(badFinish.status, 400);
  t.is(errorCode(badFinish), 'DIGEST_INVALID');
  t.is((await http('GET', `${base}${loc2}`)).status, 404);
  t.is((await http('HEAD', `${base}/v2/up/b/blobs/${sha256(other)}`)).status, 404);
  // Finishing without a digest.
  const loc3 = await session();
  t.is(errorCode(await http('PUT', `${base}${loc3}`)), 'DIGEST_INVALID');
  await assertStorageLayout(t, s);
});

test('ns and name-derived upstream selection never reach an unconfigured host (trap listener sees zero connections)', async (t) => {
  let connections = 0;
  const trap = net.createServer((sock) => {
    connections++;
    sock.destroy();
  });
  await new Promise<void>((r) => trap.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => trap.close(() => r())));
  const trapPort = (trap.address() as net.AddressInfo).port;

  const fake = await startFake(t);
  const img = sampleImage('ns-allowed');
  fake.addImage('lib/img', img, 'v1');
  const s = await startServer(t, {
    upstreams: { 'allowed.test': { endpoints: [fake.url] } },
    namespaces: [{ prefix: 'proxy', upstream: 'ns' }],
    defaultUpstream: null,
  });
  const accept = { accept: `${OCI_MANIFEST}, ${OCI_INDEX}` };
  const hostile = [
    `127.0.0.1:${trapPort}`,
    `localhost:${trapPort}`,
    `LOCALHOST:${trapPort}`,
    `127.0.0.1:${trapPort}/v2`,
    `http://127.0.0.1:${trapPort}`,
    `allowed.test@127.0.0.1:${trapPort}`,
    `127.0.0.1:${trapPort}#allowed.test`,
    `[::ffff:127.0.0.1]:${trapPort}`,
    `2130706433:${trapPort}`,
    `allowed.test:${trapPort}`,
    ` 127.0.0.1:${trapPort} `,
  ];
  const targets: string[] = [];
  for (const ns of hostile) {
    const q = `ns=${encodeURIComponent(ns)}`;
    targets.push(
      `/v2/lib/img/manifests/v1?${q}`,
      `/v2/lib/img/manifests/${img.manifest.digest}?${q}`,
      `/v2/lib/img/blobs/${img.config.digest}?${q}`,
      `/v2/lib/img/tags/list?${q}`,
      `/v2/proxy/lib/img/manifests/v1?${q}`,
      `/api/v1/resolve?path=lib/img&${q}`,
    );
  }
  targets.push('/v2/127.0.0.1/lib/img/manifests/v1', '/v2/localhost/lib/img/manifests/v1', '/v2/proxy/127.0.0.1/lib/img/manifests/v1');
  for (const target of targets) {
    const r = await http('GET', `${s.url}${target}`, { headers: accept });
    const isExplain = target.startsWith('/api/');
    t.true(isExplain ? r.status === 200 : r.status >= 400 && r.status < 500, `${target} -> ${r.status}`);
    if (isExplain) {
      const doc = r.json<{ upstream: unknown; error: string | null }>();
      t.is(doc.upstream, null, target);
    }
  }
  // A push completing blobs "from upstream" with a hostile ns.
  const m = Buffer.from(JSON.stringify({ ...JSON.parse(img.manifest.bytes.toString()) }));
  const put = await http('PUT', `${s.url}/v2/lib/img/manifests/v1?ns=${encodeURIComponent(`127.0.0.1:${trapPort}`)}`, { headers: { 'content-type': OCI_MANIFEST }, body: m });
  t.true(put.status >= 400 && put.status < 500, `PUT with hostile ns -> ${put.status}`);

  // Positive control: the configured upstream is reachable the same way.
  const before = fake.registryRequests;
  const ok = await http('GET', `${s.url}/v2/lib/img/manifests/v1?ns=allowed.test`, { headers: accept });
  t.is(ok.status, 200);
  t.true(fake.registryRequests > before);
  await sleep(200);
  t.is(connections, 0, 'nothing ever connected to the trap port');
});

test('upstream credentials and client passwords/tokens never appear in logs, error bodies or the explain endpoint', async (t) => {
  const secret = (label: string) => `${label}-${randomBytes(6).toString('hex')}`;
  const upUser = secret('upuser');
  const upPass = secret('uppass');
  const upToken = secret('uptoken');
  const badUpPass = secret('badpass');
  const alicePass = secret('alicepass');
  const wrongPass = secret('wrongpass');
  const wrongFormPass = secret('wrongform');

  const basicFake = await startFake(t, { auth: 'basic', basic: { username: upUser, password: upPass } });
  const bearerFake = await startFake(t, { auth: 'bearer', staticToken: upToken });
  const img = sampleImage('secrets');
  // One repository name per upstream, so every pull really goes upstream (no shared cache).
  basicFake.addImage('lib/basic', img, 'v1');
  bearerFake.addImage('lib/bearer', img, 'v1');
  const dir = await tempDir(t, 'regmirror-secrets-');
  const htpasswd = path.join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, { alice: alicePass });
  const s = await startServer(t, {
    upstreams: {
      'basic.test': { endpoints: [basicFake.url], credentials: { username: upUser, password: upPass } },
      'bearer.test': { endpoints: [bearerFake.url], credentials: { token: upToken } },
      'wrong.test': { endpoints: [basicFake.url], credentials: { username: upUser, password: badUpPass } },
    },
    defaultUpstream: null,
    auth: { htpasswd, token: { service: 'reg' }, loginRateLimit: { maxFailures: 100 } },
  });
  const A = basic('alice', alicePass);
  const bodies: string[] = [];
  const keep = <T extends { body: Buffer }>(r: T) => {
    bodies.push(r.body.toString('latin1'));
    return r;
  };
  const accept = `${OCI_MANIFEST}, ${OCI_INDEX}`;

  // Client side: a failed Basic login, a failed form login, a good login, a token in use.
  t.is(keep(await req('GET', `${s.url}/v2/lib/img/manifests/v1?ns=basic.test`, { headers: { authorization: basic('alice', wrongPass) } })).status, 401);
  const form = keep(
    await req('POST', `${s.url}/token`, {
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'password', username: 'alice', password: wrongFormPass, scope: 'repository:lib/img:pull' }).toString(),
    }),
  );
  t.is(form.status, 401);
  const tokRes = keep(await getToken(s.url, ['repository:lib/basic:pull,push'], { service: 'reg', auth: A }));
  const token = tokRes.json<{ token: string }>().token;
  t.is(decodeJwt(token).claims.sub, 'alice');
  // Upstream side: Basic, static bearer and wrong credentials, through tags, manifests and blobs.
  for (const [ns, repo] of [['basic.test', 'lib/basic'], ['bearer.test', 'lib/bearer']] as const) {
    const tok = (await getToken(s.url, [`repository:${repo}:pull`], { service: 'reg', auth: A })).json<{ token: string }>().token;
    const r = keep(await req('GET', `${s.url}/v2/${repo}/manifests/v1?ns=${ns}`, { headers: { authorization: `Bearer ${tok}`, accept } }));
    t.is(r.status, 200, `pull through ${ns}: ${r.body.toString().slice(0, 200)}`);
    const blob = keep(await req('GET', `${s.url}/v2/${repo}/blobs/${img.layers[0]!.digest}?ns=${ns}`, { headers: { authorization: `Bearer ${tok}` } }));
    t.is(blob.status, 200);
  }
  const wrongUp = keep(await req('GET', `${s.url}/v2/other/img/manifests/v1?ns=wrong.test`, { headers: { authorization: A, accept } }));
  t.true(wrongUp.status >= 400 && wrongUp.status < 500, `wrong upstream credentials -> ${wrongUp.status}`);
  keep(await req('GET', `${s.url}/v2/other/img/tags/list?ns=wrong.test`, { headers: { authorization: A } }));
  t.true(basicFake.find().some((r) => r.headers.authorization === basic(upUser, upPass)), 'the upstream Basic credential was really used');
  t.true(bearerFake.find().some((r) => r.headers.authorization === `Bearer ${upToken}`), 'the upstream token was really used');
  // The explain endpoint for every upstream.
  for (const ns of ['basic.test', 'bearer.test', 'wrong.test']) {
    const r = keep(await req('GET', `${s.url}/api/v1/resolve?path=lib/img&ns=${ns}&reference=v1`, { headers: { authorization: A } }));
    t.is(r.status, 200);
    t.truthy(r.json<{ upstream: { credentials: string } }>().upstream.credentials, 'explain says what kind of credentials, not which');
  }
  await sleep(100);
  const logs = s.logs.join('\n');
  t.true(logs.includes('failed login'), 'the failed login was logged (so the logs were really captured)');
  const secrets: Record<string, string> = {
    'upstream username': upUser,
    'upstream password': upPass,
    'upstream Basic header': basic(upUser, upPass).slice(6),
    'upstream token': upToken,
    'wrong upstream password': badUpPass,
    'wrong upstream Basic header': basic(upUser, badUpPass).slice(6),
    'client password': alicePass,
    'client Basic header': A.slice(6),
    'failed login password': wrongPass,
    'failed login Basic header': basic('alice', wrongPass).slice(6),
    'failed form password': wrongFormPass,
    'issued token signature': token.split('.')[2]!,
  };
  for (const [what, value] of Object.entries(secrets)) {
    t.false(logs.includes(value), `${what} is not in the logs`);
    if (what !== 'issued token signature') t.false(bodies.some((b) => b.includes(value)), `${what} is not in any response body`);
  }
});

/*
 * Tags fetched from an upstream are cached per local path *and* upstream: with
 * containerd's `?ns=` two upstreams can end in the same local path, and a tag cached from
 * upstream A must never be served to a client asking upstream B (cache confusion).
 */
test('a tag cached from one upstream (ns=a) is not served for another upstream (ns=b)', async (t) => {
  const fakeA = await startFake(t);
  const fakeB = await startFake(t);
  const imgA = sampleImage('ns-cache-a');
  const imgB = sampleImage('ns-cache-b');
  fakeA.addImage('team/app', imgA, 'latest');
  fakeB.addImage('team/app', imgB, 'latest');
  const s = await startServer(t, {
    upstreams: { 'a.test': { endpoints: [fakeA.url] }, 'b.test': { endpoints: [fakeB.url] } },
    defaultUpstream: null,
  });
  const accept = { accept: `${OCI_MANIFEST}, ${OCI_INDEX}` };
  const fromA = await http('GET', `${s.url}/v2/team/app/manifests/latest?ns=a.test`, { headers: accept });
  t.is(fromA.header('docker-content-digest'), imgA.manifest.digest);
  const fromB = await http('GET', `${s.url}/v2/team/app/manifests/latest?ns=b.test`, { headers: accept });
  t.is(fromB.status, 200);
  t.is(fromB.header('docker-content-digest'), imgB.manifest.digest, 'ns=b.test must get b.test\'s image, not the one cached from a.test');
});

/*
 * An upstream endpoint URL must not carry credentials (`https://user:password@host`):
 * GET /api/v1/resolve shows endpoints, and URLs end up in logs. The loader refuses them
 * and points at `credentials:`.
 */
test('upstream endpoint URLs with embedded credentials are refused or never shown', async (t) => {
  const pw = `embedded-${randomBytes(6).toString('hex')}`;
  const config = { upstreams: { 'u.test': { endpoints: [`http://bob:${pw}@127.0.0.1:9`] } }, defaultUpstream: 'u.test' };
  let s: TestServer;
  try {
    s = await startServer(t, config);
  } catch (e) {
    t.regex((e as Error).message, /endpoints/);
    return;
  }
  const explain = await http('GET', `${s.url}/api/v1/resolve?path=lib/app`);
  t.is(explain.status, 200);
  t.false(explain.body.toString().includes(pw), 'explain shows the endpoint password');
  await http('GET', `${s.url}/v2/lib/app/manifests/latest`);
  t.false(s.logs.join('\n').includes(pw), 'logs show the endpoint password');
});
