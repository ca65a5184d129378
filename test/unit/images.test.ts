import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import {
  EMPTY_BLOB,
  allBlobsOf,
  makeArtifact,
  makeImage,
  makeIndex,
  makeLayer,
  randomBytes,
  randomStream,
  readOciLayoutBlob,
  readOciLayoutRef,
  sha256,
  tarArchive,
  writeOciLayout,
} from '../fixtures/images.js';

function run(cmd: string, args: string[]): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(cmd, args, { maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

// Skip skopeo tests on dev machines without it, but never silently under CI.
const hasSkopeo = spawnSync('skopeo', ['--version']).status === 0;
const skopeoTest = hasSkopeo || process.env.CI === 'true' ? test : test.skip;

async function tempDir(t: { teardown: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'regmirror-images-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('tarArchive produces block-aligned archives readable by system tar', async (t) => {
  const longName = `${'deep/'.repeat(25)}file.txt`; // > 100 bytes: exercises the ustar prefix field
  const files = [
    { name: 'etc/', content: '' },
    { name: 'etc/hello.txt', content: 'hello world\n' },
    { name: 'bin/run.sh', content: '#!/bin/sh\n', mode: 0o755 },
    { name: longName, content: randomBytes(1000, 'tar') },
  ];
  const tar = tarArchive(files);
  t.is(tar.length % 512, 0);
  t.deepEqual(tar, tarArchive(files), 'deterministic');

  const file = join(await tempDir(t), 'a.tar');
  await writeFile(file, tar);
  const list = run('tar', ['-tf', file]);
  t.is(list.status, 0, list.stderr);
  t.deepEqual(list.stdout.toString().trim().split('\n'), files.map((f) => f.name));
  const cat = run('tar', ['-xOf', file, 'etc/hello.txt']);
  t.is(cat.stdout.toString(), 'hello world\n');
  t.deepEqual(run('tar', ['-xOf', file, longName]).stdout, randomBytes(1000, 'tar'));
});

test('makeLayer: diffId is the sha256 of the uncompressed tar', (t) => {
  const layer = makeLayer([{ name: 'a.txt', content: 'a' }]);
  t.is(layer.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
  t.is(layer.digest, sha256(layer.bytes));
  t.is(layer.size, layer.bytes.length);
  t.is(layer.diffId, sha256(gunzipSync(layer.bytes)));
  t.is(layer.digest, makeLayer([{ name: 'a.txt', content: 'a' }]).digest, 'reproducible');

  const raw = makeLayer([{ name: 'a.txt', content: 'a' }], { gzip: false });
  t.is(raw.mediaType, 'application/vnd.oci.image.layer.v1.tar');
  t.is(raw.digest, raw.diffId);
  t.is(raw.diffId, layer.diffId);
  t.is(makeLayer([], { flavor: 'docker' }).mediaType, 'application/vnd.docker.image.rootfs.diff.tar.gzip');
});

test('randomStream yields the same bytes as randomBytes', async (t) => {
  const size = 200_000; // not a multiple of the chunk size
  const chunks: Buffer[] = [];
  for await (const c of randomStream(size, 'seed')) chunks.push(c as Buffer);
  t.deepEqual(Buffer.concat(chunks), randomBytes(size, 'seed'));
  t.notDeepEqual(randomBytes(32, 'seed'), randomBytes(32, 'other'));
});

test('makeImage / makeIndex / makeArtifact structure', (t) => {
  const layer = makeLayer([{ name: 'x', content: 'x' }], { flavor: 'docker' });
  const img = makeImage({ flavor: 'docker', layers: [layer] });
  const manifest = JSON.parse(img.manifest.bytes.toString()) as Record<string, unknown>;
  t.is(img.manifest.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
  t.is(manifest.mediaType, img.manifest.mediaType);
  t.deepEqual(manifest.config, { mediaType: img.config.mediaType, digest: img.config.digest, size: img.config.size });
  const config = JSON.parse(img.config.bytes.toString()) as { rootfs: { diff_ids: string[] } };
  t.deepEqual(config.rootfs.diff_ids, [layer.diffId]);

  const list = makeIndex([{ image: img, platform: { architecture: 'amd64', os: 'linux' } }], 'docker');
  t.is(list.index.mediaType, 'application/vnd.docker.distribution.manifest.list.v2+json');

  t.is(EMPTY_BLOB.digest, sha256('{}'));
  const sig = makeArtifact(img.manifest, 'application/vnd.example.sig', { layer: 'sig' });
  const m = JSON.parse(sig.manifest.bytes.toString()) as { artifactType: string; subject: { digest: string } };
  t.is(m.artifactType, 'application/vnd.example.sig');
  t.is(m.subject.digest, img.manifest.digest);
  t.is(allBlobsOf(sig).length, 3);
  t.is(allBlobsOf(list).length, 4);
});

skopeoTest('2-platform OCI index in an OCI layout round-trips through skopeo', async (t) => {
  t.true(hasSkopeo, 'skopeo is required when CI=true');
  const shared = makeLayer([{ name: 'etc/os-release', content: 'ID=test\n' }]);
  const amd = makeImage({ layers: [shared, makeLayer([{ name: 'bin/app', content: randomBytes(4096, 'amd64') }])] });
  const arm = makeImage({
    arch: 'arm64',
    variant: 'v8',
    layers: [shared, makeLayer([{ name: 'bin/app', content: randomBytes(4096, 'arm64') }])],
  });
  const idx = makeIndex([
    { image: amd, platform: { architecture: 'amd64', os: 'linux' } },
    { image: arm, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
  ]);
  const blobs = allBlobsOf(idx);
  t.is(blobs.length, 8, 'shared layer deduped');

  const src = await tempDir(t);
  const dst = await tempDir(t);
  await writeOciLayout(src, [{ tag: 'v1', root: idx.index }], blobs);
  t.deepEqual(await readOciLayoutBlob(src, arm.config.digest), arm.config.bytes);

  const inspect = run('skopeo', ['inspect', '--raw', `oci:${src}:v1`]);
  t.is(inspect.status, 0, inspect.stderr);
  t.deepEqual(inspect.stdout, idx.index.bytes, 'byte-identical index');

  const copy = run('skopeo', [
    '--insecure-policy', // don't depend on the host's /etc/containers/policy.json
    'copy',
    '--all',
    '--preserve-digests',
    `oci:${src}:v1`,
    `oci:${dst}:v1`,
  ]);
  t.is(copy.status, 0, copy.stderr);
  const ref = await readOciLayoutRef(dst, 'v1');
  t.is(ref?.digest, idx.index.digest);
  for (const b of blobs) t.deepEqual(await readOciLayoutBlob(dst, b.digest), b.bytes, b.digest);
});
