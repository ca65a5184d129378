/**
 * POST /api/v1/import beyond plain and gzip OCI layouts (real sockets, in-process server):
 * xz-compressed archives (the system `xz` writes them), bundles of archives (plain, gzip
 * and xz, inside a plain, gzip or xz tar), NDJSON progress over raw and multipart bodies,
 * and the `regmirror import` CLI against a running server.
 */
import test from 'ava';
import fs from 'node:fs/promises';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { Readable } from 'node:stream';
import { crc32 } from 'node:zlib';
import { http } from '../helpers/http.js';
import { startServer, tempDir } from '../helpers/server.js';
import { basic, writeHtpasswd } from '../helpers/authn.js';
import { runCli } from '../helpers/cli.js';
import { makeImage, makeLayer, randomBytes } from '../fixtures/images.js';
import { assertError } from './_support.js';
import {
  NDJSON, REF_NAME, type ImportEvent, type ImportResult, assertNothingStored, assertServed, bigLayerArchive, bundleArchive, filesUnder, gzip, importMultipart, importRaw,
  indexArchive, layoutEntries, ndjson, packTar, rssGrowth, sampleIndex, xz,
} from './_import.js';

type Answer = { images: ImportResult[]; errors?: Array<{ archive: number; entry?: string; status: number; error: { code: string; message: string } }> };

/** An xz archive whose (single) block header asks for a `dictByte`-coded dictionary (CRC fixed up). */
function withDictionary(archive: Buffer, dictByte: number): Buffer {
  const b = Buffer.from(archive);
  const start = 12; // after the stream header
  const size = (b[start]! + 1) * 4;
  // flags without sizes (single-threaded xz): filter id 0x21 (LZMA2), 1 property byte
  if (b[start + 1] !== 0x00 || b[start + 2] !== 0x21 || b[start + 3] !== 0x01) throw new Error('unexpected xz block header');
  b[start + 4] = dictByte;
  b.writeUInt32LE(crc32(b.subarray(start, start + size - 4)), start + size - 4);
  return b;
}

test('xz: a plain archive imports raw and multipart; corrupt, truncated, huge-dictionary xz and zstd/bzip2 are clear 400s leaving nothing', async (t) => {
  const s = await startServer(t);
  const a = sampleIndex('xz-a');
  const b = sampleIndex('xz-b');
  const archiveA = await indexArchive(a, 'docker.io/library/xa:1');
  const raw = await importRaw(s.url, 'namespace=mirror', xz(archiveA), 'application/x-xz');
  t.is(raw.status, 200, raw.body.toString());
  t.like(raw.json<Answer>().images[0], { name: 'mirror/library/xa', tag: '1', digest: a.index.digest });
  await assertServed(t, s.url, 'mirror/library/xa', '1', a);
  const mp = await importMultipart(s.url, 'namespace=mirror', [xz(await indexArchive(b, 'docker.io/library/xb:2'), ['-9'])]);
  t.is(mp.status, 200, mp.body.toString());
  await assertServed(t, s.url, 'mirror/library/xb', '2', b);

  const clean = await startServer(t); // the refusals below must leave no blob at all
  const bad = sampleIndex('xz-bad');
  const good = xz(await indexArchive(bad, 'docker.io/library/bad:1'));
  const flipped = Buffer.from(good);
  flipped[flipped.length >> 1]! ^= 0x55;
  const cases: Array<{ what: string; body: Buffer; message: RegExp }> = [
    { what: 'flipped byte in the xz stream', body: flipped, message: /corrupt/ },
    { what: 'truncated xz', body: good.subarray(0, good.length >> 1), message: /truncated|corrupt/ },
    { what: 'xz header only', body: good.subarray(0, 40), message: /xz stream is corrupt/ },
    { what: 'dictionary over 64 MiB', body: withDictionary(good, 32), message: /dictionary/ },
    { what: 'xz of something else', body: xz(Buffer.from('just text, not a tar\n'.repeat(100))), message: /does not contain a tar/ },
    { what: 'zstd', body: Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(600)]), message: /zstd-compressed archives are not supported/ },
    { what: 'bzip2', body: Buffer.concat([Buffer.from('BZh91AY&SY'), Buffer.alloc(600)]), message: /bzip2-compressed archives are not supported/ },
  ];
  for (const c of cases) {
    const res = await importRaw(clean.url, 'namespace=mirror', c.body, 'application/x-xz');
    assertError(t, res, 400, 'BLOB_UPLOAD_INVALID');
    t.regex(res.json<{ errors: Array<{ message: string }> }>().errors[0]!.message, c.message, c.what);
    t.log(`${c.what}: ${res.body.toString().slice(0, 200)}`);
    await assertNothingStored(t, clean, 'mirror/library/bad', c.what);
  }
  // The decoder slots were all given back: more xz imports than slots still succeed.
  for (let i = 0; i < 4; i++) t.is((await importRaw(clean.url, 'namespace=mirror', good)).status, 200, `xz import ${i} after the failures`);
  await assertServed(t, clean.url, 'mirror/library/bad', '1', bad);
});

test('bundles: tar, tar.gz and tar.xz image archives inside a plain, gzip and xz bundle, one result per image', async (t) => {
  const s = await startServer(t);
  const idx = [sampleIndex('bundle-tar'), sampleIndex('bundle-gz'), sampleIndex('bundle-xz')];
  const inner = [
    { name: 'images/one.tar', body: await indexArchive(idx[0]!, 'gcr.io/anthos/one:1.0') },
    { name: 'images/two.tar.gz', body: gzip(await indexArchive(idx[1]!, 'gcr.io/anthos/two:2.0', { indexFirst: true })) },
    { name: 'images/three.tar.xz', body: xz(await indexArchive(idx[2]!, 'gcr.io/anthos/three:3.0')) },
  ];
  const plain = await bundleArchive(inner, [{ name: 'bundle/README', content: 'not an archive: skipped' }]);
  for (const [what, body, ns] of [['plain', plain, 'p'], ['gzip', gzip(plain), 'g'], ['xz', xz(plain), 'x']] as const) {
    const res = await importRaw(s.url, `namespace=${ns}`, body);
    t.is(res.status, 200, `${what}: ${res.body.toString()}`);
    const answer = res.json<Answer>();
    t.is(answer.errors, undefined, what);
    t.deepEqual(
      answer.images.map((i) => [i.entry, `${i.name}:${i.tag}@${i.digest}`]),
      inner.map((a, i) => [`bundle/${a.name}`, `${ns}/anthos/${['one', 'two', 'three'][i]}:${i + 1}.0@${idx[i]!.index.digest}`]),
      what,
    );
    for (const [i, name] of ['one', 'two', 'three'].entries()) await assertServed(t, s.url, `${ns}/anthos/${name}`, `${i + 1}.0`, idx[i]!);
  }
  t.deepEqual(await filesUnder(path.join(s.dataDir, 'storage', 'tmp')), [], 'no temp file left');
});

test('bundles: a corrupt inner archive fails alone (named), the others import; nothing of it stored', async (t) => {
  const s = await startServer(t);
  const ok1 = sampleIndex('inner-ok1');
  const ok2 = sampleIndex('inner-ok2');
  const broken = await indexArchive(sampleIndex('inner-broken'), 'x/broken:1');
  const bundle = await bundleArchive([
    { name: 'a.tar', body: await indexArchive(ok1, 'x/ok1:1') },
    { name: 'b.tar.xz', body: xz(broken).subarray(0, 700) },
    { name: 'c.tar.gz', body: gzip(await indexArchive(ok2, 'x/ok2:1')) },
  ]);
  const res = await importRaw(s.url, 'namespace=m', xz(bundle));
  t.is(res.status, 200, res.body.toString());
  const answer = res.json<Answer>();
  t.deepEqual(answer.images.map((i) => i.name), ['m/x/ok1', 'm/x/ok2']);
  t.is(answer.errors?.length, 1);
  t.like(answer.errors![0], { archive: 0, entry: 'bundle/b.tar.xz', status: 400, error: { code: 'BLOB_UPLOAD_INVALID' } });
  t.regex(answer.errors![0]!.error.message, /^bundle entry bundle\/b\.tar\.xz: .*(truncated|corrupt)/);
  await assertServed(t, s.url, 'm/x/ok1', '1', ok1);
  await assertServed(t, s.url, 'm/x/ok2', '1', ok2);
  const catalog = (await http('GET', `${s.url}/v2/_catalog`)).json<{ repositories: string[] }>().repositories;
  t.false(catalog.includes('m/x/broken'));
  t.deepEqual(await filesUnder(path.join(s.dataDir, 'storage', 'tmp')), []);

  // Every inner archive failing: the answer is the (first) error itself, nothing stored.
  const s2 = await startServer(t);
  const allBad = await bundleArchive([{ name: 'b1.tar', body: broken.subarray(0, 1500) }, { name: 'b2.tar.gz', body: gzip(broken).subarray(0, 900) }]);
  const res2 = await importRaw(s2.url, 'namespace=m', allBad);
  assertError(t, res2, 400, 'BLOB_UPLOAD_INVALID');
  t.regex(res2.body.toString(), /bundle entry bundle\/b1\.tar/);
  await assertNothingStored(t, s2, 'm/x/broken', 'all inner archives bad');
});

/** The checks every NDJSON answer must pass: progress lines well formed and rising, done last. */
function checkStream(t: import('ava').ExecutionContext, events: ImportEvent[], sizes: number[]): void {
  const last = events.at(-1)!;
  t.is(last.event, 'done');
  t.is(events.filter((e) => e.event === 'done').length, 1);
  for (const [i, size] of sizes.entries()) {
    const bytes = events.filter((e) => e.event === 'progress' && e.archive === i).map((e) => e.bytes as number);
    t.deepEqual([...bytes].sort((x, y) => x - y), bytes, 'progress only rises');
    t.true(bytes.every((n) => n > 0 && n <= size), `progress within archive ${i}'s ${size} bytes`);
  }
  t.is(last.images, events.filter((e) => e.event === 'image').length);
  t.is(last.failed, events.filter((e) => e.event === 'error').length);
}

test('NDJSON: raw body progress, image and done lines; a bad archive is an error line; request errors stay plain', async (t) => {
  const s = await startServer(t, { log: { level: 'warn' } });
  // ~24 MiB of incompressible layer: several progress lines on any machine that takes > 0.5 s.
  const big = makeImage({ layers: [makeLayer([{ name: 'big', content: randomBytes(24 * 1024 * 1024, 'ndjson-big') }], { gzip: false })] });
  const archive = await packTar(layoutEntries([{ root: big.manifest, annotations: { [REF_NAME]: 'x/big:1' } }], [big.config, ...big.layers]));
  const res = await importRaw(s.url, 'namespace=n', archive, 'application/x-tar', { accept: NDJSON });
  t.is(res.status, 200);
  t.is(res.header('content-type'), NDJSON);
  const events = ndjson(res.body);
  checkStream(t, events, [archive.length]);
  t.true(events.filter((e) => e.event === 'progress').length >= 1, 'progress appears');
  t.deepEqual(events.filter((e) => e.event !== 'progress').map((e) => e.event), ['image', 'done']);
  t.like(events.find((e) => e.event === 'image'), { archive: 0, name: 'n/x/big', tag: '1', digest: big.manifest.digest, blobs: { new: 2, existing: 0 } });
  t.like(events.at(-1), { event: 'done', images: 1, failed: 0 });

  const bad = await importRaw(s.url, 'namespace=n', archive.subarray(0, archive.length >> 1), 'application/x-tar', { accept: NDJSON });
  t.is(bad.status, 200);
  const badEvents = ndjson(bad.body);
  checkStream(t, badEvents, [archive.length]);
  t.like(badEvents.find((e) => e.event === 'error'), { archive: 0, status: 400, error: { code: 'BLOB_UPLOAD_INVALID' } });
  t.like(badEvents.at(-1), { event: 'done', images: 0, failed: 1 });

  // Parameters are checked before anything is streamed: a plain OCI error.
  assertError(t, await importRaw(s.url, '', archive, 'application/x-tar', { accept: NDJSON }), 400, 'NAME_INVALID');
  assertError(t, await importRaw(s.url, 'namespace=n', archive, 'text/plain', { accept: NDJSON }), 415, 'UNSUPPORTED');
});

test('NDJSON multipart: a failing part is an error line and later parts still import; bundle entries are named', async (t) => {
  const s = await startServer(t);
  const a = sampleIndex('nd-a');
  const c = sampleIndex('nd-c');
  const d = sampleIndex('nd-d');
  const broken = await indexArchive(sampleIndex('nd-b'), 'x/b:1');
  const parts = [
    await indexArchive(a, 'x/a:1'),
    xz(broken).subarray(0, 500),
    xz(await bundleArchive([{ name: 'c.tar', body: await indexArchive(c, 'x/c:1') }, { name: 'bad.tar', body: broken.subarray(0, 2000) }, { name: 'd.tar.gz', body: gzip(await indexArchive(d, 'x/d:1')) }])),
  ];
  const res = await importMultipart(s.url, 'namespace=mp', parts, { accept: NDJSON });
  t.is(res.status, 200);
  const events = ndjson(res.body);
  checkStream(t, events, parts.map((p) => p.length));
  t.deepEqual(
    events.filter((e) => e.event !== 'progress').map((e) => [e.event, e.archive, e.name ?? e.entry ?? null]),
    [
      ['image', 0, 'mp/x/a'],
      ['error', 1, null],
      ['image', 2, 'mp/x/c'],
      ['error', 2, 'bundle/bad.tar'],
      ['image', 2, 'mp/x/d'],
      ['done', undefined, null],
    ],
  );
  t.like(events.at(-1), { images: 3, failed: 2 });
  for (const [repo, idx] of [['mp/x/a', a], ['mp/x/c', c], ['mp/x/d', d]] as const) await assertServed(t, s.url, repo, '1', idx);
  const catalog = (await http('GET', `${s.url}/v2/_catalog`)).json<{ repositories: string[] }>().repositories;
  t.false(catalog.includes('mp/x/b'));
  t.deepEqual(await filesUnder(path.join(s.dataDir, 'storage', 'tmp')), []);
  // Without NDJSON the same form stops at the failing part (as before this protocol).
  assertError(t, await importMultipart(s.url, 'namespace=mp2', parts), 400, 'BLOB_UPLOAD_INVALID');
});

// Serial: the xz decoder limit is per process, and these in-process servers share one, so a
// concurrent xz test could take the slots (503); the RSS figure is cleaner alone, too.
test.serial('a 192 MiB layer in an xz archive (16 MiB dictionary) streams through with RSS bounded', async (t) => {
  const s = await startServer(t, { log: { level: 'warn' } });
  const size = 192 * 1024 * 1024;
  // A 1 MiB random block repeated: the system xz compresses it quickly even on a loaded
  // machine, and the decoder still fills its whole dictionary (matches 1 MiB back).
  const block = randomBytes(1024 * 1024, 'xz-rss');
  const content = () => Readable.from((function* () {
    for (let i = 0; i < size / block.length; i++) yield block;
  })());
  const big = await bigLayerArchive(size, 'xz-rss', 'big/xz:1', content);
  const xzChild = spawn('xz', ['-c', '-T1', '--lzma2=preset=0,dict=16MiB'], { stdio: ['pipe', 'pipe', 'ignore'] });
  t.teardown(() => xzChild.kill('SIGKILL'));
  // If the import fails early, xz exits and the pipe breaks: that shows as the assertions
  // below, not as an uncaught EPIPE that kills the worker.
  xzChild.stdin!.on('error', () => undefined);
  big.tar.pipe(xzChild.stdin!);
  const { result: res, grewMiB } = await rssGrowth(() => importRaw(s.url, 'namespace=m', xzChild.stdout!, 'application/x-xz'));
  await big.fed;
  t.is(res.status, 200, res.body.toString());
  t.like(res.json<Answer>().images[0], { name: 'm/big/xz', tag: '1', newBytes: size + big.config.length });
  t.log(`RSS growth during a ${size >> 20} MiB xz import (client and server in one process): ${grewMiB.toFixed(1)} MiB`);
  // The 16 MiB dictionary, 64 KiB decoder buffers, and what the plain-tar test allows.
  t.true(grewMiB < 96 + 16, `RSS grew ${grewMiB.toFixed(1)} MiB`);
  const head = await http('HEAD', `${s.url}/v2/m/big/xz/blobs/${big.layerDigest}`);
  t.is(head.header('content-length'), String(size));
});

test('CLI: regmirror import streams files, prints JSON lines with file names, exits 1 on any failure, never prints credentials', async (t) => {
  const dir = await tempDir(t, 'regmirror-import-cli-');
  const htpasswd = path.join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, { loader: 'Secret-Pw-42' });
  const s = await startServer(t, { auth: { htpasswd, rules: [{ repositories: '**', pull: ['anonymous'], push: ['loader'], delete: [] }] } });
  const a = sampleIndex('cli-a');
  const b = sampleIndex('cli-b');
  const files = { a: path.join(dir, 'a.tar.xz'), b: path.join(dir, 'b.tar.gz'), bad: path.join(dir, 'bad.tar') };
  await fs.writeFile(files.a, xz(await indexArchive(a, 'x/a:1')));
  await fs.writeFile(files.b, gzip(await indexArchive(b, 'x/b:1')));
  await fs.writeFile(files.bad, (await indexArchive(sampleIndex('cli-bad'), 'x/bad:1')).subarray(0, 3000));
  const user = ['--user', 'loader:Secret-Pw-42'];

  const ok = await runCli(['import', '--mirror', s.url, '--namespace', 'cli', ...user, files.a, files.b], dir);
  t.is(ok.code, 0, ok.stderr + ok.stdout);
  const lines = ok.stdout.trim().split('\n').map((l) => JSON.parse(l) as ImportEvent & { file: string });
  t.deepEqual(
    lines.filter((l) => l.event !== 'progress').map((l) => [l.file, l.event, l.name ?? null]),
    [[files.a, 'image', 'cli/x/a'], [files.a, 'done', null], [files.b, 'image', 'cli/x/b'], [files.b, 'done', null]],
  );
  await assertServed(t, s.url, 'cli/x/a', '1', a);
  await assertServed(t, s.url, 'cli/x/b', '1', b);

  const mixed = await runCli(['import', '--mirror', s.url, '--repository', 'cli/one', ...user, files.bad, files.a, path.join(dir, 'missing.tar')], dir);
  t.is(mixed.code, 1, 'a failing file: exit 1');
  const mixedLines = mixed.stdout.trim().split('\n').map((l) => JSON.parse(l) as ImportEvent & { file: string });
  t.like(mixedLines.find((l) => l.file === files.bad && l.event === 'error'), { status: 400, error: { code: 'BLOB_UPLOAD_INVALID' } });
  t.truthy(mixedLines.find((l) => l.file === files.a && l.event === 'image' && l.name === 'cli/one'), 'the next file still imports');
  t.truthy(mixedLines.find((l) => l.file.endsWith('missing.tar') && l.event === 'error'));

  const denied = await runCli(['import', '--mirror', s.url, '--namespace', 'cli', '--user', 'loader:Wrong-Pw-99', files.a], dir);
  t.is(denied.code, 1);
  t.like(JSON.parse(denied.stdout.trim().split('\n')[0]!), { file: files.a, event: 'error', status: 401 });
  for (const out of [ok, mixed, denied]) {
    t.false(`${out.stdout}${out.stderr}`.includes('Secret-Pw-42') || `${out.stdout}${out.stderr}`.includes('Wrong-Pw-99'), 'no password printed');
    t.false(`${out.stdout}${out.stderr}`.includes(basic('loader', 'Secret-Pw-42').slice(6)), 'no encoded credentials printed');
  }
  const usage = await runCli(['import', '--mirror', s.url, files.a], dir);
  t.is(usage.code, 2, 'neither --namespace nor --repository');
});
