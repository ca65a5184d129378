/**
 * Real clients across replicas on shared storage (issue #13): regmirror replicas in-process
 * on one real PostgreSQL and one real RADOS Gateway bucket (test/helpers/replicas.ts), the
 * real skopeo and containerd (`ctr --hosts-dir`). A multi-arch image pushed with
 * `skopeo copy --all` through replica A is pulled through B and C with identical digests;
 * with `storage.s3.redirect` both clients follow the 307 to the store (127.0.0.1) and get
 * the exact bytes. (A chunked upload started on one replica and finished on another has
 * no real client able to do it: shared-storage.test.ts drives it over HTTP.)
 * Never skipped under CI=true.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { type Containerd, startContainerd, writeHostsToml } from '../helpers/containerd.js';
import { replicas, sharedMissing, stopSharedServers } from '../helpers/replicas.js';
import { type TestServer, tempDir } from '../helpers/server.js';
import { pullArgs, pushArgs, skopeo } from '../helpers/skopeo.js';
import { CI, missingTools } from '../helpers/tools.js';
import { type ImageIndex, allBlobsOf, writeOciLayout } from '../fixtures/images.js';
import { assertContent, assertImage, assertLayoutHolds, busybox } from './_registry.js';

const TOOLS = missingTools(['skopeo', 'containerd', 'ctr']);
const missing = sharedMissing ?? (TOOLS.length > 0 && !CI ? `missing ${TOOLS.join(', ')}` : null);
const REPO = 'team/busybox';

/** Every request a replica answered (its access log), as `status method path`. */
function answered(s: TestServer): string[] {
  return s.logs.flatMap((l) => {
    const j = JSON.parse(l) as { msg?: string; status?: number; method?: string; url?: string };
    return j.msg === 'request' && j.status !== undefined ? [`${j.status} ${j.method} ${j.url}`] : [];
  });
}

function assertNo5xx(t: ExecutionContext, servers: TestServer[]): void {
  for (const s of servers) t.deepEqual(answered(s).filter((r) => r.startsWith('5')), [], `${s.url} answered 5xx`);
}

/** `ctr images pull` of `<replica>/<REPO>:<tag>` (the replica is the registry itself: no ?ns=), every platform. */
async function ctrPull(t: ExecutionContext, ctd: Containerd, s: TestServer, tag: string, idx: ImageIndex, namespace: string): Promise<void> {
  const hostsDir = await tempDir(t, 'regmirror-hosts-');
  await writeHostsToml(hostsDir, s.hostPort, { server: s.url, hosts: [] });
  const ref = `${s.hostPort}/${REPO}:${tag}`;
  await ctd.pull(ref, { namespace, hostsDir, allPlatforms: true });
  await assertImage(t, ctd, namespace, ref, idx.index.digest);
  await assertContent(t, ctd, namespace, allBlobsOf(idx));
}

/** Push `idx` as `<REPO>:<tag>` through `via` with `skopeo copy --all --preserve-digests`. */
async function skopeoPush(t: ExecutionContext, via: TestServer, idx: ImageIndex, tag: string): Promise<void> {
  const sk = await skopeo(t);
  const src = path.join(await tempDir(t), 'src');
  await writeOciLayout(src, [{ tag, root: idx.index }], allBlobsOf(idx));
  await sk.run(pushArgs(sk, `oci:${src}:${tag}`, `docker://${via.hostPort}/${REPO}:${tag}`));
}

/** Pull `<REPO>:<tag>` through `via` with skopeo into an OCI layout: the exact index and blobs. */
async function skopeoPull(t: ExecutionContext, via: TestServer, idx: ImageIndex, tag: string): Promise<void> {
  const sk = await skopeo(t);
  const out = path.join(await tempDir(t), 'out');
  await sk.run(pullArgs(sk, `docker://${via.hostPort}/${REPO}:${tag}`, `oci:${out}:${tag}`));
  await assertLayoutHolds(t, out, tag, idx.index, allBlobsOf(idx));
  const files = await fs.readdir(path.join(out, 'blobs', 'sha256'));
  t.is(files.length, allBlobsOf(idx).length, 'nothing converted or added');
}

if (missing) {
  test.skip(`shared storage with real clients: ${missing}`, () => undefined);
} else {
  test.after.always(stopSharedServers);

  test.serial('skopeo copy --all pushes a multi-arch image through replica A; skopeo through B and containerd through C pull identical digests', async (t) => {
    const rs = (await replicas(t, 3)) as unknown as TestServer[];
    const [a, b, c] = rs as [TestServer, TestServer, TestServer];
    const ctd = await startContainerd(t);
    const idx = busybox('shared-clients', 192);
    await skopeoPush(t, a, idx, '1.0');
    await skopeoPull(t, b, idx, '1.0');
    await ctrPull(t, ctd, c, '1.0', idx, 'via-c');
    // B and C answered from the shared store: neither was pushed to.
    for (const s of [b, c]) t.false(answered(s).some((r) => /^\d+ (POST|PUT|PATCH) /.test(r)), `${s.url} received no writes`);
    t.true(answered(c).some((r) => r.startsWith('200 GET') && r.includes('/blobs/')), 'containerd fetched blobs from C');
    assertNo5xx(t, rs);
  });

  test.serial('storage.s3.redirect: skopeo and containerd pull through a replica, follow the 307 to the store (127.0.0.1), digests correct', async (t) => {
    const rs = (await replicas(t, 2, {}, { redirect: true, redirectExpires: '5m' })) as unknown as TestServer[];
    const [a, b] = rs as [TestServer, TestServer];
    const ctd = await startContainerd(t);
    const idx = busybox('shared-redirect', 128);
    await skopeoPush(t, a, idx, '2.0');
    await skopeoPull(t, b, idx, '2.0');
    await ctrPull(t, ctd, a, '2.0', idx, 'redirected');
    const blobs = allBlobsOf(idx).filter((x) => !x.mediaType.includes('manifest') && !x.mediaType.includes('index'));
    for (const s of [a, b]) {
      const redirected = answered(s).filter((r) => r.startsWith('307 GET') && r.includes('/blobs/'));
      t.true(redirected.length > 0, `${s.url} redirected blob GETs`);
      t.false(answered(s).some((r) => r.startsWith('200 GET') && blobs.some((l) => r.endsWith(`/blobs/${l.digest}`))), `${s.url} served no blob itself`);
    }
    assertNo5xx(t, rs);
  });
}
