/**
 * Pulls through containerd's CRI plugin, the way kubelet and `crictl pull` do: gRPC
 * `runtime.v1.ImageService/PullImage` on containerd's socket (test/helpers/cri.ts), then
 * `ImageStatus` to compare `repoDigests` with the upstream's own digest (what the Anthos
 * guide checks with `crictl inspecti`). The upstream is Debian's docker-registry with
 * Basic auth; regmirror runs in-process with its credentials.
 *
 * - config_path (hosts.toml) pulls, anonymous and with `PullImageRequest.auth` (what a
 *   pod's imagePullSecrets become: username/password, no server_address) against a mirror
 *   that requires a login, Basic or token;
 * - the legacy CRI `registry.mirrors` / `registry.configs` form in config.toml, which only
 *   the CRI plugin reads, including what containerd 1.6 does with a path in an endpoint,
 *   and `regmirror client-config containerd-legacy` output used as is over TLS.
 *
 * The hosts.toml tests name the registry `upstream.test:5000` with a closed port as the
 * fallback `server`. The legacy form always appends the registry itself as the last
 * endpoint, so those tests name the registry `localhost:<closed port>`: a failing mirror
 * falls back to a refused local connection, never to a DNS lookup or the network.
 *
 * Skipped only when a tool is missing and CI !== 'true'; under CI a missing tool fails.
 */
import test, { type ExecutionContext } from 'ava';
import path from 'node:path';
import { writeHtpasswd } from '../helpers/authn.js';
import { type Containerd, startContainerd, writeHostsToml } from '../helpers/containerd.js';
import { type CriAuth, type CriClient, CriError, criClient } from '../helpers/cri.js';
import { settleAccessLog } from '../helpers/docker-registry.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { CI, missingTools } from '../helpers/tools.js';
import {
  AMD64,
  CREDS,
  NS_UP,
  REPO,
  TOOLS,
  UP,
  V1,
  fromContainerd,
  seededUpstream,
  summary,
  upstreamDigest,
  upstreamEntry,
  watchRequests,
  type SeenRequest,
  type Upstream,
} from './_registry.js';

const MISSING = missingTools(TOOLS);
const e2e = MISSING.length === 0 || CI ? test : test.skip;

/** The image the CRI picks on this machine (it pulls the host platform only). */
const HOST_IMAGE = process.arch === 'arm64' ? V1.images[1]!.image : AMD64;
/** regmirror's own user: what belongs in a pod's pull secret for the mirror. */
const NODE = { username: 'node', password: 'node-pw-5c0f3b' };

async function expectPullFails(t: ExecutionContext, cri: CriClient, ref: string, auth?: CriAuth): Promise<CriError> {
  const err = await t.throwsAsync(cri.pull(ref, auth), { instanceOf: CriError });
  t.log(`${ref}${auth ? ' with auth' : ''}: ${err?.details.slice(0, 300)}`);
  return err as CriError;
}

/** ImageStatus shows the image by tag and by digest, with the upstream's digest (crictl inspecti). */
async function assertCriImage(t: ExecutionContext, cri: CriClient, ref: string, repo: string, digest: string, imageRef: string): Promise<void> {
  const img = await cri.status(ref);
  t.truthy(img, `ImageStatus ${ref}: no image`);
  t.deepEqual(img?.repoDigests, [`${repo}@${digest}`], 'repoDigests carry the upstream digest');
  t.deepEqual(img?.repoTags, [ref]);
  t.is(img?.id, HOST_IMAGE.config.digest, 'the image id is the host platform config digest');
  t.is(img?.id, imageRef, 'PullImage returned the image id');
  t.is((await cri.status(`${repo}@${digest}`))?.id, img?.id, 'ImageStatus by digest finds the same image');
}

/** A CRI containerd using hosts.toml for `UP`, with regmirror first and a closed port as server. */
async function criWithHosts(t: ExecutionContext, up: Upstream, s: TestServer): Promise<{ ctd: Containerd; cri: CriClient }> {
  const ctd = await startContainerd(t, { cri: true });
  await writeHostsToml(ctd.criHostsDir!, UP, { server: up.closed, hosts: [{ url: s.url }] });
  return { ctd, cri: criClient(t, ctd.address) };
}

/** Whether regmirror's log holds `secret` anywhere. */
function leaked(s: TestServer, secret: string): boolean {
  return s.logs.some((l) => l.includes(secret));
}

// ---------------------------------------------------------------------------

e2e('CRI PullImage through hosts.toml (config_path): ImageStatus repoDigests match the upstream digest, every request via the mirror with ?ns=', async (t) => {
  const up = await seededUpstream(t);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(up.reg) }, defaultUpstream: null });
  const requests = watchRequests(s);
  const { ctd, cri } = await criWithHosts(t, up, s);

  const ref = `${UP}/${REPO}:1.0`;
  t.is(await cri.status(ref), null, 'not there before the pull');
  const imageRef = await cri.pull(ref);
  const digest = await upstreamDigest(up.reg, REPO, '1.0');
  t.is(digest, V1.index.digest);
  await assertCriImage(t, cri, ref, `${UP}/${REPO}`, digest, imageRef);
  t.true((await cri.list()).some((i) => i.id === imageRef), 'ListImages has it');
  // The CRI keeps its images in containerd's k8s.io namespace, under the tag as pulled.
  t.true((await ctd.images('k8s.io')).some((i) => i.ref === ref && i.digest === digest), 'k8s.io namespace holds the index digest');

  const reqs = requests().filter(fromContainerd);
  t.true(reqs.some((r) => r.method === 'HEAD' && r.url === `/v2/${REPO}/manifests/1.0?${NS_UP}` && r.status === 200), `no tag HEAD: ${summary(reqs)}`);
  for (const b of [HOST_IMAGE.config, ...HOST_IMAGE.layers]) {
    t.true(reqs.some((r) => r.method === 'GET' && r.url === `/v2/${REPO}/blobs/${b.digest}?${NS_UP}` && r.status === 200), `blob ${b.digest} not via the mirror`);
  }
  t.deepEqual(reqs.filter((r) => r.status !== 200 || !r.url.endsWith(`?${NS_UP}`)), [], 'every CRI request answered 200, all with ns=');
  t.deepEqual(reqs.filter((r) => r.auth !== ''), [], 'anonymous pull allowed: regmirror never challenged, containerd sent no credentials');
  await settleAccessLog(up.reg);
  t.false(up.reg.accessLog().some((e) => e.userAgent.startsWith('containerd/')), 'containerd never went to the upstream');

  await cri.remove(ref);
  t.is(await cri.status(ref), null, 'RemoveImage removed it');
  t.false((await cri.list()).some((i) => i.id === imageRef));
});

e2e('imagePullSecrets via PullImageRequest.auth, mirror requires a Basic login: the mirror user works, the source registry secret gets 401 and never reaches the upstream', async (t) => {
  const up = await seededUpstream(t);
  const htpasswd = path.join(up.work, 'htpasswd');
  await writeHtpasswd(htpasswd, { [NODE.username]: NODE.password });
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(up.reg) },
    defaultUpstream: null,
    auth: {
      htpasswd,
      token: null,
      rules: [{ repositories: '**', pull: ['authenticated'], push: ['authenticated'], delete: [] }],
      loginRateLimit: { maxFailures: 1000 },
    },
  });
  const requests = watchRequests(s);
  const { cri } = await criWithHosts(t, up, s);
  const ref = `${UP}/${REPO}:1.0`;
  await settleAccessLog(up.reg);
  const upstreamBefore = up.reg.accessLog().length;
  const since = (n: number): SeenRequest[] => requests().slice(n).filter(fromContainerd);

  // No pull secret: 401, containerd has nothing to answer with, falls through to the (closed) server.
  let mark = requests().length;
  await expectPullFails(t, cri, ref);
  t.deepEqual(
    since(mark).map((r) => [r.method, r.status, r.auth]),
    [['HEAD', 401, '']],
    'one anonymous HEAD, answered 401',
  );

  // The pod's secret for the source registry (here the upstream's own login): containerd
  // offers it to the mirror (kubelet leaves server_address empty); regmirror checks it
  // against its htpasswd, answers 401 and counts a failed login; nothing goes upstream.
  mark = requests().length;
  await expectPullFails(t, cri, ref, { username: CREDS.username, password: CREDS.password });
  const offered = since(mark);
  t.true(offered.some((r) => r.auth === 'basic' && r.status === 401), `the source-registry secret was offered to the mirror: ${summary(offered)}`);
  t.false(offered.some((r) => r.status === 200));
  t.false(leaked(s, CREDS.password), 'the offered password is not logged');
  t.true(s.logs.some((l) => l.includes('failed login') && l.includes(`"user":"${CREDS.username}"`)), 'logged as a failed login (user name only)');

  // server_address naming the source registry: containerd withholds the secret from the mirror.
  mark = requests().length;
  await expectPullFails(t, cri, ref, { username: NODE.username, password: NODE.password, serverAddress: `https://${UP}` });
  t.deepEqual(since(mark).map((r) => r.auth), [''], 'credentials for another host are not sent to the mirror');

  await settleAccessLog(up.reg);
  t.is(up.reg.accessLog().length, upstreamBefore, 'no refused pull caused any upstream request');

  // The mirror's own user in the pod's secret: pulled, the upstream digest in ImageStatus.
  mark = requests().length;
  const imageRef = await cri.pull(ref, { username: NODE.username, password: NODE.password });
  await assertCriImage(t, cri, ref, `${UP}/${REPO}`, V1.index.digest, imageRef);
  const ok = since(mark);
  // containerd 1.6 resolves and fetches with separate authorizers: each starts anonymous,
  // is challenged once, then sends Basic up front.
  t.true(ok.some((r) => r.status === 401), 'challenged');
  t.true(
    ok.every((r) => (r.status === 401 && r.auth === '') || (r.status === 200 && r.auth === 'basic')),
    `only anonymous requests were challenged, every Basic one served: ${summary(ok)}`,
  );
  t.true(ok.filter((r) => r.url.includes('/blobs/')).length >= HOST_IMAGE.layers.length + 1, 'config and layers fetched with Basic');

  // The same secret as a Docker config.json `auth` (base64 user:pass), after RemoveImage.
  await cri.remove(ref);
  mark = requests().length;
  const again = await cri.pull(ref, { auth: Buffer.from(`${NODE.username}:${NODE.password}`).toString('base64') });
  t.is(again, imageRef);
  t.true(since(mark).some((r) => r.method === 'HEAD' && r.auth === 'basic' && r.status === 200));
  t.false(leaked(s, NODE.password), 'the mirror password is not logged');
});

e2e('imagePullSecrets against a token-auth mirror: containerd POSTs the pod secret to the mirror realm (grant_type=password) and pulls with the Bearer token', async (t) => {
  const up = await seededUpstream(t);
  const htpasswd = path.join(up.work, 'htpasswd');
  await writeHtpasswd(htpasswd, { [NODE.username]: NODE.password });
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(up.reg) },
    defaultUpstream: null,
    auth: {
      htpasswd,
      token: { service: 'regmirror-cri' },
      rules: [{ repositories: '**', pull: ['authenticated'], push: ['authenticated'], delete: [] }],
      loginRateLimit: { maxFailures: 1000 },
    },
  });
  const requests = watchRequests(s);
  const { cri } = await criWithHosts(t, up, s);
  const ref = `${UP}/${REPO}:1.0`;

  let mark = requests().length;
  await expectPullFails(t, cri, ref, { username: CREDS.username, password: CREDS.password });
  const refused = requests().slice(mark).filter(fromContainerd);
  t.true(refused.some((r) => r.method === 'POST' && r.url.startsWith('/token') && r.status === 401), `the source-registry secret was posted to the mirror realm: ${summary(refused)}`);
  t.false(refused.some((r) => r.auth === 'bearer'), 'no token was issued for it');
  t.false(leaked(s, CREDS.password));

  mark = requests().length;
  const imageRef = await cri.pull(ref, { username: NODE.username, password: NODE.password });
  await assertCriImage(t, cri, ref, `${UP}/${REPO}`, V1.index.digest, imageRef);
  const ok = requests().slice(mark).filter(fromContainerd);
  t.true(ok.some((r) => r.method === 'POST' && r.url.startsWith('/token') && r.status === 200), `token POST: ${summary(ok)}`);
  t.true(ok.some((r) => r.method === 'GET' && r.url.includes('/blobs/') && r.auth === 'bearer' && r.status === 200), 'blobs fetched with the Bearer token');
  t.false(leaked(s, NODE.password));
});
