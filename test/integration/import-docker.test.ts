/**
 * POST /api/v1/import with `docker save` archives built in memory (real sockets, in-process
 * server): the legacy layout (moby save.go: `<v1id>/layer.tar`, symlinked repeated layers)
 * and the Docker 25+ one (OCI layout + manifest.json); names from RepoTags under
 * namespace= or repository=; the built manifest (README rule) served back byte-exact; bad
 * archives refused with a clear 400/413 leaving nothing behind.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip, gzipSync } from 'node:zlib';
import { http, sha256 } from '../helpers/http.js';
import { startServer, tempDir } from '../helpers/server.js';
import { type Image, MediaTypes, allBlobsOf, makeImage, makeLayer, randomBytes, randomStream } from '../fixtures/images.js';
import { assertError, OCI_MANIFEST } from './_support.js';
import {
  CONTAINERD_NAME, REF_NAME, type Entry, type ImportResult, type SavedImage, assertNothingStored, builtManifest, docker25Entries, dockerSaveEntries, gzip, importMultipart, importRaw,
  layoutEntries, packTar, rssGrowth, sampleIndex, streamTar,
} from './_import.js';

const layer = (seed: string, kib = 8) => makeLayer([{ name: `etc/${seed}`, content: randomBytes(kib * 1024, seed) }], { gzip: false });

/** Two images sharing a base layer; the first repeats a layer (moby writes a symlink for it). */
function sample(seed: string): { a: Image; b: Image } {
  const base = layer(`${seed}-base`);
  const a = makeImage({ layers: [base, layer(`${seed}-a`), base] });
  const b = makeImage({ arch: 'arm64', layers: [base, layer(`${seed}-b`, 32)] });
  return { a, b };
}

/** `repo:tag` serves `image` under the built manifest: manifest bytes exact, config verbatim, layers by diff_id. */
async function assertBuiltServed(t: ExecutionContext, base: string, repo: string, tag: string, image: Image): Promise<void> {
  const expected = builtManifest(image);
  const m = await http('GET', `${base}/v2/${repo}/manifests/${tag}`, { headers: { accept: OCI_MANIFEST } });
  t.is(m.status, 200, `${repo}:${tag}`);
  t.is(m.header('content-type'), OCI_MANIFEST);
  t.is(m.header('docker-content-digest'), sha256(expected));
  t.true(m.body.equals(expected), `${repo}:${tag}: the built manifest, byte for byte`);
  const config = await http('GET', `${base}/v2/${repo}/blobs/${image.config.digest}`);
  t.true(config.body.equals(image.config.bytes), 'config bytes unchanged');
  for (const l of image.layers) {
    const r = await http('GET', `${base}/v2/${repo}/blobs/${l.digest}`);
    t.is(r.status, 200);
    t.true(r.body.equals(l.bytes), `layer ${l.digest} served as the uncompressed tar (digest = diff_id)`);
  }
}

const line = (r: ImportResult) => `${r.name}:${r.tag}@${r.digest}${r.built ? ' built' : ''}`;

test('legacy docker save: symlinked repeated layers, several RepoTags re-homed under namespace=, the built manifest served byte-exact', async (t) => {
  const s = await startServer(t);
  const { a, b } = sample('legacy');
  const saved: SavedImage[] = [
    { image: a, repoTags: ['busybox:latest', 'busybox:1.36', 'quay.io/acme/tool:2'] },
    { image: b, repoTags: ['docker.io/library/busybox:arm', 'localhost:5000/team/app:dev'] },
  ];
  const entries = dockerSaveEntries(saved);
  t.true(entries.some((e) => e.type === 'symlink' && /^\.\.\/[a-f0-9]{64}\/layer\.tar$/.test(e.linkname ?? '')), 'the fixture has moby\'s symlinked layer');
  const res = await importRaw(s.url, 'namespace=mirror', await packTar(entries));
  t.is(res.status, 200, res.body.toString());
  const images = res.json<{ images: ImportResult[] }>().images;
  const [da, db] = [sha256(builtManifest(a)), sha256(builtManifest(b))];
  t.deepEqual(images.map(line), [
    `mirror/library/busybox:latest@${da} built`,
    `mirror/library/busybox:1.36@${da} built`,
    `mirror/acme/tool:2@${da} built`,
    `mirror/library/busybox:arm@${db} built`,
    `mirror/team/app:dev@${db} built`,
  ]);
  t.is(images[0]!.mediaType, OCI_MANIFEST);
  // a: config + 2 distinct layers; the second tag in the same repository finds them stored.
  t.deepEqual(images[0]!.blobs, { new: 3, existing: 0 });
  t.deepEqual(images[1]!.blobs, { new: 0, existing: 3 });
  for (const [repo, tag, image] of [['mirror/library/busybox', 'latest', a], ['mirror/library/busybox', '1.36', a], ['mirror/acme/tool', '2', a], ['mirror/library/busybox', 'arm', b], ['mirror/team/app', 'dev', b]] as const) {
    await assertBuiltServed(t, s.url, repo, tag, image);
  }
  // Deterministic: the same archive again (gzip, multipart) gives the same digests, only links.
  const again = await importMultipart(s.url, 'namespace=mirror', [gzip(await packTar(entries))]);
  t.is(again.status, 200, again.body.toString());
  const second = again.json<{ images: ImportResult[] }>().images;
  t.deepEqual(second.map(line), images.map(line));
  t.true(second.every((r) => r.blobs.new === 0 && r.newBytes === 0));
});

test('repository= takes only the tags; an untagged image needs repository= and is then stored by digest', async (t) => {
  const s = await startServer(t);
  const { a, b } = sample('repo');
  const archive = await packTar(dockerSaveEntries([{ image: a, repoTags: ['busybox:1', 'quay.io/x/y:2'] }, { image: b, repoTags: [] }]));
  const res = await importRaw(s.url, 'repository=apps/one', archive);
  t.is(res.status, 200, res.body.toString());
  t.deepEqual(res.json<{ images: ImportResult[] }>().images.map(line), [
    `apps/one:1@${sha256(builtManifest(a))} built`,
    `apps/one:2@${sha256(builtManifest(a))} built`,
    `apps/one:null@${sha256(builtManifest(b))} built`,
  ]);
  await assertBuiltServed(t, s.url, 'apps/one', '2', a);
  await assertBuiltServed(t, s.url, 'apps/one', sha256(builtManifest(b)), b);
  const tags = await http('GET', `${s.url}/v2/apps/one/tags/list`);
  t.deepEqual(tags.json<{ tags: string[] }>().tags.sort(), ['1', '2']);

  // Under namespace= the untagged image has no name: a 400 saying what to do, nothing stored.
  const s2 = await startServer(t);
  const noName = await importRaw(s2.url, 'namespace=mirror', archive);
  assertError(t, noName, 400, 'MANIFEST_INVALID');
  t.regex(noName.body.toString(), /no RepoTags.*repository=/);
  await assertNothingStored(t, s2, 'mirror/library/busybox', 'untagged under namespace=');
});

test('Docker 25+ archive: its own manifest kept (digest unchanged); shuffled layers (25.0.0) and images missing from index.json (<25.0.3) get a built one', async (t) => {
  const s = await startServer(t);
  const { a, b } = sample('d25');
  const res = await importRaw(s.url, 'namespace=mirror', await packTar(docker25Entries([{ image: a, repoTags: ['alpine:3.19', 'alpine:latest'] }, { image: b, repoTags: ['quay.io/acme/b:1'], indexed: false }])));
  t.is(res.status, 200, res.body.toString());
  t.deepEqual(res.json<{ images: ImportResult[] }>().images.map(line), [
    `mirror/library/alpine:3.19@${a.manifest.digest}`,
    `mirror/library/alpine:latest@${a.manifest.digest}`,
    `mirror/acme/b:1@${sha256(builtManifest(b))} built`,
  ]);
  const kept = await http('GET', `${s.url}/v2/mirror/library/alpine/manifests/3.19`, { headers: { accept: OCI_MANIFEST } });
  t.true(kept.body.equals(a.manifest.bytes), 'Docker\'s manifest bytes unchanged');
  await assertBuiltServed(t, s.url, 'mirror/acme/b', '1', b);

  // 25.0.0: the OCI manifest lists the layers in another order than manifest.json/diff_ids.
  const other = makeImage({ layers: [layer('shuffle-1'), layer('shuffle-2')] });
  const shuffledManifest = JSON.parse(other.manifest.bytes.toString()) as { layers: unknown[] };
  shuffledManifest.layers.reverse();
  const bytes = Buffer.from(JSON.stringify(shuffledManifest));
  const shuffled: Image = { ...other, manifest: { digest: sha256(bytes), size: bytes.length, mediaType: MediaTypes.ociManifest, bytes } };
  const entries = docker25Entries([{ image: shuffled, repoTags: ['shuffled:1'] }]);
  const r2 = await importRaw(s.url, 'repository=apps/shuffled', await packTar(entries));
  t.is(r2.status, 200, r2.body.toString());
  t.deepEqual(r2.json<{ images: ImportResult[] }>().images.map(line), [`apps/shuffled:1@${sha256(builtManifest(other))} built`]);
  await assertBuiltServed(t, s.url, 'apps/shuffled', '1', other);
});

test('containerd-style export (OCI layout + manifest.json for one platform): the whole index kept, or the one platform present; other index.json entries by their annotations', async (t) => {
  const s = await startServer(t);
  const idx = sampleIndex('ctd');
  const amd = idx.images[0]!.image;
  const extra = makeImage({ layers: [makeLayer([{ name: 'extra', content: 'extra image' }])] });
  const hex = (d: string) => d.slice(7);
  const manifestJson = { name: 'manifest.json', content: JSON.stringify([{ Config: `blobs/sha256/${hex(amd.config.digest)}`, RepoTags: ['docker.io/library/multi:1'], Layers: amd.layers.map((l) => `blobs/sha256/${hex(l.digest)}`) }]) };
  const roots: Array<{ root: Image['manifest']; annotations: Record<string, string> }> = [
    { root: idx.index, annotations: { [CONTAINERD_NAME]: 'docker.io/library/multi:1', [REF_NAME]: '1' } },
    { root: extra.manifest, annotations: { [CONTAINERD_NAME]: 'quay.io/acme/extra:2' } },
  ];
  const all = await importRaw(s.url, 'namespace=mirror', await packTar([...layoutEntries(roots, [...allBlobsOf(idx), extra.config, ...extra.layers]), manifestJson]));
  t.is(all.status, 200, all.body.toString());
  t.deepEqual(all.json<{ images: ImportResult[] }>().images.map(line), [`mirror/library/multi:1@${idx.index.digest}`, `mirror/acme/extra:2@${extra.manifest.digest}`]);
  const arm = idx.images[1]!.image;
  const armManifest = await http('GET', `${s.url}/v2/mirror/library/multi/manifests/${arm.manifest.digest}`, { headers: { accept: OCI_MANIFEST } });
  t.true(armManifest.body.equals(arm.manifest.bytes), 'every platform kept');

  // Only amd64's blobs in the archive (a one-platform save of a multi-platform image): amd64's manifest.
  const s2 = await startServer(t);
  const onlyAmd = [amd.manifest, amd.config, ...amd.layers];
  const one = await importRaw(s2.url, 'namespace=mirror', await packTar([...layoutEntries(roots.slice(0, 1), onlyAmd), manifestJson]));
  t.is(one.status, 200, one.body.toString());
  t.deepEqual(one.json<{ images: ImportResult[] }>().images.map(line), [`mirror/library/multi:1@${amd.manifest.digest}`]);
});

test('legacy archive with a gzip-compressed layer file: built with the +gzip type, digest of the file, diff_id checked on its content', async (t) => {
  const s = await startServer(t);
  const { a } = sample('gz');
  const entries = dockerSaveEntries([{ image: a, repoTags: ['gz:1'] }]);
  const target = entries.find((e) => e.name.endsWith('/layer.tar') && e.type === undefined)!;
  const gz = gzipSync(target.content as Buffer);
  const j = a.layers.findIndex((l) => l.bytes.equals(target.content as Buffer));
  const expected: Image = { ...a, layers: a.layers.map((l) => (l.digest === a.layers[j]!.digest ? { digest: sha256(gz), size: gz.length, mediaType: MediaTypes.ociLayerGzip, bytes: gz } : l)) };
  const res = await importRaw(s.url, 'repository=apps/gz', await packTar(entries.map((e) => (e === target ? { ...e, content: gz } : e))));
  t.is(res.status, 200, res.body.toString());
  t.deepEqual(res.json<{ images: ImportResult[] }>().images.map(line), [`apps/gz:1@${sha256(builtManifest(expected))} built`]);
  await assertBuiltServed(t, s.url, 'apps/gz', '1', expected);
  // gzip of other content than the diff_id is still refused.
  const wrong = gzipSync(Buffer.concat([target.content as Buffer, Buffer.alloc(512)]));
  const bad = await importRaw(s.url, 'repository=apps/gz2', await packTar(entries.map((e) => (e === target ? { ...e, content: wrong } : e))));
  assertError(t, bad, 400, 'DIGEST_INVALID');
});

test('a 128 MiB gzip layer in a legacy archive: staged and its diff_id checked by streaming, RSS bounded', async (t) => {
  const s = await startServer(t, { log: { level: 'warn' } });
  const dir = await tempDir(t);
  const size = 128 * 1024 * 1024;
  // The layer (its bytes need not be a tar for the importer) gzipped to a file, its diff_id hashed on the way.
  const h = createHash('sha256');
  const gzFile = path.join(dir, 'layer.tar.gz');
  await pipeline(randomStream(size, 'big-docker'), async function* (src: AsyncIterable<Buffer>) {
    for await (const c of src) {
      h.update(c);
      yield c;
    }
  }, createGzip({ level: 1 }), createWriteStream(gzFile));
  const diffId = `sha256:${h.digest('hex')}`;
  const gzSize = (await fs.stat(gzFile)).size;
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [diffId] } }));
  const configName = `${sha256(config).slice(7)}.json`;
  const archive = streamTar([
    { name: configName, content: config },
    { name: 'v1id/layer.tar', size: gzSize, stream: () => createReadStream(gzFile) },
    { name: 'manifest.json', content: JSON.stringify([{ Config: configName, RepoTags: ['big:1'], Layers: ['v1id/layer.tar'] }]) },
  ]);
  const { result: res, grewMiB: grew } = await rssGrowth(() => importRaw(s.url, 'namespace=m', archive.body));
  await archive.done;
  t.is(res.status, 200, res.body.toString());
  const r = res.json<{ images: ImportResult[] }>().images[0]!;
  t.like(r, { name: 'm/library/big', tag: '1', built: true, newBytes: gzSize + config.length });
  t.log(`RSS growth during a ${size >> 20} MiB (gzip ${(gzSize / 1048576).toFixed(0)} MiB) docker-save import (client and server in one process): ${grew.toFixed(1)} MiB`);
  t.true(grew < 96, `RSS grew ${grew.toFixed(1)} MiB`);
  const m = await http('GET', `${s.url}/v2/m/library/big/manifests/1`, { headers: { accept: OCI_MANIFEST } });
  t.like(JSON.parse(m.body.toString()).layers[0], { mediaType: MediaTypes.ociLayerGzip, size: gzSize });
});

test('bad docker-save archives: a clear 400 (413 over a limit) naming the problem; no tag, no blob, no temp file', async (t) => {
  const s = await startServer(t);
  const { a } = sample('bad');
  const good = dockerSaveEntries([{ image: a, repoTags: ['bad:1'] }]);
  const layerFile = good.find((e) => e.name.endsWith('/layer.tar') && e.type === undefined)!;
  const link = good.find((e) => e.type === 'symlink')!;
  const replace = (name: string, e: Partial<Entry> | null) => good.flatMap((g) => (g.name === name ? (e ? [{ ...g, ...e } as Entry] : []) : [g]));
  const manifestOf = () => JSON.parse(good.find((e) => e.name === 'manifest.json')!.content as string) as Array<{ Config: string; Layers: string[] }>;
  const withManifest = (edit: (m: Array<{ Config: string; Layers: string[]; RepoTags?: unknown }>) => void) => {
    const m = manifestOf();
    edit(m);
    return replace('manifest.json', { content: JSON.stringify(m) });
  };
  const j = manifestOf()[0]!.Layers.indexOf(layerFile.name);
  const flipped = Buffer.from(layerFile.content as Buffer);
  flipped[flipped.length >> 1]! ^= 0x01; // still a tar-sized file, no longer the diff_id
  const cases: Array<{ what: string; entries: Entry[]; status: number; code: string; message: RegExp }> = [
    { what: 'manifest.json naming a missing layer', entries: replace(layerFile.name, null), status: 400, code: 'MANIFEST_BLOB_UNKNOWN', message: new RegExp(`layer ${j} .*${layerFile.name}.*not in the archive`) },
    { what: 'manifest.json naming a missing config', entries: good.filter((e) => !e.name.endsWith('.json') || e.name === 'manifest.json'), status: 400, code: 'MANIFEST_BLOB_UNKNOWN', message: /config.*not in the archive/ },
    { what: 'a symlinked layer pointing at a missing file', entries: replace(link.name, { linkname: '../nowhere/layer.tar' }), status: 400, code: 'MANIFEST_BLOB_UNKNOWN', message: /not in the archive/ },
    { what: 'a layer not matching its diff_id', entries: replace(layerFile.name, { content: flipped }), status: 400, code: 'DIGEST_INVALID', message: new RegExp(`${layerFile.name}.*does not hash to its diff_id ${a.layers[j]!.digest}`) },
    { what: 'a symlink escaping the archive', entries: replace(link.name, { linkname: '../../etc/passwd' }), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /symlink pointing outside the archive/ },
    { what: 'an absolute symlink', entries: replace(link.name, { linkname: '/etc/passwd' }), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /outside the archive/ },
    { what: 'a hard link escaping the archive', entries: replace(link.name, { type: 'link', linkname: '../x' }), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /hard link pointing outside/ },
    {
      what: 'a symlink loop',
      entries: [...replace(link.name, { linkname: 'loop-b' }), { name: `${link.name.split('/')[0]}/loop-b`, type: 'symlink', linkname: 'layer.tar' }],
      status: 400, code: 'BLOB_UPLOAD_INVALID', message: /link loop/,
    },
    { what: 'manifest.json as a symlink', entries: [...good.filter((e) => e.name !== 'manifest.json'), { name: 'manifest.json', type: 'symlink', linkname: 'repositories' }], status: 400, code: 'BLOB_UPLOAD_INVALID', message: /regular files/ },
    { what: 'duplicate manifest.json', entries: [...good, { name: 'manifest.json', content: '[]' }], status: 400, code: 'BLOB_UPLOAD_INVALID', message: /duplicate entry manifest\.json/ },
    { what: 'duplicate manifest.json (./ prefix)', entries: [...good, { name: './manifest.json', content: '[]' }], status: 400, code: 'BLOB_UPLOAD_INVALID', message: /duplicate/ },
    { what: 'huge manifest.json', entries: replace('manifest.json', { content: Buffer.alloc(5 * 1024 * 1024, 0x20) }), status: 413, code: 'MANIFEST_INVALID', message: /manifest\.json exceeds/ },
    { what: 'manifest.json not JSON', entries: replace('manifest.json', { content: '[{' }), status: 400, code: 'MANIFEST_INVALID', message: /manifest\.json is not valid JSON/ },
    { what: 'manifest.json empty', entries: replace('manifest.json', { content: '[]' }), status: 400, code: 'MANIFEST_INVALID', message: /non-empty array/ },
    { what: 'manifest.json with a traversal path', entries: withManifest((m) => (m[0]!.Config = '../../etc/passwd')), status: 400, code: 'BLOB_UPLOAD_INVALID', message: /manifest\.json names entry 0's config "\.\.\/\.\.\/etc\/passwd": .*escapes/ },
    { what: 'a layer count not matching diff_ids', entries: withManifest((m) => m[0]!.Layers.pop()), status: 400, code: 'MANIFEST_INVALID', message: /diff_ids/ },
    { what: 'a RepoTag without a tag', entries: withManifest((m) => (m[0]!.RepoTags = ['busybox@sha256:' + 'a'.repeat(64)])), status: 400, code: 'MANIFEST_INVALID', message: /RepoTag/ },
  ];
  for (const c of cases) {
    const res = await importRaw(s.url, 'namespace=mirror', await packTar(c.entries));
    t.log(`${c.what}: ${res.status} ${res.body.toString().slice(0, 200)}`);
    assertError(t, res, c.status, c.code);
    t.regex(res.json<{ errors: Array<{ message: string }> }>().errors[0]!.message, c.message, c.what);
    await assertNothingStored(t, s, 'mirror/library/bad', c.what);
  }
  const ok = await importRaw(s.url, 'namespace=mirror', await packTar(good));
  t.is(ok.status, 200, ok.body.toString());
  await assertBuiltServed(t, s.url, 'mirror/library/bad', '1', a);
});
