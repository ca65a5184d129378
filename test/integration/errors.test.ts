/**
 * Bad input over a real socket: invalid names, tags and digests, malformed manifests,
 * wrong methods, unknown endpoints, path traversal. Every answer must be a 4xx with an
 * OCI error body (protocol.md 1.1, 1.2) — never a 5xx, never a file outside the data dir.
 */
import os from 'node:os';
import net from 'node:net';
import path from 'node:path';
import fs from 'node:fs/promises';
import test from 'ava';
import { errorCode, http, type Method, type Res } from '../helpers/http.js';
import { EMPTY_BLOB, MediaTypes, descriptor, jsonBlob } from '../fixtures/images.js';
import { assertError, KNOWN_CODES, listTree, noServerErrors, OCI_INDEX, OCI_MANIFEST, pushBlobs, pushImage, rawGet, sampleImage, serve } from './_support.js';

test.afterEach(noServerErrors);

const GOOD_DIGEST = `sha256:${'a'.repeat(64)}`;

test('invalid repository names are 400 NAME_INVALID on every endpoint', async (t) => {
  const s = await serve(t);
  const names = ['Bad_Name', 'UPPER/case', 'a//b', '-a', 'a-', 'a..b', 'a/.hidden', 'a:5000/b', 'a b', `${'a'.repeat(256)}`, 'a/_b', 'a___b'];
  for (const name of names) {
    const enc = name.replace(/ /g, '%20');
    const reqs: Array<[Method, string, Buffer | undefined]> = [
      ['GET', `/v2/${enc}/manifests/latest`, undefined],
      ['PUT', `/v2/${enc}/manifests/latest`, Buffer.from('{}')],
      ['GET', `/v2/${enc}/blobs/${GOOD_DIGEST}`, undefined],
      ['POST', `/v2/${enc}/blobs/uploads/`, undefined],
      ['GET', `/v2/${enc}/tags/list`, undefined],
      ['GET', `/v2/${enc}/referrers/${GOOD_DIGEST}`, undefined],
    ];
    for (const [method, url, body] of reqs) {
      const r = await http(method, `${s.url}${url}`, body ? { headers: { 'content-type': OCI_MANIFEST }, body } : {});
      t.is(r.status, 400, `${method} ${url}`);
      // A space arrives percent-encoded, which is refused as an escape before the name is read.
      t.is(errorCode(r), 'NAME_INVALID', `${method} ${url}`);
    }
  }
  assertError(t, await http('HEAD', `${s.url}/v2/Bad_Name/manifests/latest`), 400, 'NAME_INVALID', true);
  // The longest legal name is accepted (and simply unknown).
  const longest = 'a'.repeat(255);
  assertError(t, await http('GET', `${s.url}/v2/${longest}/tags/list`), 404, 'NAME_UNKNOWN');
});

test('tags: 128 characters is the maximum; longer or malformed tags never reach storage', async (t) => {
  const s = await serve(t);
  const img = sampleImage('tag-limits');
  await pushBlobs(s.url, 'tags/limits', [...img.layers, img.config]);
  const t128 = `T${'a'.repeat(126)}_`;
  t.is(t128.length, 128);
  const ok = await http('PUT', `${s.url}/v2/tags/limits/manifests/${t128}`, { headers: { 'content-type': OCI_MANIFEST }, body: img.manifest.bytes });
  t.is(ok.status, 201, ok.body.toString());
  t.is((await http('GET', `${s.url}/v2/tags/limits/manifests/${t128}`, { headers: { accept: OCI_MANIFEST } })).status, 200);

  for (const bad of ['a'.repeat(129), '.dot', '-dash', 'semi;colon', 'tilde~']) {
    const put = await http('PUT', `${s.url}/v2/tags/limits/manifests/${bad}`, { headers: { 'content-type': OCI_MANIFEST }, body: img.manifest.bytes });
    t.is(put.status, 400, bad);
    t.is(errorCode(put), 'TAG_INVALID', bad);
    const get = await http('GET', `${s.url}/v2/tags/limits/manifests/${bad}`);
    t.true(get.status === 400 || get.status === 404, `${bad}: ${get.status}`);
  }
  const tags = (await http('GET', `${s.url}/v2/tags/limits/tags/list`)).json<{ tags: string[] }>().tags;
  t.deepEqual(tags, [t128]);
});

test('malformed digests are 400 DIGEST_INVALID (never 500) for manifests, blobs, uploads and referrers', async (t) => {
  const s = await serve(t);
  t.is((await pushImage(s.url, 'dig/repo', sampleImage('digests'), 'v1')).status, 201);
  const bad = [
    'sha256:totallywrong',
    'sha256:baddigeststring',
    `sha256:${'A'.repeat(64)}`,
    `sha256:${'a'.repeat(63)}`,
    `sha256:${'a'.repeat(65)}`,
    `sha512:${'a'.repeat(64)}`,
    'sha256:',
    ':abc',
    'sha256::abc',
    `blake3:${'a'.repeat(64)}`,
    'md5:d41d8cd98f00b204e9800998ecf8427e',
  ];
  for (const d of bad) {
    const enc = encodeURIComponent(d).replace(/%3A/g, ':');
    assertError(t, await http('GET', `${s.url}/v2/dig/repo/manifests/${enc}`), 400, 'DIGEST_INVALID');
    assertError(t, await http('HEAD', `${s.url}/v2/dig/repo/manifests/${enc}`), 400, 'DIGEST_INVALID', true);
    assertError(t, await http('PUT', `${s.url}/v2/dig/repo/manifests/${enc}`, { headers: { 'content-type': OCI_MANIFEST }, body: 'blablabla' }), 400, 'DIGEST_INVALID');
    assertError(t, await http('GET', `${s.url}/v2/dig/repo/blobs/${enc}`), 400, 'DIGEST_INVALID');
    assertError(t, await http('DELETE', `${s.url}/v2/dig/repo/blobs/${enc}`), 400, 'DIGEST_INVALID');
    assertError(t, await http('GET', `${s.url}/v2/dig/repo/referrers/${enc}`), 400, 'DIGEST_INVALID');
    assertError(t, await http('POST', `${s.url}/v2/dig/repo/blobs/uploads/?digest=${encodeURIComponent(d)}`, { body: 'x' }), 400, 'DIGEST_INVALID');
  }
});

test('malformed manifest bodies are 400 MANIFEST_INVALID and are not stored', async (t) => {
  const s = await serve(t);
  const img = sampleImage('malformed');
  await pushBlobs(s.url, 'bad/manifest', [...img.layers, img.config, EMPTY_BLOB]);
  const config = descriptor(img.config);
  const layer = descriptor(img.layers[0]!);
  const good = { schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers: [layer] };
  const raw: Array<[string, string | Buffer]> = [
    ['not JSON', 'blablabla'],
    ['empty body', ''],
    ['truncated JSON', JSON.stringify(good).slice(0, -3)],
    ['JSON array', '[]'],
    ['JSON string', '"manifest"'],
    ['JSON null', 'null'],
    ['invalid UTF-8', Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d])],
    ['deeply nested', `${'['.repeat(100_000)}${']'.repeat(100_000)}`],
  ];
  const objects: Array<[string, unknown]> = [
    ['schemaVersion 1', { ...good, schemaVersion: 1 }],
    ['schemaVersion 3', { ...good, schemaVersion: 3 }],
    ['schemaVersion "2"', { ...good, schemaVersion: '2' }],
    ['schemaVersion missing', { mediaType: OCI_MANIFEST, config, layers: [layer] }],
    ['config missing', { schemaVersion: 2, mediaType: OCI_MANIFEST, layers: [layer] }],
    ['config not an object', { ...good, config: 'sha256:abc' }],
    ['config digest malformed', { ...good, config: { ...config, digest: 'sha256:xyz' } }],
    ['config digest uppercase', { ...good, config: { ...config, digest: config.digest.toUpperCase() } }],
    ['config digest missing', { ...good, config: { mediaType: config.mediaType, size: config.size } }],
    ['config mediaType missing', { ...good, config: { digest: config.digest, size: config.size } }],
    ['config mediaType empty', { ...good, config: { ...config, mediaType: '' } }],
    ['size negative', { ...good, layers: [{ ...layer, size: -1 }] }],
    ['size as string', { ...good, layers: [{ ...layer, size: String(layer.size) }] }],
    ['size fractional', { ...good, layers: [{ ...layer, size: 1.5 }] }],
    ['size too large', { ...good, layers: [{ ...layer, size: 2 ** 60 }] }],
    ['size missing', { ...good, layers: [{ mediaType: layer.mediaType, digest: layer.digest }] }],
    ['layers not a list', { ...good, layers: { 0: layer } }],
    ['layer not an object', { ...good, layers: ['sha256:abc'] }],
    ['urls not strings', { ...good, layers: [{ ...layer, urls: [1] }] }],
    ['annotations not a string map', { ...good, annotations: { a: 1 } }],
    ['descriptor annotations not a string map', { ...good, layers: [{ ...layer, annotations: { a: true } }] }],
    ['artifactType not a string', { ...good, artifactType: 5 }],
    ['subject digest malformed', { ...good, subject: { mediaType: OCI_MANIFEST, digest: 'sha256:nope', size: 1 } }],
    ['subject not an object', { ...good, subject: 'sha256:abc' }],
  ];
  const bodies: Array<[string, Buffer, string]> = [
    ...raw.map(([n, b]): [string, Buffer, string] => [n, Buffer.from(b), OCI_MANIFEST]),
    ...objects.map(([n, o]): [string, Buffer, string] => [n, Buffer.from(JSON.stringify(o)), OCI_MANIFEST]),
    ['index without manifests', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX })), OCI_INDEX],
    ['index manifests not a list', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: {} })), OCI_INDEX],
    ['index entry digest malformed', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_MANIFEST, digest: 'sha256:1', size: 1 }] })), OCI_INDEX],
    ['schema1 media type', Buffer.from(JSON.stringify({ schemaVersion: 1, name: 'x', tag: 'y', fsLayers: [] })), 'application/vnd.docker.distribution.manifest.v1+prettyjws'],
    ['schema1 unsigned', Buffer.from(JSON.stringify({ schemaVersion: 1, name: 'x', tag: 'y', fsLayers: [] })), 'application/vnd.docker.distribution.manifest.v1+json'],
    ['unknown media type', Buffer.from(JSON.stringify({ ...good, mediaType: 'application/vnd.example.thing' })), 'application/vnd.example.thing'],
    ['no type anywhere', Buffer.from(JSON.stringify({ schemaVersion: 2, layers: [] })), ''],
  ];
  for (const [name, body, ct] of bodies) {
    const headers: Record<string, string> = ct ? { 'content-type': ct } : {};
    const r = await http('PUT', `${s.url}/v2/bad/manifest/manifests/t`, { headers, body });
    t.is(r.status, 400, `${name}: ${r.body.toString().slice(0, 200)}`);
    t.is(errorCode(r), 'MANIFEST_INVALID', name);
  }
  // Nothing got stored under the tag.
  t.is((await http('GET', `${s.url}/v2/bad/manifest/manifests/t`)).status, 404);
  // And the repository still accepts a good manifest.
  const ok = jsonBlob(good, OCI_MANIFEST);
  t.is((await http('PUT', `${s.url}/v2/bad/manifest/manifests/t`, { headers: { 'content-type': OCI_MANIFEST }, body: ok.bytes })).status, 201);
  // An artifact whose config is the empty descriptor with a custom artifactType is valid.
  const art = jsonBlob({ schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: 'application/vnd.example', config: descriptor(EMPTY_BLOB), layers: [] }, MediaTypes.ociManifest);
  t.is((await http('PUT', `${s.url}/v2/bad/manifest/manifests/art`, { headers: { 'content-type': OCI_MANIFEST }, body: art.bytes })).status, 201);
});

test('wrong methods are 405 UNSUPPORTED; unknown endpoints are 404', async (t) => {
  const s = await serve(t);
  const img = sampleImage('methods');
  t.is((await pushImage(s.url, 'm/repo', img, 'v1')).status, 201);
  const up = await http('POST', `${s.url}/v2/m/repo/blobs/uploads/`);
  const uploadLoc = up.header('location')!;
  const wrong: Array<[Method, string]> = [
    ['POST', '/v2/'],
    ['PUT', '/v2/'],
    ['DELETE', '/v2/'],
    ['PATCH', '/v2/'],
    ['POST', '/v2/_catalog'],
    ['DELETE', '/v2/_catalog'],
    ['POST', '/v2/m/repo/manifests/v1'],
    ['PATCH', '/v2/m/repo/manifests/v1'],
    ['POST', `/v2/m/repo/blobs/${img.config.digest}`],
    ['PUT', `/v2/m/repo/blobs/${img.config.digest}`],
    ['PATCH', `/v2/m/repo/blobs/${img.config.digest}`],
    ['GET', '/v2/m/repo/blobs/uploads/'],
    ['PUT', '/v2/m/repo/blobs/uploads/'],
    ['DELETE', '/v2/m/repo/blobs/uploads/'],
    ['PATCH', '/v2/m/repo/blobs/uploads/'],
    ['POST', uploadLoc],
    ['PUT', '/v2/m/repo/tags/list'],
    ['DELETE', '/v2/m/repo/tags/list'],
    ['POST', '/v2/m/repo/tags/list'],
    ['POST', `/v2/m/repo/referrers/${img.manifest.digest}`],
    ['DELETE', `/v2/m/repo/referrers/${img.manifest.digest}`],
  ];
  for (const [method, url] of wrong) {
    const r = await http(method, `${s.url}${url}`, method === 'GET' ? {} : { headers: { 'content-type': 'application/octet-stream' }, body: 'x' });
    assertError(t, r, 405, 'UNSUPPORTED');
  }
  // Nothing was changed by them.
  t.is((await http('GET', `${s.url}/v2/m/repo/blobs/${img.config.digest}`)).status, 200);
  t.is((await http('GET', `${s.url}${uploadLoc}`)).status, 204);

  // `/` is the status page (status.test.ts covers it, and its 404 when turned off).
  for (const url of ['/v2/foo', '/v2/foo/bar', '/v2/a/b/c/unknown', '/v2/a/blobs', '/v2/a/tags', '/v2/a/tags/other', '/v2/a/manifests', '/v3/', '/v2x/']) {
    const r = await http('GET', `${s.url}${url}`);
    t.is(r.status, 404, url);
    t.true(KNOWN_CODES.has(errorCode(r) ?? ''), `${url}: ${r.body.toString()}`);
  }
  // Methods outside the API (OPTIONS, TRACE) are refused without a 5xx.
  const opt = await rawGet(s.hostPort, 'OPTIONS', '/v2/m/repo/manifests/v1');
  t.true(opt.status >= 400 && opt.status < 500, String(opt.status));
});

test('path traversal attempts are 4xx and create no file outside the data directory', async (t) => {
  const s = await serve(t);
  const marker = `pwned${process.pid}${Date.now()}`;
  const storageRoot = path.join(s.dataDir, 'storage');
  t.is((await pushImage(s.url, 'safe/repo', sampleImage('traversal'), 'v1')).status, 201);
  const up = await http('POST', `${s.url}/v2/safe/repo/blobs/uploads/`);
  const loc = up.header('location')!;
  const body = Buffer.from(`{"schemaVersion":2,"${marker}":true}`);
  const attempts: Array<[string, string, Buffer | undefined]> = [
    ['GET', '/v2/../../../../etc/passwd', undefined],
    ['GET', '/v2/safe/repo/../../../../etc/passwd/manifests/x', undefined],
    ['POST', `/v2/../../${marker}/blobs/uploads/`, body],
    ['POST', `/v2/%2e%2e/%2e%2e/${marker}/blobs/uploads/`, body],
    ['POST', `/v2/%2E%2E%2F%2E%2E%2F${marker}/blobs/uploads/`, body],
    ['POST', `/v2/a%2f..%2f..%2f${marker}/blobs/uploads/`, body],
    ['POST', `/v2/a/%2e%2e/${marker}/blobs/uploads/?digest=sha256:${'0'.repeat(64)}`, body],
    ['PUT', `/v2/safe/repo/manifests/..%2f..%2f${marker}`, body],
    ['PUT', `/v2/safe/repo/manifests/../../${marker}`, body],
    ['PUT', `/v2/safe/repo/manifests/%2e%2e`, body],
    ['PATCH', `/v2/safe/repo/blobs/uploads/..%2f..%2f${marker}`, body],
    ['PATCH', `/v2/safe/repo/blobs/uploads/../../../${marker}`, body],
    ['PATCH', `/v2/safe/repo/blobs/uploads/..`, body],
    ['PUT', `${loc}/../../../${marker}?digest=sha256:${'0'.repeat(64)}`, body],
    ['GET', `/v2/safe/repo/blobs/sha256:..%2f..%2f..%2f${marker}`, undefined],
    ['GET', `/v2/safe/repo/blobs/sha256:../../../../etc/passwd`, undefined],
    ['DELETE', `/v2/safe/repo/blobs/sha256:../../../../${marker}`, undefined],
    ['POST', `/v2/safe/repo/blobs/uploads/?digest=sha256:../../${marker}`, body],
    ['POST', `/v2/safe/repo/blobs/uploads/?mount=sha256:../../${marker}&from=../../..`, body],
    ['POST', `/v2/safe/repo/blobs/uploads/?digest-algorithm=../../${marker}`, body],
    ['GET', `/v2/safe\\..\\..\\${marker}/tags/list`, undefined],
    ['GET', `/v2/./safe/repo/manifests/v1`, undefined],
    ['GET', `/v2/safe/./repo/manifests/v1`, undefined],
    ['GET', `http://evil.example/v2/../../${marker}`, undefined],
  ];
  for (const [method, target, b] of attempts) {
    const headers = b ? ['Content-Type: application/octet-stream'] : [];
    const r = await rawGet(s.hostPort, method, target, headers, b);
    t.true(r.status >= 400 && r.status < 500 && r.status !== 416, `${method} ${target} -> ${r.status}`);
  }
  // Query values that are only compared, never used as paths: a normal answer is fine.
  const listed = await rawGet(s.hostPort, 'GET', `/v2/safe/repo/tags/list?last=../../${marker}`);
  t.is(listed.status, 200);
  t.deepEqual(JSON.parse(listed.body.toString()), { name: 'safe/repo', tags: ['v1'] });
  // NUL and other control bytes in the request target.
  for (const target of ['/v2/safe\0/repo/manifests/v1', '/v2/safe/repo/manifests/v1\0', `/v2/safe/repo/blobs/uploads/\0${marker}`]) {
    const r = await rawGet(s.hostPort, 'GET', target);
    t.true(r.status >= 400 && r.status < 500, `${JSON.stringify(target)} -> ${r.status}`);
  }
  // Nothing outside storage/, no marker anywhere, nothing in the temp dir next to ours.
  const tree = await listTree(s.dataDir);
  t.deepEqual(tree.filter((p) => p !== 'storage' && !p.startsWith(`storage${path.sep}`)), []);
  t.deepEqual(tree.filter((p) => p.includes(marker)), []);
  const siblings = await fs.readdir(os.tmpdir());
  t.deepEqual(siblings.filter((n) => n.includes(marker)), []);
  t.deepEqual((await listTree(storageRoot)).filter((p) => p.includes('..')), []);
  // The legitimate content is intact.
  t.is((await http('GET', `${s.url}/v2/safe/repo/manifests/v1`, { headers: { accept: OCI_MANIFEST } })).status, 200);
});

test('error responses: JSON envelope with a known code, exact Content-Type, no body on HEAD, never a 5xx', async (t) => {
  const s = await serve(t);
  t.is((await pushImage(s.url, 'env/repo', sampleImage('envelope'), 'v1')).status, 201);
  const probes: Array<[Method, string, Record<string, string>?, string?]> = [
    ['GET', '/v2/env/repo/manifests/nope'],
    ['GET', '/v2/env/repo/blobs/sha256:totallywrong'],
    ['GET', '/v2/Bad_Name/tags/list'],
    ['GET', '/v2/env/repo/tags/list?n=-1'],
    ['PUT', '/v2/env/repo/manifests/v2', { 'content-type': OCI_MANIFEST }, '{'],
    ['PATCH', '/v2/env/repo/blobs/uploads/00000000-0000-4000-8000-000000000000', { 'content-type': 'application/octet-stream' }, 'x'],
    ['DELETE', '/v2/env/repo/manifests/nope'],
    ['POST', '/v2/env/repo/manifests/v1', {}, 'x'],
    ['GET', `/v2/env/repo/manifests/${'x'.repeat(5000)}`],
    ['GET', `/v2/${'a/'.repeat(3000)}b/manifests/v1`],
  ];
  for (const [method, url, headers, body] of probes) {
    const r: Res = await http(method, `${s.url}${url}`, { headers, body });
    t.true(r.status >= 400 && r.status < 500, `${method} ${url.slice(0, 60)} -> ${r.status}`);
    if (r.body.length > 0) {
      t.is(r.header('content-type'), 'application/json', url.slice(0, 60));
      const doc = r.json<{ errors: Array<{ code: string; message?: unknown }> }>();
      t.true(doc.errors.length >= 1);
      for (const e of doc.errors) {
        t.regex(e.code, /^[A-Z_]+$/);
        t.true(KNOWN_CODES.has(e.code), e.code);
        t.true(e.message === undefined || typeof e.message === 'string');
      }
    }
    if (method === 'GET') {
      const h = await http('HEAD', `${s.url}${url}`);
      t.is(h.status, r.status, `HEAD ${url.slice(0, 60)}`);
      t.is(h.body.length, 0);
    }
  }
  // Protocol-level garbage is answered by node with a 4xx, and the server keeps serving.
  const badLen = await rawGet(s.hostPort, 'PUT', '/v2/env/repo/manifests/v3', ['Content-Length: abc']);
  t.true(badLen.status >= 400 && badLen.status < 500, String(badLen.status));
  const bigHeader = await rawGet(s.hostPort, 'GET', '/v2/', [`X-Big: ${'a'.repeat(20_000)}`]);
  t.true(bigHeader.status >= 400 && bigHeader.status < 500, String(bigHeader.status));
  t.is((await http('GET', `${s.url}/v2/`)).status, 200);
});

test('a client that cuts its request body and closes is no server error (no 5xx log, server healthy)', async (t) => {
  const s = await serve(t);
  const img = sampleImage('cut-body');
  const digest = img.layers[0]!.digest;
  const [host, port] = s.hostPort.split(':');
  // Monolithic and PATCH uploads with a declared length, a few bytes of body, then a close:
  // the server may be between two steps (free-space check, body pipe) when the reset lands.
  const session = await http('POST', `${s.url}/v2/cut/body/blobs/uploads/`);
  const targets = [`/v2/cut/body/blobs/uploads/?digest=${digest}`, session.header('location')!];
  for (let i = 0; i < 40; i++) {
    const target = targets[i % 2]!;
    const method = i % 2 === 0 ? 'POST' : 'PATCH';
    await new Promise<void>((resolve) => {
      const sock = net.connect(Number(port), host, () => {
        sock.write(`${method} ${target} HTTP/1.1\r\nHost: ${s.hostPort}\r\nContent-Type: application/octet-stream\r\nContent-Length: ${1_000_000 + i}\r\n\r\n`);
        sock.write(Buffer.alloc(100 + i * 37, 7));
        setImmediate(() => sock.destroy());
      });
      sock.on('close', () => resolve());
      sock.on('error', () => undefined);
    });
  }
  t.is((await http('GET', `${s.url}/healthz`)).status, 200);
  t.is((await http('GET', `${s.url}/v2/cut/body/blobs/${digest}`)).status, 404, 'nothing half-written is served');
});
