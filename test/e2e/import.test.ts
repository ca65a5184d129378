/**
 * Import of archives written by the real skopeo (`copy --all oci:<layout> oci-archive:<file>:<name>`,
 * a multi-arch index), over a raw body and multipart, plain and gzip, into a mirror whose
 * namespace upstream is unreachable (the air-gapped site); then skopeo and containerd pull
 * every image back from the mirror with the digests of the source.
 *
 * Skipped only when a tool is absent and CI !== 'true'.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { type Containerd, startContainerd, writeHostsToml } from '../helpers/containerd.js';
import { type TestServer, tempDir } from '../helpers/server.js';
import { type Skopeo, pullArgs, skopeo as skopeoHelper } from '../helpers/skopeo.js';
import { CI, freePort, missingTools, runOk } from '../helpers/tools.js';
import { runCli } from '../helpers/cli.js';
import { type ImageIndex, allBlobsOf, makeImage, makeIndex, makeLayer, randomBytes, writeOciLayout } from '../fixtures/images.js';
import { assertContent, assertImage, assertLayoutHolds, UP, airGappedMirror } from './_registry.js';
import { type ImportEvent, type ImportResult, filesUnder, importMultipart, importRaw } from '../integration/_import.js';
import { http } from '../helpers/http.js';

const e2e = missingTools(['skopeo', 'containerd', 'ctr', 'xz', 'gzip', 'tar']).length === 0 || CI ? test : test.skip;

function sample(seed: string): ImageIndex {
  const shared = makeLayer([{ name: 'etc/', content: '' }, { name: 'etc/os-release', content: `ID=${seed}\n` }]);
  const amd = makeLayer([{ name: 'bin/tool', content: randomBytes(96 * 1024, `${seed}-amd64`), mode: 0o755 }]);
  const arm = makeLayer([{ name: 'bin/tool', content: randomBytes(64 * 1024, `${seed}-arm64`), mode: 0o755 }], { gzip: false });
  return makeIndex([
    { image: makeImage({ arch: 'amd64', layers: [shared, amd] }), platform: { architecture: 'amd64', os: 'linux' } },
    { image: makeImage({ arch: 'arm64', variant: 'v8', layers: [shared, arm] }), platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
  ]);
}

/** `skopeo copy --all oci:<layout>:<tag> oci-archive:<file>:<name>`: the archive as a user would make it. */
async function skopeoArchiveFile(sk: Skopeo, work: string, idx: ImageIndex, name: string): Promise<string> {
  const layout = path.join(work, `layout-${idx.index.digest.slice(7, 19)}`);
  await writeOciLayout(layout, [{ tag: 'src', root: idx.index }], allBlobsOf(idx));
  const file = path.join(work, `${idx.index.digest.slice(7, 19)}.tar`);
  await sk.run(['copy', '--all', '--preserve-digests', `oci:${layout}:src`, `oci-archive:${file}:${name}`]);
  return file;
}

/**
 * Every imported image pulled back from `test-namespace` with the source's digests: by skopeo
 * (--preserve-digests: any conversion would fail the copy) and by containerd, Anthos style
 * (hosts.toml for the upstream host pointing at /v2/test-namespace with override_path).
 */
async function assertPulledBack(
  t: ExecutionContext,
  env: { sk: Skopeo; ctd: Containerd; s: TestServer; work: string },
  images: ReadonlyArray<{ idx: ImageIndex; repo: string; tag: string }>,
): Promise<void> {
  const { sk, ctd, s, work } = env;
  for (const i of images) {
    const out = path.join(work, `pulled-${i.repo.replace(/\//g, '-')}-${i.tag}`);
    await sk.run(pullArgs(sk, `docker://${s.hostPort}/test-namespace/${i.repo}:${i.tag}`, `oci:${out}:${i.tag}`));
    await assertLayoutHolds(t, out, i.tag, i.idx.index, allBlobsOf(i.idx));
  }
  const hostsDir = path.join(work, 'certs.d');
  await writeHostsToml(hostsDir, UP, { server: `http://127.0.0.1:${await freePort()}`, hosts: [{ url: `${s.url}/v2/test-namespace`, overridePath: true }] });
  for (const i of images) {
    const ref = `${UP}/${i.repo}:${i.tag}`;
    await ctd.pull(ref, { namespace: 'imported', hostsDir, allPlatforms: true });
    await assertImage(t, ctd, 'imported', ref, i.idx.index.digest);
    await assertContent(t, ctd, 'imported', allBlobsOf(i.idx));
  }
}

async function skopeoArchive(sk: Skopeo, work: string, idx: ImageIndex, name: string): Promise<Buffer> {
  return fs.readFile(await skopeoArchiveFile(sk, work, idx, name));
}


e2e('skopeo oci-archive (multi-arch) imported raw and multipart, plain and gzip; skopeo and containerd pull identical digests', async (t) => {
  const [sk, work, s, ctd] = await Promise.all([skopeoHelper(t, { timeoutMs: 90_000 }), tempDir(t), airGappedMirror(t), startContainerd(t)]);
  const images = [
    { idx: sample('raw-tar'), name: `${UP}/library/busybox:1.0`, repo: 'library/busybox', tag: '1.0' },
    { idx: sample('raw-gzip'), name: `${UP}/library/busybox:1.1`, repo: 'library/busybox', tag: '1.1' },
    { idx: sample('mp-tar'), name: `${UP}/tools/curl:8`, repo: 'tools/curl', tag: '8' },
    { idx: sample('mp-gzip'), name: `${UP}/tools/jq:1.7`, repo: 'tools/jq', tag: '1.7' },
  ];
  const archives = await Promise.all(images.map((i) => skopeoArchive(sk, work, i.idx, i.name)));

  const results: ImportResult[] = [];
  const raw = await importRaw(s.url, 'namespace=test-namespace', archives[0]!);
  t.is(raw.status, 200, raw.body.toString());
  results.push(...raw.json<{ images: ImportResult[] }>().images);
  const rawGz = await importRaw(s.url, 'namespace=test-namespace', gzipSync(archives[1]!), 'application/gzip');
  t.is(rawGz.status, 200, rawGz.body.toString());
  results.push(...rawGz.json<{ images: ImportResult[] }>().images);
  const mp = await importMultipart(s.url, 'namespace=test-namespace', [archives[2]!, gzipSync(archives[3]!)]);
  t.is(mp.status, 200, mp.body.toString());
  results.push(...mp.json<{ images: ImportResult[] }>().images);
  t.deepEqual(
    results.map((r) => `${r.name}:${r.tag}@${r.digest}`),
    images.map((i) => `test-namespace/${i.repo}:${i.tag}@${i.idx.index.digest}`),
  );

  await assertPulledBack(t, { sk, ctd, s, work }, images);
});

e2e('a truncated skopeo archive stores nothing; the complete one then imports', async (t) => {
  const [sk, work, s] = await Promise.all([skopeoHelper(t, { timeoutMs: 90_000 }), tempDir(t), airGappedMirror(t)]);
  const idx = sample('truncated');
  const archive = await skopeoArchive(sk, work, idx, `${UP}/library/cut:1`);
  for (const cut of [0.25, 0.5, 0.9]) {
    const res = await importRaw(s.url, 'namespace=test-namespace', archive.subarray(0, Math.floor(archive.length * cut)));
    t.is(res.status, 400, `cut at ${cut}: ${res.body.toString()}`);
    t.deepEqual(await fs.readdir(path.join(s.dataDir, 'storage', 'tmp')), [], 'no temp file');
  }
  t.deepEqual((await http('GET', `${s.url}/v2/_catalog`)).json<{ repositories: string[] }>().repositories, [], 'nothing stored');
  t.deepEqual(await filesUnder(path.join(s.dataDir, 'storage', 'blobs')), [], 'no blob stored');
  const ok = await importRaw(s.url, 'namespace=test-namespace', archive);
  t.is(ok.status, 200, ok.body.toString());
  t.is(ok.json<{ images: ImportResult[] }>().images[0]!.digest, idx.index.digest);
});

e2e('regmirror import (CLI): skopeo archives compressed by the system xz and gzip, and a tar.xz bundle of them; skopeo and containerd pull identical digests', async (t) => {
  const [sk, work, s, ctd] = await Promise.all([skopeoHelper(t, { timeoutMs: 90_000 }), tempDir(t), airGappedMirror(t), startContainerd(t)]);
  const images = [
    { idx: sample('cli-xz'), repo: 'anthos/xz', tag: '1.0', pack: 'xz' },
    { idx: sample('cli-gz'), repo: 'anthos/gz', tag: '1.0', pack: 'gzip' },
    { idx: sample('cli-b-tar'), repo: 'bundle/plain', tag: '2.0', pack: 'bundle' },
    { idx: sample('cli-b-gz'), repo: 'bundle/gz', tag: '2.0', pack: 'bundle gzip' },
    { idx: sample('cli-b-xz'), repo: 'bundle/xz', tag: '2.0', pack: 'bundle xz' },
  ];
  const files: string[] = [];
  const bundleDir = path.join(work, 'bmpackages');
  await fs.mkdir(bundleDir);
  for (const i of images) {
    let file = await skopeoArchiveFile(sk, work, i.idx, `${UP}/${i.repo}:${i.tag}`);
    // The system tools, as a user would run them: `xz file` -> file.xz, `gzip file` -> file.gz.
    if (i.pack.endsWith('xz')) file = (await runOk('xz', ['-T1', file], { timeoutMs: 60_000 }), `${file}.xz`);
    if (i.pack.endsWith('gzip')) file = (await runOk('gzip', [file], { timeoutMs: 60_000 }), `${file}.gz`);
    if (i.pack.startsWith('bundle')) await fs.rename(file, path.join(bundleDir, path.basename(file)));
    else files.push(file);
  }
  // A bmctl-style bundle: `tar -cJf` of a directory holding the image archives.
  const bundle = path.join(work, 'bmpackages.tar.xz');
  await runOk('tar', ['-cJf', bundle, '-C', work, 'bmpackages'], { timeoutMs: 60_000 });
  files.push(bundle);

  const out = await runCli(['import', '--mirror', s.url, '--namespace', 'test-namespace', ...files], work);
  t.is(out.code, 0, out.stderr + out.stdout);
  const events = out.stdout.trim().split('\n').map((l) => JSON.parse(l) as ImportEvent & { file: string });
  const imported = events.filter((e) => e.event === 'image').map((e) => `${String(e.name)}:${String(e.tag)}@${String(e.digest)}`);
  t.deepEqual(imported.sort(), images.map((i) => `test-namespace/${i.repo}:${i.tag}@${i.idx.index.digest}`).sort());
  t.deepEqual(events.filter((e) => e.event === 'done').map((e) => [path.basename(e.file), e.failed]), files.map((f) => [path.basename(f), 0]));
  t.deepEqual(await filesUnder(path.join(s.dataDir, 'storage', 'tmp')), [], 'no temp file left');

  await assertPulledBack(t, { sk, ctd, s, work }, images);
});
