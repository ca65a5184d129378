/**
 * `regmirror client-config idms` / `itms` output used the way OpenShift uses it: the
 * Machine Config Operator renders each mirror set entry into registries.conf
 * (formats.md §4: `[[registry]] location = <source>` with a `[[registry.mirror]]` per mirror,
 * `pull-from-mirror = "digest-only"` for IDMS, `"tag-only"` for ITMS), and CRI-O pulls with
 * containers/image. CRI-O is not installed here; skopeo is the same library with the same
 * registries.conf, so it pulls through the rendered file.
 *
 * The source is `upstream.test`, a name that does not resolve, so a pull that skipped the
 * mirror fails instead of reaching anything but 127.0.0.1.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import YAML from 'yaml';
import { startServer } from '../helpers/server.js';
import { pullArgs } from '../helpers/skopeo.js';
import { REPO, V1, V1_BLOBS, assertLayoutHolds, e2e, execFileP, seededUpstream, summary, upstreamEntry, watchRequests } from './_registry.js';

interface MirrorEntry {
  source: string;
  mirrors: string[];
  mirrorSourcePolicy?: string;
}

/** What MCO writes for a mirror set (formats.md §4); the mirror is plain http, so insecure (insecureRegistries). */
function renderLikeMco(entries: MirrorEntry[], pullFrom: 'digest-only' | 'tag-only'): string {
  const lines: string[] = [];
  for (const e of entries) {
    lines.push('[[registry]]', `location = ${JSON.stringify(e.source)}`);
    if (e.mirrorSourcePolicy === 'NeverContactSource') lines.push('blocked = true');
    for (const m of e.mirrors) lines.push('[[registry.mirror]]', `location = ${JSON.stringify(m)}`, `pull-from-mirror = ${JSON.stringify(pullFrom)}`, 'insecure = true');
    lines.push('');
  }
  return lines.join('\n');
}

e2e('generated ImageDigestMirrorSet / ImageTagMirrorSet, rendered as MCO does: skopeo pulls by digest and by tag through the mirror', async (t) => {
  const up = await seededUpstream(t);
  const serverConfig = { upstreams: { 'upstream.test': upstreamEntry(up.reg) }, defaultUpstream: null };
  const s = await startServer(t, serverConfig);
  const requests = watchRequests(s);
  const configFile = path.join(up.work, 'regmirror.yml');
  await fs.writeFile(configFile, JSON.stringify({ listen: '127.0.0.1:0', storage: path.join(up.work, 'unused'), ...serverConfig })); // JSON is YAML
  const cli = async (kind: string) =>
    (await execFileP(process.execPath, ['dist/cli.js', 'client-config', kind, '--config', configFile, '--mirror', s.url])).stdout.replace(/^# ==> .* <==\n/m, '');

  const idms = YAML.parse(await cli('idms')) as { kind: string; spec: { imageDigestMirrors: MirrorEntry[] } };
  t.is(idms.kind, 'ImageDigestMirrorSet');
  t.deepEqual(idms.spec.imageDigestMirrors, [{ source: 'upstream.test', mirrors: [`${s.hostPort}/upstream.test`] }]);
  await up.sk.setRegistriesConf(renderLikeMco(idms.spec.imageDigestMirrors, 'digest-only'));
  const byDigest = path.join(up.work, 'idms');
  await up.sk.run(pullArgs(up.sk, `docker://upstream.test/${REPO}@${V1.index.digest}`, `oci:${byDigest}:1.0`));
  await assertLayoutHolds(t, byDigest, '1.0', V1.index, V1_BLOBS);

  const itms = YAML.parse(await cli('itms')) as { kind: string; spec: { imageTagMirrors: MirrorEntry[] } };
  t.is(itms.kind, 'ImageTagMirrorSet');
  await up.sk.setRegistriesConf(renderLikeMco(itms.spec.imageTagMirrors, 'tag-only'));
  const byTag = path.join(up.work, 'itms');
  await up.sk.run(pullArgs(up.sk, `docker://upstream.test/${REPO}:1.0`, `oci:${byTag}:1.0`));
  await assertLayoutHolds(t, byTag, '1.0', V1.index, V1_BLOBS);

  // CRI-O's requests: the mirror path (the registry host), then the repository; no ?ns=.
  const reqs = requests().filter((r) => r.url !== '/v2/');
  t.true(reqs.some((r) => r.method === 'GET' && r.url === `/v2/upstream.test/${REPO}/manifests/${V1.index.digest}` && r.status === 200), summary(reqs));
  t.true(reqs.some((r) => r.url === `/v2/upstream.test/${REPO}/manifests/1.0` && r.status === 200), summary(reqs));
  t.deepEqual(reqs.filter((r) => !r.url.startsWith(`/v2/upstream.test/${REPO}/`)), [], 'every request under the mirror path');
});
