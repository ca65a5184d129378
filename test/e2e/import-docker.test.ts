/**
 * Import of `docker save`-format archives written by the real skopeo (`copy oci:<layout>
 * docker-archive:<file>:<name> --additional-tag ...`: decompressed `<diffid>.tar` layers,
 * legacy `<v1id>/layer.tar` symlinks, manifest.json last), over a raw body and multipart,
 * into an air-gapped mirror; then skopeo and containerd pull every tag back under the
 * documented built manifest (config digest = the source's, layer digests = diff_ids), and
 * containerd unpacks it (the files of the source layers are in the mounted rootfs). And
 * what `ctr images export` writes (an OCI layout plus a manifest.json for one platform) of a
 * multi-arch image and of such an imported image, into a second mirror with digests unchanged;
 * and a multi-image archive from `podman save --multi-image-archive`.
 *
 * Skipped only when a tool is absent and CI !== 'true'.
 */
import test from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { startContainerd, writeHostsToml } from '../helpers/containerd.js';
import { podman } from '../helpers/podman.js';
import { tempDir } from '../helpers/server.js';
import { type Skopeo, pullArgs, pushArgs, skopeo as skopeoHelper } from '../helpers/skopeo.js';
import { CI, freePort, missingTools } from '../helpers/tools.js';
import { type Blob, type Image, MediaTypes, allBlobsOf, makeImage, makeLayer, randomBytes, sha256, writeOciLayout } from '../fixtures/images.js';
import { assertContent, assertImage, assertLayoutHolds, busybox, UP, airGappedMirror } from './_registry.js';
import { type ImportResult, builtManifest, filesUnder, importMultipart, importRaw } from '../integration/_import.js';
import { http } from '../helpers/http.js';

const e2e = missingTools(['skopeo', 'containerd', 'ctr']).length === 0 || CI ? test : test.skip;

/** A linux/amd64 image with gzip and plain layers, one of them repeated (skopeo links it). */
function sample(seed: string): Image {
  const base = makeLayer([{ name: 'etc/', content: '' }, { name: 'etc/os-release', content: `ID=${seed}\n` }]);
  const tool = makeLayer([{ name: 'bin/', content: '' }, { name: 'bin/tool', content: randomBytes(96 * 1024, seed), mode: 0o755 }], { gzip: false });
  return makeImage({ layers: [base, tool, base] });
}

/** The image as the archive holds it: same config, each layer its uncompressed tar. */
function asSaved(image: Image): Image {
  const layers: Blob[] = image.layers.map((l) => {
    const tar = l.mediaType === MediaTypes.ociLayerGzip ? gunzipSync(l.bytes) : l.bytes;
    return { digest: sha256(tar), size: tar.length, mediaType: MediaTypes.ociLayer, bytes: tar };
  });
  const manifest = builtManifest({ ...image, layers });
  return { config: image.config, layers, manifest: { digest: sha256(manifest), size: manifest.length, mediaType: MediaTypes.ociManifest, bytes: manifest } };
}

/** `skopeo copy oci:<layout>:src docker-archive:<file>:<first tag>` plus the other tags. */
async function skopeoDockerArchive(sk: Skopeo, work: string, image: Image, tags: string[]): Promise<Buffer> {
  const id = image.config.digest.slice(7, 19);
  const layout = path.join(work, `layout-${id}`);
  await writeOciLayout(layout, [{ tag: 'src', root: image.manifest }], [image.manifest, image.config, ...image.layers]);
  const file = path.join(work, `${id}.docker.tar`);
  await sk.run(['copy', `oci:${layout}:src`, `docker-archive:${file}:${tags[0]}`, ...tags.slice(1).flatMap((t) => ['--additional-tag', t])]);
  return fs.readFile(file);
}


e2e('skopeo docker-archive imported raw and multipart; skopeo and containerd pull the built manifest back, containerd unpacks it', async (t) => {
  const [sk, work, s, ctd] = await Promise.all([skopeoHelper(t, { timeoutMs: 90_000 }), tempDir(t), airGappedMirror(t), startContainerd(t)]);
  const one = sample('docker-one');
  const two = sample('docker-two');
  const rawArchive = await skopeoDockerArchive(sk, work, one, [`${UP}/library/busybox:1.0`, 'busybox:latest']);
  const mpArchive = await skopeoDockerArchive(sk, work, two, [`${UP}/tools/box:2`]);
  // What skopeo wrote is the legacy layout: `<diffid>.tar` files, `<v1id>/layer.tar` symlinks to them.
  const baseTar = asSaved(one).layers[0]!.digest.slice(7);
  t.true(rawArchive.includes(Buffer.from(`../${baseTar}.tar`)) && rawArchive.includes(Buffer.from(`${baseTar}.tar\0`)), 'skopeo wrote <diffid>.tar and a symlink to it');
  const imported: ImportResult[] = [];
  const raw = await importRaw(s.url, 'namespace=test-namespace', rawArchive);
  t.is(raw.status, 200, raw.body.toString());
  imported.push(...raw.json<{ images: ImportResult[] }>().images);
  const mp = await importMultipart(s.url, 'namespace=test-namespace', [gzipSync(mpArchive)]);
  t.is(mp.status, 200, mp.body.toString());
  imported.push(...mp.json<{ images: ImportResult[] }>().images);

  const [savedOne, savedTwo] = [asSaved(one), asSaved(two)];
  const expected = [
    { repo: 'library/busybox', tag: '1.0', image: one, saved: savedOne },
    { repo: 'library/busybox', tag: 'latest', image: one, saved: savedOne },
    { repo: 'tools/box', tag: '2', image: two, saved: savedTwo },
  ];
  t.deepEqual(
    imported.map((r) => `${r.name}:${r.tag}@${r.digest} built=${r.built}`),
    expected.map((e) => `test-namespace/${e.repo}:${e.tag}@${e.saved.manifest.digest} built=true`),
  );
  // The documented rule, checked against the source: config unchanged, layers = diff_ids.
  const diffIds = (JSON.parse(one.config.bytes.toString()) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;
  const built = JSON.parse(savedOne.manifest.bytes.toString()) as { config: { digest: string }; layers: Array<{ digest: string; mediaType: string }> };
  t.is(built.config.digest, one.config.digest, 'config digest equals the source config digest');
  t.deepEqual(built.layers.map((l) => l.digest), diffIds, 'layer digests are the diff_ids');

  for (const e of expected) {
    const out = path.join(work, `pulled-${e.repo.replace('/', '-')}-${e.tag}`);
    await sk.run(pullArgs(sk, `docker://${s.hostPort}/test-namespace/${e.repo}:${e.tag}`, `oci:${out}:${e.tag}`));
    await assertLayoutHolds(t, out, e.tag, e.saved.manifest, [e.saved.manifest, e.saved.config, ...new Map(e.saved.layers.map((l) => [l.digest, l])).values()]);
  }

  const hostsDir = path.join(work, 'certs.d');
  await writeHostsToml(hostsDir, UP, { server: `http://127.0.0.1:${await freePort()}`, hosts: [{ url: `${s.url}/v2/test-namespace`, overridePath: true }] });
  for (const [i, e] of expected.entries()) {
    const ref = `${UP}/${e.repo}:${e.tag}`;
    // Default platform (linux/amd64 like the image): ctr pull also unpacks into the snapshotter.
    await ctd.pull(ref, { namespace: 'imported', hostsDir, platform: 'linux/amd64' });
    await assertImage(t, ctd, 'imported', ref, e.saved.manifest.digest);
    await assertContent(t, ctd, 'imported', [e.saved.manifest, e.saved.config, ...e.saved.layers]);
    const mnt = path.join(ctd.dir, `mnt-${i}`);
    await fs.mkdir(mnt);
    const m = await ctd.ctr(['images', 'mount', '--snapshotter', 'native', '--platform', 'linux/amd64', ref, mnt], { namespace: 'imported' });
    t.is(m.code, 0, m.stderr);
    const seed = e.image === one ? 'docker-one' : 'docker-two';
    t.is(await fs.readFile(path.join(mnt, 'etc', 'os-release'), 'utf8'), `ID=${seed}\n`, 'unpacked rootfs has the base layer');
    t.true((await fs.readFile(path.join(mnt, 'bin', 'tool'))).equals(randomBytes(96 * 1024, seed)), 'unpacked rootfs has the tool layer');
    t.is((await ctd.ctr(['images', 'unmount', mnt], { namespace: 'imported' })).code, 0);
  }
  t.deepEqual(await filesUnder(path.join(s.dataDir, 'storage', 'tmp')), [], 'no temp file left');
});

e2e('a skopeo docker-archive with a flipped layer byte or cut short stores nothing; the intact one then imports', async (t) => {
  const [sk, work, s] = await Promise.all([skopeoHelper(t, { timeoutMs: 90_000 }), tempDir(t), airGappedMirror(t)]);
  const image = sample('docker-bad');
  const archive = await skopeoDockerArchive(sk, work, image, [`${UP}/library/bad:1`]);
  // The tool layer's bytes sit uncompressed in the archive: flip one inside its random content.
  const toolBytes = randomBytes(96 * 1024, 'docker-bad');
  const at = archive.indexOf(toolBytes.subarray(0, 64));
  t.true(at > 0, 'the uncompressed layer is in the archive');
  const flipped = Buffer.from(archive);
  flipped[at + 1000]! ^= 0x01;
  const bad = await importRaw(s.url, 'namespace=test-namespace', flipped);
  t.is(bad.status, 400, bad.body.toString());
  t.regex(bad.body.toString(), /DIGEST_INVALID.*does not hash to its diff_id/);
  for (const cut of [0.3, 0.95]) {
    const res = await importRaw(s.url, 'namespace=test-namespace', archive.subarray(0, Math.floor(archive.length * cut)));
    t.is(res.status, 400, `cut at ${cut}: ${res.body.toString()}`);
  }
  t.deepEqual(await filesUnder(path.join(s.dataDir, 'storage', 'tmp')), [], 'no temp file');
  t.deepEqual(await filesUnder(path.join(s.dataDir, 'storage', 'blobs')), [], 'no blob stored');
  t.deepEqual((await http('GET', `${s.url}/v2/_catalog`)).json<{ repositories: string[] }>().repositories, [], 'nothing stored');
  const ok = await importRaw(s.url, 'namespace=test-namespace', archive);
  t.is(ok.status, 200, ok.body.toString());
  t.is(ok.json<{ images: ImportResult[] }>().images[0]!.digest, asSaved(image).manifest.digest);
});

e2e('ctr images export (OCI layout + manifest.json) of a multi-arch image and of an imported docker-archive image: a second mirror gets the same digests', async (t) => {
  const [sk, work, a, b, ctd] = await Promise.all([skopeoHelper(t, { timeoutMs: 90_000 }), tempDir(t), airGappedMirror(t), airGappedMirror(t), startContainerd(t)]);
  const multi = busybox('ctr-export', 64);
  const layout = path.join(work, 'multi');
  await writeOciLayout(layout, [{ tag: 'src', root: multi.index }], allBlobsOf(multi));
  await sk.run(pushArgs(sk, `oci:${layout}:src`, `docker://${a.hostPort}/test-namespace/library/multi:1`));
  const box = sample('ctr-export-box');
  const imported = await importRaw(a.url, 'namespace=test-namespace', await skopeoDockerArchive(sk, work, box, [`${UP}/tools/box:2`]));
  t.is(imported.status, 200, imported.body.toString());
  const boxDigest = asSaved(box).manifest.digest;

  const hostsOf = async (dir: string, url: string) => {
    await writeHostsToml(dir, UP, { server: `http://127.0.0.1:${await freePort()}`, hosts: [{ url: `${url}/v2/test-namespace`, overridePath: true }] });
    return dir;
  };
  const fromA = await hostsOf(path.join(work, 'hosts-a'), a.url);
  const refs = [`${UP}/library/multi:1`, `${UP}/tools/box:2`];
  for (const ref of refs) await ctd.pull(ref, { namespace: 'src', hostsDir: fromA, allPlatforms: true });
  const file = path.join(work, 'export.tar');
  const exp = await ctd.ctr(['images', 'export', '--all-platforms', file, ...refs], { namespace: 'src' });
  t.is(exp.code, 0, exp.stderr);
  const archive = await fs.readFile(file);
  t.true(archive.includes(Buffer.from('manifest.json\0')) && archive.includes(Buffer.from('index.json\0')), 'containerd wrote an OCI layout with manifest.json');

  const res = await importMultipart(b.url, 'namespace=test-namespace', [archive]);
  t.is(res.status, 200, res.body.toString());
  const results = res.json<{ images: ImportResult[] }>().images;
  t.log(results.map((r) => `${r.name}:${r.tag}@${r.digest}${r.built ? ' built' : ''}`).join('\n'));
  t.deepEqual(results.map((r) => `${r.name}:${r.tag}@${r.digest} built=${r.built}`).sort(), [
    `test-namespace/library/multi:1@${multi.index.digest} built=undefined`,
    `test-namespace/tools/box:2@${boxDigest} built=undefined`,
  ]);
  const fromB = await hostsOf(path.join(work, 'hosts-b'), b.url);
  await ctd.pull(refs[0]!, { namespace: 'dst', hostsDir: fromB, allPlatforms: true });
  await assertImage(t, ctd, 'dst', refs[0]!, multi.index.digest);
  await assertContent(t, ctd, 'dst', allBlobsOf(multi));
  await ctd.pull(refs[1]!, { namespace: 'dst', hostsDir: fromB, platform: 'linux/amd64' });
  await assertImage(t, ctd, 'dst', refs[1]!, boxDigest);
});

const podmanE2e = missingTools(['skopeo', 'podman']).length === 0 || CI ? test : test.skip;

podmanE2e('podman save --multi-image-archive (two images sharing a layer, one archive): each imported under its RepoTag with the built manifest', async (t) => {
  const [sk, work, a, b] = await Promise.all([skopeoHelper(t, { timeoutMs: 90_000 }), tempDir(t), airGappedMirror(t), airGappedMirror(t)]);
  const pm = await podman(t, { timeoutMs: 90_000 });
  const shared = makeLayer([{ name: 'etc/', content: '' }, { name: 'etc/shared', content: randomBytes(32 * 1024, 'podman-shared') }]);
  const images = ['one', 'two'].map((n) => ({ n, image: makeImage({ layers: [shared, makeLayer([{ name: `${n}.bin`, content: randomBytes(48 * 1024, `podman-${n}`) }])] }) }));
  const refs: string[] = [];
  for (const { n, image } of images) {
    const layout = path.join(work, `podman-${n}`);
    await writeOciLayout(layout, [{ tag: 'src', root: image.manifest }], [image.manifest, image.config, ...image.layers]);
    await sk.run(pushArgs(sk, `oci:${layout}:src`, `docker://${a.hostPort}/test-namespace/apps/${n}:1`));
    refs.push(`${a.hostPort}/test-namespace/apps/${n}:1`);
    await pm.pull(refs.at(-1)!);
  }
  const file = path.join(work, 'podman.tar');
  await pm.run(['save', '--multi-image-archive', '--format', 'docker-archive', '-o', file, ...refs]);
  const res = await importRaw(b.url, 'namespace=site', await fs.readFile(file));
  t.is(res.status, 200, res.body.toString());
  const results = res.json<{ images: ImportResult[] }>().images;
  t.deepEqual(
    results.map((r) => `${r.name}:${r.tag}@${r.digest} built=${r.built}`).sort(),
    images.map(({ n, image }) => `site/test-namespace/apps/${n}:1@${asSaved(image).manifest.digest} built=true`),
  );
  // The shared layer is stored once: the second image finds it.
  t.is(results.reduce((sum, r) => sum + r.blobs.existing, 0), 1);
  for (const { n, image } of images) {
    const out = path.join(work, `pulled-podman-${n}`);
    await sk.run(pullArgs(sk, `docker://${b.hostPort}/site/test-namespace/apps/${n}:1`, `oci:${out}:1`));
    const saved = asSaved(image);
    await assertLayoutHolds(t, out, '1', saved.manifest, [saved.manifest, saved.config, ...saved.layers]);
  }
});
