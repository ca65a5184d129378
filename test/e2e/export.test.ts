/**
 * Export read by real tools, and the air-gap flow end to end:
 *
 *  - mirror A pulls through from Debian's docker-registry (filled by skopeo); the
 *    `regmirror export` CLI writes the archive from A; POST /api/v1/import loads it into
 *    mirror B, whose upstream is a closed port; containerd (`ctr images pull --hosts-dir`,
 *    Anthos style `/v2/test-namespace` + override_path) pulls from B with the source's digests.
 *  - The exported tar is read by `skopeo inspect --raw` and `skopeo copy --all
 *    oci-archive:FILE oci:DIR` (digests preserved) and by `podman load`.
 *
 * Skipped only when a tool is absent and CI !== 'true'.
 */
import test from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import { writeHostsToml } from '../helpers/containerd.js';
import { runCli } from '../helpers/cli.js';
import { http } from '../helpers/http.js';
import { podman } from '../helpers/podman.js';
import { startServer } from '../helpers/server.js';
import { CI, missingTools } from '../helpers/tools.js';
import { pushIndex } from '../integration/_support.js';
import { type ImportResult, importRaw } from '../integration/_import.js';
import { AMD64, REPO, UP, V1, V1_BLOBS, assertContent, assertImage, assertLayoutHolds, e2e, seededUpstream, setup, upstreamEntry } from './_registry.js';

const withPodman = missingTools(['podman']).length === 0 || CI ? e2e : test.skip;

e2e('air gap: A pulls through from docker-registry, `regmirror export` from A, import into B (no upstream), containerd pulls from B with identical digests', async (t) => {
  const env = await setup(t);
  const a = await startServer(t, { upstreams: { [UP]: upstreamEntry(env.reg) }, defaultUpstream: UP });
  const b = await startServer(t, {
    upstreams: { [UP]: { endpoints: [env.closed] } },
    defaultUpstream: UP,
    namespaces: [{ prefix: 'test-namespace', upstream: 'ns', push: true }],
  });

  // The connected site: A holds nothing yet; the export pulls it through.
  const file = path.join(env.work, 'site-bundle.tar.gz');
  const r = await runCli(['export', '--mirror', a.url, '-o', file, '--gzip', `${REPO}:1.0`], env.work);
  t.is(r.code, 0, `${r.stdout}\n${r.stderr}`);
  const done = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { event: string; images: Array<{ name: string; digest: string }> };
  t.deepEqual(done.images.map((i) => [i.name, i.digest]), [[`${REPO}:1.0`, V1.index.digest]]);
  await env.reg.kill(); // from here on, nothing can come from the upstream

  // The air-gapped site.
  const res = await importRaw(b.url, 'namespace=test-namespace', await fs.readFile(file), 'application/gzip');
  t.is(res.status, 200, res.body.toString());
  t.like(res.json<{ images: ImportResult[] }>().images[0], { name: `test-namespace/${REPO}`, tag: '1.0', digest: V1.index.digest });

  await writeHostsToml(env.hostsDir, UP, { server: env.closed, hosts: [{ url: `${b.url}/v2/test-namespace`, overridePath: true }] });
  const ref = `${UP}/${REPO}:1.0`;
  await env.ctd.pull(ref, { namespace: 'airgap', hostsDir: env.hostsDir, allPlatforms: true });
  await assertImage(t, env.ctd, 'airgap', ref, V1.index.digest);
  await assertContent(t, env.ctd, 'airgap', V1_BLOBS);
});

withPodman('the exported tar is read by skopeo (inspect, copy --all with digests preserved) and podman load', async (t) => {
  const up = await seededUpstream(t, []);
  const s = await startServer(t);
  t.is((await pushIndex(s.url, REPO, V1, '1.0')).status, 201);

  const all = path.join(up.work, 'all.tar');
  const res = await http('GET', `${s.url}/api/v1/export?image=${REPO}:1.0`);
  t.is(res.status, 200);
  await fs.writeFile(all, res.body);
  const raw = await up.sk.run(['inspect', '--raw', `oci-archive:${all}`]);
  t.true(raw.stdoutBytes.equals(V1.index.bytes), 'skopeo reads the index, byte for byte');
  const dir = path.join(up.work, 'copied');
  await up.sk.run(['copy', '--all', '--preserve-digests', `oci-archive:${all}`, `oci:${dir}:copied`]);
  await assertLayoutHolds(t, dir, 'copied', V1.index, V1_BLOBS);

  // podman: the amd64 image (its manifest digest unchanged), named as io.containerd.image.name says.
  const one = path.join(up.work, 'amd64.tar');
  const res1 = await http('GET', `${s.url}/api/v1/export?image=${REPO}:1.0&ns=${UP}&platform=linux/amd64`);
  t.is(res1.status, 200);
  await fs.writeFile(one, res1.body);
  const pm = await podman(t);
  const loaded = await pm.load(one);
  t.log(loaded.stdout.trim());
  const name = `${UP}/${REPO}:1.0`;
  t.is(await pm.digestOf(name), AMD64.manifest.digest);
  const id = (await pm.run(['image', 'inspect', '--format', '{{.Id}}', name])).stdout.trim();
  t.is(`sha256:${id}`, AMD64.config.digest, 'the image ID is the config digest');
});
