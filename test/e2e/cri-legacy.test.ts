/**
 * containerd's legacy CRI registry configuration in config.toml, pulled through with the
 * CRI plugin's PullImage (test/helpers/cri.ts; `ctr` never reads this form):
 * `[plugins."io.containerd.grpc.v1.cri".registry.mirrors."<registry>"] endpoint = [...]`
 * and `registry.configs."<mirror host>"` (tls, auth), as the Anthos bare-metal guide and
 * `regmirror client-config containerd-legacy` write it. Checked here with containerd 1.6:
 * what it does with a path in an endpoint, that a pod secret replaces configs auth, and
 * that it drops the whole CRI plugin when `mirrors` sits next to `config_path`.
 *
 * The legacy form always appends the registry itself as the last endpoint, so the
 * registry is named `localhost:<closed port>`: a failing mirror falls back to a refused
 * local connection, never to a DNS lookup or the network.
 *
 * Skipped only when a tool is missing and CI !== 'true'; under CI a missing tool fails.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { status as grpcStatus } from '@grpc/grpc-js';
import { createPki } from '../helpers/certs.js';
import { startContainerd } from '../helpers/containerd.js';
import { CriError, criClient } from '../helpers/cri.js';
import { startServer } from '../helpers/server.js';
import { freePort } from '../helpers/tools.js';
import { CREDS, REPO, V1, execFileP, fromContainerd, seededUpstream, summary, upstreamEntry, watchRequests } from './_registry.js';
import { CRI_REGISTRY, NODE, assertCriImage, e2e, expectPullFails, leaked, loginRequired } from './_cri.js';

/** `localhost:<port>` for a port nobody listens on: a registry name whose fallback is a refused local connection. */
async function localRegistryName(): Promise<string> {
  return `localhost:${await freePort()}`;
}

e2e('legacy registry.mirrors endpoint: a /v2/<namespace> path is used verbatim, no path means /v2, a path without /v2 is not fixed up', async (t) => {
  const up = await seededUpstream(t);
  const [nsReg, plainReg, badReg] = await Promise.all([localRegistryName(), localRegistryName(), localRegistryName()]);
  const s = await startServer(t, {
    upstreams: { [nsReg]: upstreamEntry(up.reg), [plainReg]: upstreamEntry(up.reg), [badReg]: upstreamEntry(up.reg) },
    defaultUpstream: null,
    namespaces: [{ prefix: 'test-namespace', upstream: 'ns' }],
  });
  const requests = watchRequests(s);
  const criRegistryToml = [
    `[${CRI_REGISTRY}.mirrors."${nsReg}"]`,
    `  endpoint = ["${s.url}/v2/test-namespace"]`,
    `[${CRI_REGISTRY}.mirrors."${plainReg}"]`,
    `  endpoint = ["${s.url}"]`,
    `[${CRI_REGISTRY}.mirrors."${badReg}"]`,
    `  endpoint = ["${s.url}/test-namespace"]`,
  ].join('\n');
  const ctd = await startContainerd(t, { cri: true, criRegistryToml });
  t.is(ctd.criHostsDir, null, 'no config_path with the legacy form');
  const cri = criClient(t, ctd.address);
  const nsOf = (reg: string) => `ns=${encodeURIComponent(reg)}`;

  // /v2/test-namespace: containerd sends <endpoint>/<repo>/manifests/<tag>, as written.
  let mark = requests().length;
  const ref = `${nsReg}/${REPO}:1.0`;
  const imageRef = await cri.pull(ref);
  await assertCriImage(t, cri, ref, `${nsReg}/${REPO}`, V1.index.digest, imageRef);
  let reqs = requests().slice(mark).filter(fromContainerd);
  t.true(reqs.some((r) => r.method === 'HEAD' && r.url === `/v2/test-namespace/${REPO}/manifests/1.0?${nsOf(nsReg)}` && r.status === 200), summary(reqs));
  t.deepEqual(reqs.filter((r) => !r.url.startsWith(`/v2/test-namespace/${REPO}/`) || !r.url.endsWith(`?${nsOf(nsReg)}`) || r.status !== 200), [], 'all under the namespace, with ns=, 200');

  // No path: containerd adds /v2.
  mark = requests().length;
  const plainRef = `${plainReg}/${REPO}:1.0`;
  await cri.pull(plainRef);
  // Same content as the first pull: one CRI image (one id) known under both names.
  t.deepEqual((await cri.status(plainRef))?.repoDigests.sort(), [`${nsReg}/${REPO}@${V1.index.digest}`, `${plainReg}/${REPO}@${V1.index.digest}`].sort());
  reqs = requests().slice(mark).filter(fromContainerd);
  t.true(reqs.some((r) => r.method === 'HEAD' && r.url === `/v2/${REPO}/manifests/1.0?${nsOf(plainReg)}` && r.status === 200), summary(reqs));
  t.deepEqual(reqs.filter((r) => !r.url.startsWith(`/v2/${REPO}/`) || r.status !== 200), []);

  // A path without /v2 is the API root as written: regmirror gets /test-namespace/... (404)
  // and containerd falls back to the registry itself (the closed port).
  mark = requests().length;
  await expectPullFails(t, cri, `${badReg}/${REPO}:1.0`);
  reqs = requests().slice(mark).filter(fromContainerd);
  t.deepEqual(reqs.map((r) => [r.method, r.url, r.status]), [['HEAD', `/test-namespace/${REPO}/manifests/1.0?${nsOf(badReg)}`, 404]]);
  t.regex(ctd.output(), new RegExp(`trying next host.*${badReg.replace('.', '\\.')}`), 'containerd went on to the registry itself');
});

e2e('generated `client-config containerd-legacy` over TLS: CRI pulls with configs.<mirror>.tls.ca_file and configs auth; a pod secret replaces that auth', async (t) => {
  const up = await seededUpstream(t);
  const reg = await localRegistryName();
  const pki = await createPki(t, 'cri-legacy');
  const leaf = await pki.issue('mirror');
  const serverConfig = {
    upstreams: { [reg]: upstreamEntry(up.reg) },
    defaultUpstream: null,
    namespaces: [{ prefix: 'test-namespace', upstream: 'ns' }],
    tls: { cert: leaf.chain, key: leaf.key },
    auth: await loginRequired(up),
  };
  const s = await startServer(t, serverConfig);
  t.regex(s.url, /^https:/);
  const requests = watchRequests(s);

  const configFile = path.join(up.work, 'regmirror.yml');
  await fs.writeFile(configFile, JSON.stringify({ listen: '127.0.0.1:0', storage: path.join(up.work, 'unused'), ...serverConfig })); // JSON is YAML
  const outDir = path.join(up.work, 'generated');
  await execFileP(process.execPath, ['dist/cli.js', 'client-config', 'containerd-legacy', '--config', configFile, '--mirror', s.url, '--namespace', 'test-namespace', '--ca', pki.root.cert, '--out', outDir]);
  const generated = await fs.readFile(path.join(outDir, 'regmirror-cri-registry.toml'), 'utf8');
  t.true(generated.includes(`endpoint = ["${s.url}/v2/test-namespace"]`), generated);
  t.true(generated.includes(`[${CRI_REGISTRY}.configs."${s.hostPort}".tls]`), generated);
  t.false(generated.includes(CREDS.password) || generated.includes(NODE.password), 'no credentials in the generated file');
  // The operator fills in the commented auth placeholder for the node.
  const filled = generated
    .replace(`# [${CRI_REGISTRY}.configs."${s.hostPort}".auth]`, `[${CRI_REGISTRY}.configs."${s.hostPort}".auth]`)
    .replace('#   username = "<user>"', `  username = "${NODE.username}"`)
    .replace('#   password = "<password>"', `  password = "${NODE.password}"`);
  t.not(filled, generated);
  const ctd = await startContainerd(t, { cri: true, criRegistryToml: filled });
  const cri = criClient(t, ctd.address);
  const ref = `${reg}/${REPO}:1.0`;

  // No pod secret: the node's configs auth, over TLS verified against the CA.
  let mark = requests().length;
  const imageRef = await cri.pull(ref);
  await assertCriImage(t, cri, ref, `${reg}/${REPO}`, V1.index.digest, imageRef);
  let reqs = requests().slice(mark).filter(fromContainerd);
  t.true(reqs.some((r) => r.method === 'HEAD' && r.url === `/v2/test-namespace/${REPO}/manifests/1.0?ns=${encodeURIComponent(reg)}` && r.auth === 'basic' && r.status === 200), summary(reqs));
  t.true(reqs.every((r) => (r.status === 401 && r.auth === '') || (r.status === 200 && r.auth === 'basic')), summary(reqs));
  t.false(leaked(s, NODE.password));

  // A pod secret for the source registry: containerd sends it instead of the configs auth,
  // so the mirror refuses the pull the node alone could make.
  await cri.remove(ref);
  mark = requests().length;
  await expectPullFails(t, cri, ref, { username: CREDS.username, password: CREDS.password });
  reqs = requests().slice(mark).filter(fromContainerd);
  t.true(reqs.some((r) => r.auth === 'basic' && r.status === 401), `the pod secret replaced the node's: ${summary(reqs)}`);
  t.false(reqs.some((r) => r.status === 200));
  t.is(await cri.status(ref), null);
  t.false(leaked(s, CREDS.password));
});

e2e('legacy mirrors next to registry.config_path: containerd 1.6 does not load the CRI plugin at all (PullImage is unimplemented)', async (t) => {
  const reg = await localRegistryName();
  const criRegistryToml = [`[${CRI_REGISTRY}]`, `  config_path = "/nonexistent/certs.d"`, `[${CRI_REGISTRY}.mirrors."${reg}"]`, '  endpoint = ["http://127.0.0.1:1"]'].join('\n');
  const ctd = await startContainerd(t, { cri: true, criRegistryToml });
  const cri = criClient(t, ctd.address);
  const err = await t.throwsAsync(cri.pull(`${reg}/${REPO}:1.0`), { instanceOf: CriError });
  t.is(err?.code, grpcStatus.UNIMPLEMENTED, err?.message);
  t.regex(ctd.output(), /failed to load plugin io\.containerd\.grpc\.v1\.cri.*`mirrors` cannot be set when `config_path` is provided/);
});
