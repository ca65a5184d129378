/**
 * The OpenShift Windows images path (the guide's `<mirror>/x/y/z/oss/kubernetes/pause:3.9`
 * for `mcr.microsoft.com/oss/kubernetes/pause:3.9`): a namespace `x/y/z` routed to an
 * upstream named `mcr.microsoft.com`, whose endpoint is a local Debian docker-registry
 * (Basic auth). containerd (`ctr images pull`, the mirror named in the reference, so no
 * `?ns=`), skopeo and podman pull through it; the upstream sees `oss/kubernetes/pause` only.
 *
 * Windows images carry foreign (non-distributable) layers: descriptors with `urls` and
 * media type `application/vnd.docker.image.rootfs.foreign.diff.tar.gzip` that registries
 * do not hold. The mirror must cache and serve such a manifest byte for byte without
 * fetching those layers (checked with the in-process fake upstream, which records every
 * request; docker-registry would need `validation.manifests.urls` to accept the push).
 */
import test from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import { startContainerd } from '../helpers/containerd.js';
import { seedRegistry, settleAccessLog, startDockerRegistry } from '../helpers/docker-registry.js';
import { http } from '../helpers/http.js';
import { startServer, tempDir } from '../helpers/server.js';
import { podman } from '../helpers/podman.js';
import { pullArgs, skopeo } from '../helpers/skopeo.js';
import { FakeUpstream } from '../fixtures/fake-upstream.js';
import { MediaTypes, allBlobsOf, descriptor, jsonBlob, makeBlob, makeImage, makeIndex, makeLayer, randomBytes } from '../fixtures/images.js';
import { CREDS, assertContent, assertImage, assertLayoutHolds, e2e, fromContainerd, summary, upstreamEntry, watchRequests } from './_registry.js';

const MCR = 'mcr.microsoft.com';
const PAUSE = 'oss/kubernetes/pause';

/**
 * A pause-like image for linux/amd64 and windows/amd64 (ordinary layers: docker-registry
 * stores both). OCI media types: skopeo's oci: layout source (the seeding path) lists only
 * OCI manifests and indexes.
 */
function pause() {
  const image = (os: string) =>
    makeImage({ os, layers: [makeLayer([{ name: 'pause', content: randomBytes(64 * 1024, `pause-${os}`), mode: 0o755 }])] });
  const linux = image('linux');
  const windows = image('windows');
  return makeIndex(
    [
      { image: linux, platform: { architecture: 'amd64', os: 'linux' } },
      { image: windows, platform: { architecture: 'amd64', os: 'windows' } },
  ]);
}

e2e('OpenShift Windows path: containerd, skopeo and podman pull <mirror>/x/y/z/oss/kubernetes/pause:3.9, the mcr.microsoft.com upstream sees oss/kubernetes/pause', async (t) => {
  const idx = pause();
  const blobs = allBlobsOf(idx);
  const linux = idx.images[0]!.image;
  const sk = await skopeo(t);
  const [reg, ctd, work] = await Promise.all([startDockerRegistry(t, { auth: CREDS }), startContainerd(t), tempDir(t)]);
  await seedRegistry(t, reg, { repo: PAUSE, tag: '3.9', root: idx.index, blobs }, sk);
  await settleAccessLog(reg);
  const mark = reg.accessLog().length; // everything before is the seeding push

  const s = await startServer(t, {
    upstreams: { [MCR]: upstreamEntry(reg) },
    defaultUpstream: null,
    namespaces: [{ prefix: 'x/y/z', upstream: MCR }],
  });
  const requests = watchRequests(s);
  const hostsDir = path.join(work, 'certs.d'); // empty: containerd talks to the host in the reference
  await fs.mkdir(hostsDir);

  const ref = `${s.hostPort}/x/y/z/${PAUSE}:3.9`;
  await ctd.pull(ref, { namespace: 'win', hostsDir, platform: 'linux/amd64' });
  await assertImage(t, ctd, 'win', ref, idx.index.digest);
  await assertContent(t, ctd, 'win', [idx.index, linux.manifest, linux.config, ...linux.layers]);
  const reqs = requests().filter(fromContainerd);
  t.true(reqs.some((r) => r.method === 'HEAD' && r.url === `/v2/x/y/z/${PAUSE}/manifests/3.9` && r.status === 200), summary(reqs));
  t.deepEqual(reqs.filter((r) => !r.url.startsWith(`/v2/x/y/z/${PAUSE}/`) || r.status !== 200), [], 'every containerd request under x/y/z, answered 200');

  const out = path.join(work, 'skopeo');
  await sk.run(pullArgs(sk, `docker://${ref}`, `oci:${out}:3.9`));
  await assertLayoutHolds(t, out, '3.9', idx.index, blobs);

  // podman (CRI-O's image library), the mirror named in the reference as OpenShift's guide does.
  const pm = await podman(t);
  await pm.pull(ref);
  t.is(await pm.digestOf(ref), idx.index.digest, 'podman has the upstream digest');
  t.true(
    requests().some((r) => r.ua.toLowerCase().includes('podman') || r.ua.includes('containers/')),
    `podman's requests reached the mirror: ${summary(requests().slice(-5))}`,
  );

  const explain = (await http('GET', `${s.url}/api/v1/resolve?path=x/y/z/${PAUSE}`)).json<{ upstream: { name: string }; remoteRepository: string }>();
  t.is(explain.upstream.name, MCR);
  t.is(explain.remoteRepository, PAUSE);

  await settleAccessLog(reg);
  const fromMirror = reg.accessLog().slice(mark).filter((e) => e.userAgent.startsWith('regmirror/'));
  t.true(fromMirror.some((e) => e.method === 'GET' && e.path === `/v2/${PAUSE}/manifests/3.9` && e.status === 200), JSON.stringify(fromMirror));
  t.deepEqual(fromMirror.filter((e) => e.path !== '/v2/' && !e.path.startsWith(`/v2/${PAUSE}/`)), [], 'the upstream only ever saw oss/kubernetes/pause');
  t.false(reg.accessLog().slice(mark).some((e) => !e.userAgent.startsWith('regmirror/')), 'no client bypassed the mirror');
});

test('a Windows manifest with foreign layers (urls) is cached and served byte for byte; the foreign layer is never fetched', async (t) => {
  const fake = await FakeUpstream.start({});
  t.teardown(() => fake.close());
  const own = makeLayer([{ name: 'Files/pause.exe', content: randomBytes(32 * 1024, 'win-own') }], { flavor: 'docker' });
  // The base layer as Windows images list it: only a descriptor, the bytes live at the URL.
  const foreign = makeBlob(randomBytes(1024, 'foreign-base'), 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip');
  const config = jsonBlob(
    { architecture: 'amd64', os: 'windows', 'os.version': '10.0.17763.1', config: {}, rootfs: { type: 'layers', diff_ids: [foreign.digest, own.diffId] } },
    MediaTypes.dockerConfig,
  );
  // Written by hand with its own whitespace: the mirror must not re-serialise it.
  const manifest = Buffer.from(
    `{\n   "schemaVersion": 2,\n   "mediaType": "${MediaTypes.dockerManifest}",\n   "config": ${JSON.stringify(descriptor(config))},\n   "layers": [\n      ${JSON.stringify({
      ...descriptor(foreign),
      urls: ['https://mcr.microsoft.com/v2/windows/nanoserver/blobs/' + foreign.digest],
    })},\n      ${JSON.stringify(descriptor(own))}\n   ]\n}`,
  );
  fake.addBlob(PAUSE, config);
  fake.addBlob(PAUSE, own); // the foreign layer is not in the registry at all
  const digest = fake.addManifest(PAUSE, manifest, MediaTypes.dockerManifest, { tag: '3.9' });

  const s = await startServer(t, { upstreams: { [MCR]: { endpoints: [fake.url] } }, defaultUpstream: null, namespaces: [{ prefix: 'x/y/z', upstream: MCR }] });
  const accept = { accept: MediaTypes.dockerManifest };
  const byTag = await http('GET', `${s.url}/v2/x/y/z/${PAUSE}/manifests/3.9`, { headers: accept });
  t.is(byTag.status, 200);
  t.true(byTag.body.equals(manifest), 'served byte for byte');
  t.is(byTag.headers['docker-content-digest'], digest);
  for (const b of [config, own]) {
    const got = await http('GET', `${s.url}/v2/x/y/z/${PAUSE}/blobs/${b.digest}`);
    t.is(got.status, 200);
    t.true(got.body.equals(b.bytes));
  }

  // Cached: with the upstream gone, the manifest (by digest) and the layers still come back identical.
  await fake.stop(['registry']);
  const byDigest = await http('GET', `${s.url}/v2/x/y/z/${PAUSE}/manifests/${digest}`, { headers: accept });
  t.is(byDigest.status, 200);
  t.true(byDigest.body.equals(manifest), 'cached copy byte for byte');
  t.is((await http('GET', `${s.url}/v2/x/y/z/${PAUSE}/blobs/${own.digest}`)).status, 200);

  t.is(fake.count({ path: new RegExp(foreign.digest) }), 0, 'the fake saw no request for the foreign layer');
  t.deepEqual(fake.find().filter((r) => !r.path.startsWith(`/v2/${PAUSE}/`) && r.path !== '/v2/'), [], 'upstream saw oss/kubernetes/pause only');
});
