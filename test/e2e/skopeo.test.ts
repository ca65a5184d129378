/**
 * End-to-end with the real skopeo binary against a live regmirror (in-process server).
 *
 * Images are built offline with the fixtures. skopeo runs (test/helpers/skopeo.ts) with a scrubbed environment
 * (temp HOME/XDG dirs, an empty registries.conf via --registries-conf, empty registries.d
 * and cert dirs, no credentials, no proxy variables, its blob-info cache in the temp dir),
 * and every reference names 127.0.0.1:<port> explicitly, so it never reaches the network.
 * One leak skopeo 1.9 cannot turn off: it still merges /etc/containers/registries.conf.d/
 * drop-ins (Debian ships only short-name aliases there, irrelevant to these references). `--preserve-digests`
 * makes skopeo fail instead of silently converting a manifest, so identical digests on
 * the way back prove the registry stored and served every byte unchanged.
 *
 * Skipped only when skopeo is absent and CI !== 'true'; under CI a missing skopeo fails.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import { startServer, tempDir, type TestServer } from '../helpers/server.js';
import { errorCode, http } from '../helpers/http.js';
import { type Skopeo, pullArgs, pushArgs, skopeo as skopeoHelper } from '../helpers/skopeo.js';
import { CI, missingTools } from '../helpers/tools.js';
import {
  type Blob,
  type Image,
  type ImageIndex,
  MediaTypes,
  allBlobsOf,
  makeImage,
  makeIndex,
  makeLayer,
  randomBytes,
  readOciLayoutBlob,
  readOciLayoutRef,
  sha256,
  writeOciLayout,
} from '../fixtures/images.js';

/** Longer than the helper's default: these tests move multi-arch images with several layers. */
const SKOPEO_TIMEOUT_MS = 90_000;
const e2e = missingTools(['skopeo']).length === 0 || CI ? test : test.skip;

// ---------------------------------------------------------------------------
// skopeo runner: test/helpers/skopeo.ts (scrubbed environment, --registries-conf <empty file>)

function skopeo(t: ExecutionContext): Promise<Skopeo> {
  return skopeoHelper(t, { timeoutMs: SKOPEO_TIMEOUT_MS });
}

function readArgs(sk: Skopeo): string[] {
  return ['--tls-verify=false', '--no-creds', '--cert-dir', sk.certDir];
}

// ---------------------------------------------------------------------------
// test images

/** amd64 + arm64, two layers each, the first layer shared. Distinct content per `seed`. */
function multiArch(seed: string): ImageIndex {
  const shared = makeLayer([
    { name: 'etc/', content: '' },
    { name: 'etc/os-release', content: `NAME=regmirror-test\nID=${seed}\n` },
  ]);
  const amd = makeLayer([
    { name: 'bin/', content: '' },
    { name: 'bin/tool', content: randomBytes(48 * 1024, `${seed}-amd64`), mode: 0o755 },
  ]);
  // Uncompressed layers must round-trip too: skopeo may not recompress them.
  const arm = makeLayer(
    [
      { name: 'bin/', content: '' },
      { name: 'bin/tool', content: randomBytes(40 * 1024, `${seed}-arm64`), mode: 0o755 },
    ],
    { gzip: false },
  );
  const amd64 = makeImage({ arch: 'amd64', layers: [shared, amd] });
  const arm64 = makeImage({ arch: 'arm64', variant: 'v8', layers: [shared, arm] });
  return makeIndex([
    { image: amd64, platform: { architecture: 'amd64', os: 'linux' } },
    { image: arm64, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
  ]);
}

function dockerImage(seed: string): Image {
  const l1 = makeLayer([{ name: 'hello.txt', content: `hello from ${seed}\n` }], { flavor: 'docker' });
  const l2 = makeLayer([{ name: 'data.bin', content: randomBytes(32 * 1024, seed) }], { flavor: 'docker' });
  return makeImage({ flavor: 'docker', layers: [l1, l2] });
}

/**
 * A `dir:` transport directory (skopeo's own format: manifest.json, one file per blob
 * named by hex digest, a version file). containers/image 5.23 (skopeo 1.9) refuses Docker
 * manifests in an OCI layout *source*, so Docker images are pushed from `dir:`.
 */
async function writeDirImage(dir: string, image: Image): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, 'version'), 'Directory Transport Version: 1.1\n');
  await fs.writeFile(path.join(dir, 'manifest.json'), image.manifest.bytes);
  for (const b of [image.config, ...image.layers]) await fs.writeFile(path.join(dir, b.digest.slice('sha256:'.length)), b.bytes);
}

function hexOf(d: string): string {
  return d.slice('sha256:'.length);
}

/** Every blob of the OCI layout at `dir` is byte-identical to `expected`, and nothing else is there. */
async function assertLayoutHolds(t: ExecutionContext, dir: string, tag: string, root: Blob, expected: Blob[]): Promise<void> {
  const ref = await readOciLayoutRef(dir, tag);
  t.truthy(ref, `layout ${dir} has no entry for tag ${tag}`);
  t.is(ref?.digest, root.digest, 'top-level digest changed');
  t.is(ref?.mediaType, root.mediaType, 'top-level media type changed (format conversion?)');
  t.is(ref?.size, root.size);
  for (const b of expected) {
    const got = await readOciLayoutBlob(dir, b.digest).catch(() => undefined);
    t.truthy(got, `blob ${b.digest} (${b.mediaType}) missing from pulled layout`);
    if (got) t.true(got.equals(b.bytes), `blob ${b.digest} (${b.mediaType}) differs from the source bytes`);
  }
  // No extra blobs: a converted manifest/config or recompressed layer would show up here.
  const files = (await fs.readdir(path.join(dir, 'blobs', 'sha256'))).sort();
  t.deepEqual(files, expected.map((b) => hexOf(b.digest)).sort(), 'pulled layout holds unexpected blobs');
  for (const f of files) t.is(sha256(await fs.readFile(path.join(dir, 'blobs', 'sha256', f))), `sha256:${f}`);
}

/** What the registry serves over HTTP is exactly the source content, with the right media types. */
async function assertServed(t: ExecutionContext, s: TestServer, repo: string, manifests: Blob[], blobs: Blob[]): Promise<void> {
  const accept = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifest, MediaTypes.dockerManifestList].join(', ');
  for (const m of manifests) {
    const res = await http('GET', `${s.url}/v2/${repo}/manifests/${m.digest}`, { headers: { accept } });
    t.is(res.status, 200, `manifest ${m.digest}`);
    t.is(res.header('content-type'), m.mediaType);
    t.is(res.header('docker-content-digest'), m.digest);
    t.true(res.body.equals(m.bytes), `manifest ${m.digest} bytes differ`);
  }
  for (const b of blobs) {
    const res = await http('GET', `${s.url}/v2/${repo}/blobs/${b.digest}`);
    t.is(res.status, 200, `blob ${b.digest}`);
    t.true(res.body.equals(b.bytes), `blob ${b.digest} bytes differ`);
  }
}

/** No request answered 5xx and nothing was logged at error level while skopeo talked to us. */
function assertNoServerErrors(t: ExecutionContext, s: TestServer): void {
  const bad = s.logs.filter((line) => {
    try {
      const j = JSON.parse(line) as { level?: number; status?: number };
      return (j.level ?? 0) >= 50 || (j.status ?? 0) >= 500;
    } catch {
      return true;
    }
  });
  t.deepEqual(bad, [], 'server errors during the skopeo session');
}

function isManifest(b: Blob): boolean {
  return b.mediaType === MediaTypes.ociManifest || b.mediaType === MediaTypes.ociIndex || b.mediaType === MediaTypes.dockerManifest;
}

// ---------------------------------------------------------------------------

e2e('multi-arch OCI index: push from an OCI layout and pull back with identical digests', async (t) => {
  const sk = await skopeo(t);
  const s = await startServer(t);
  const work = await tempDir(t);
  const idx = multiArch('busybox');
  const blobs = allBlobsOf(idx);
  // 2 manifests + 2 configs + 3 distinct layers (one shared) + the index.
  t.is(blobs.length, 8);
  const src = path.join(work, 'src');
  await writeOciLayout(src, [{ tag: '1.0', root: idx.index }], blobs);

  const ref = `docker://${s.hostPort}/library/busybox:1.0`;
  await sk.run(pushArgs(sk, `oci:${src}:1.0`, ref));

  const tag = await http('GET', `${s.url}/v2/library/busybox/manifests/1.0`, { headers: { accept: MediaTypes.ociIndex } });
  t.is(tag.status, 200);
  t.is(tag.header('docker-content-digest'), idx.index.digest);
  t.true(tag.body.equals(idx.index.bytes), 'tag 1.0 does not serve the exact index bytes');
  await assertServed(t, s, 'library/busybox', blobs.filter(isManifest), blobs.filter((b) => !isManifest(b)));

  const out = path.join(work, 'out');
  await sk.run(pullArgs(sk, ref, `oci:${out}:1.0`));
  await assertLayoutHolds(t, out, '1.0', idx.index, blobs);
  assertNoServerErrors(t, s);
});

e2e('Docker schema2 image: push and pull back without conversion, media type stays docker v2', async (t) => {
  const sk = await skopeo(t);
  const s = await startServer(t);
  const work = await tempDir(t);
  const img = dockerImage('docker-flavor');
  const blobs = allBlobsOf(img);
  t.is(img.manifest.mediaType, MediaTypes.dockerManifest);
  const src = path.join(work, 'src');
  await writeDirImage(src, img);

  const ref = `docker://${s.hostPort}/library/hello:1.0`;
  await sk.run(pushArgs(sk, `dir:${src}`, ref));

  const head = await http('HEAD', `${s.url}/v2/library/hello/manifests/1.0`, { headers: { accept: MediaTypes.dockerManifest } });
  t.is(head.status, 200);
  t.is(head.header('content-type'), MediaTypes.dockerManifest);
  t.is(head.header('docker-content-digest'), img.manifest.digest);
  t.is(head.header('content-length'), String(img.manifest.size));
  await assertServed(t, s, 'library/hello', [img.manifest], [img.config, ...img.layers]);
  t.is(
    (await http('GET', `${s.url}/v2/library/hello/blobs/${img.config.digest}`)).body.toString(),
    img.config.bytes.toString(),
  );

  // Back "the same way" into an OCI layout: skopeo 1.9 writes the Docker manifest as-is.
  const out = path.join(work, 'out');
  await sk.run(pullArgs(sk, ref, `oci:${out}:1.0`));
  await assertLayoutHolds(t, out, '1.0', img.manifest, blobs);

  // And into skopeo's dir: format, which never converts.
  const outDir = path.join(work, 'out-dir');
  await sk.run(pullArgs(sk, ref, `dir:${outDir}`));
  t.true((await fs.readFile(path.join(outDir, 'manifest.json'))).equals(img.manifest.bytes), 'manifest.json differs');
  for (const b of [img.config, ...img.layers]) {
    t.true((await fs.readFile(path.join(outDir, hexOf(b.digest)))).equals(b.bytes), `blob ${b.digest} differs`);
  }

  const raw = await sk.run(['inspect', '--raw', ...readArgs(sk), ref]);
  t.true(raw.stdoutBytes.equals(img.manifest.bytes), 'inspect --raw does not return the exact manifest bytes');
  t.is((JSON.parse(raw.stdout) as { mediaType: string }).mediaType, MediaTypes.dockerManifest);
  assertNoServerErrors(t, s);
});

e2e('inspect --raw returns the exact index; inspect works; list-tags lists every pushed tag', async (t) => {
  const sk = await skopeo(t);
  const s = await startServer(t);
  const work = await tempDir(t);
  const idx = multiArch('tags');
  const blobs = allBlobsOf(idx);
  const src = path.join(work, 'src');
  await writeOciLayout(src, [{ tag: '1.0', root: idx.index }, { tag: 'latest', root: idx.index }], blobs);

  const repo = `${s.hostPort}/library/busybox`;
  await sk.run(pushArgs(sk, `oci:${src}:1.0`, `docker://${repo}:1.0`));
  await sk.run(pushArgs(sk, `oci:${src}:latest`, `docker://${repo}:latest`));
  // Registry to registry (blobs already present: skopeo HEADs them and skips the upload).
  await sk.run([
    'copy', '--all', '--preserve-digests', '--retry-times', '0',
    '--src-tls-verify=false', '--src-no-creds', '--src-cert-dir', sk.certDir,
    '--dest-tls-verify=false', '--dest-no-creds', '--dest-cert-dir', sk.certDir,
    `docker://${repo}:1.0`, `docker://${repo}:1.1`,
  ]);

  for (const tag of ['1.0', '1.1', 'latest']) {
    const raw = await sk.run(['inspect', '--raw', ...readArgs(sk), `docker://${repo}:${tag}`]);
    t.true(raw.stdoutBytes.equals(idx.index.bytes), `inspect --raw of ${tag} is not the exact index`);
  }
  const byDigest = await sk.run(['inspect', '--raw', ...readArgs(sk), `docker://${repo}@${idx.index.digest}`]);
  t.true(byDigest.stdoutBytes.equals(idx.index.bytes));
  const arm = idx.images[1]!.image;
  const armRaw = await sk.run(['inspect', '--raw', ...readArgs(sk), `docker://${repo}@${arm.manifest.digest}`]);
  t.true(armRaw.stdoutBytes.equals(arm.manifest.bytes), 'platform manifest by digest differs');
  const cfgRaw = await sk.run(['--override-arch', 'arm64', '--override-variant', 'v8', '--override-os', 'linux', 'inspect', '--config', '--raw', ...readArgs(sk), `docker://${repo}:1.0`]);
  t.true(cfgRaw.stdoutBytes.equals(arm.config.bytes), 'inspect --config --raw differs from the arm64 config blob');

  // Non-raw inspect: resolves the platform (arm64 forced), reads the config, lists tags.
  const info = JSON.parse(
    (await sk.run(['--override-arch', 'arm64', '--override-variant', 'v8', '--override-os', 'linux', 'inspect', ...readArgs(sk), `docker://${repo}:1.0`])).stdout,
  ) as { Name: string; Digest: string; RepoTags: string[]; Architecture: string; Os: string; Layers: string[] };
  t.is(info.Name, repo);
  t.is(info.Digest, idx.index.digest);
  t.is(info.Architecture, 'arm64');
  t.is(info.Os, 'linux');
  t.deepEqual(info.Layers, arm.layers.map((l) => l.digest));
  t.deepEqual([...info.RepoTags].sort(), ['1.0', '1.1', 'latest']);

  const amd = idx.images[0]!.image;
  const amdInfo = JSON.parse(
    (await sk.run(['--override-arch', 'amd64', '--override-os', 'linux', 'inspect', '--no-tags', ...readArgs(sk), `docker://${repo}:latest`])).stdout,
  ) as { Architecture: string; Layers: string[] };
  t.is(amdInfo.Architecture, 'amd64');
  t.deepEqual(amdInfo.Layers, amd.layers.map((l) => l.digest));

  const list = JSON.parse((await sk.run(['list-tags', ...readArgs(sk), `docker://${repo}`])).stdout) as {
    Repository: string;
    Tags: string[];
  };
  t.is(list.Repository, repo);
  t.deepEqual([...list.Tags].sort(), ['1.0', '1.1', 'latest']);

  // A repository that was never pushed is an error, not an empty list.
  await t.throwsAsync(sk.run(['list-tags', ...readArgs(sk), `docker://${s.hostPort}/library/nothing-here`]));
  await t.throwsAsync(sk.run(['inspect', '--raw', ...readArgs(sk), `docker://${repo}:no-such-tag`]));
  assertNoServerErrors(t, s);
});

e2e('repository with several path components (team/sub/app)', async (t) => {
  const sk = await skopeo(t);
  const s = await startServer(t);
  const work = await tempDir(t);
  const idx = multiArch('team-sub-app');
  const blobs = allBlobsOf(idx);
  const src = path.join(work, 'src');
  await writeOciLayout(src, [{ tag: 'v1', root: idx.index }], blobs);
  const img = dockerImage('team-sub-app-docker');
  const dsrc = path.join(work, 'dsrc');
  await writeDirImage(dsrc, img);

  const repo = `${s.hostPort}/team/sub/app`;
  await sk.run(pushArgs(sk, `oci:${src}:v1`, `docker://${repo}:v1`));
  await sk.run(pushArgs(sk, `dir:${dsrc}`, `docker://${repo}:docker-v1`));
  // A deeper name again, to be sure nothing special-cases three components.
  const deep = `${s.hostPort}/a/b/c/d/e`;
  await sk.run(pushArgs(sk, `oci:${src}:v1`, `docker://${deep}:v1`));

  await assertServed(t, s, 'team/sub/app', blobs.filter(isManifest), blobs.filter((b) => !isManifest(b)));
  await assertServed(t, s, 'a/b/c/d/e', [idx.index], []);

  const out = path.join(work, 'out');
  await sk.run(pullArgs(sk, `docker://${repo}:v1`, `oci:${out}:v1`));
  await assertLayoutHolds(t, out, 'v1', idx.index, blobs);
  const dout = path.join(work, 'dout');
  await sk.run(pullArgs(sk, `docker://${repo}:docker-v1`, `oci:${dout}:docker-v1`));
  await assertLayoutHolds(t, dout, 'docker-v1', img.manifest, allBlobsOf(img));

  const raw = await sk.run(['inspect', '--raw', ...readArgs(sk), `docker://${repo}:v1`]);
  t.true(raw.stdoutBytes.equals(idx.index.bytes));
  const list = JSON.parse((await sk.run(['list-tags', ...readArgs(sk), `docker://${repo}`])).stdout) as { Tags: string[] };
  t.deepEqual([...list.Tags].sort(), ['docker-v1', 'v1']);
  const deepList = JSON.parse((await sk.run(['list-tags', ...readArgs(sk), `docker://${deep}`])).stdout) as { Tags: string[] };
  t.deepEqual(deepList.Tags, ['v1']);

  // Prefixes of the name are distinct (empty) repositories, not aliases of it.
  const prefix = await http('GET', `${s.url}/v2/team/sub/manifests/v1`);
  t.is(prefix.status, 404);
  t.true(['NAME_UNKNOWN', 'MANIFEST_UNKNOWN'].includes(errorCode(prefix) ?? ''), `unexpected ${errorCode(prefix)}`);
  const blobInPrefix = await http('HEAD', `${s.url}/v2/team/sub/blobs/${idx.images[0]!.image.layers[0]!.digest}`);
  t.is(blobInPrefix.status, 404);
  assertNoServerErrors(t, s);
});
