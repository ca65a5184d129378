/**
 * Pulls through containerd's CRI plugin, the way kubelet and `crictl pull` do: gRPC
 * `runtime.v1.ImageService/PullImage` on containerd's socket (test/helpers/cri.ts), then
 * `ImageStatus` to compare `repoDigests` with the upstream's own digest (what the Anthos
 * guide checks with `crictl inspecti`). The upstream is Debian's docker-registry with
 * Basic auth; regmirror runs in-process with its credentials. containerd uses config_path
 * (hosts.toml) for the registry `upstream.test:5000`: regmirror first, a closed port as the
 * fallback `server`, so a failing mirror never falls back to anything real.
 *
 * `PullImageRequest.auth` is what a pod's imagePullSecrets become (username/password, no
 * server_address): containerd offers it to any host that answers 401, the mirror
 * included. These tests pin what regmirror does with it (README "containerd via CRI").
 *
 * Skipped only when a tool is missing and CI !== 'true'; under CI a missing tool fails.
 */
import type { ExecutionContext } from 'ava';
import { type Containerd, startContainerd, writeHostsToml } from '../helpers/containerd.js';
import { type CriClient, criClient } from '../helpers/cri.js';
import { settleAccessLog } from '../helpers/docker-registry.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { CREDS, NS_UP, REPO, UP, V1, fromContainerd, seededUpstream, summary, upstreamDigest, upstreamEntry, watchRequests, type SeenRequest, type Upstream } from './_registry.js';
import { HOST_IMAGE, NODE, assertCriImage, e2e, expectPullFails, leaked, loginRequired } from './_cri.js';

/** A CRI containerd using hosts.toml for `UP`, with regmirror first and a closed port as server. */
async function criWithHosts(t: ExecutionContext, up: Upstream, s: TestServer): Promise<{ ctd: Containerd; cri: CriClient }> {
  const ctd = await startContainerd(t, { cri: true });
  await writeHostsToml(ctd.criHostsDir!, UP, { server: up.closed, hosts: [{ url: s.url }] });
  return { ctd, cri: criClient(t, ctd.address) };
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
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(up.reg) },
    defaultUpstream: null,
    auth: await loginRequired(up),
  });
  const requests = watchRequests(s);
  const { ctd, cri } = await criWithHosts(t, up, s);
  const ref = `${UP}/${REPO}:1.0`;
  await settleAccessLog(up.reg);
  const upstreamBefore = up.reg.accessLog().length;
  const since = (n: number): SeenRequest[] => requests().slice(n).filter(fromContainerd);

  // No pull secret: 401, containerd has nothing to answer with and goes on to the next host
  // (the hosts.toml server, here a closed port); the error it reports is the mirror's 401.
  let mark = requests().length;
  const anonymous = await expectPullFails(t, cri, ref);
  t.regex(anonymous.details, new RegExp(`pulling from host ${s.hostPort} failed with status code \\[manifests 1\\.0\\]: 401`));
  t.regex(ctd.output(), new RegExp(`trying next host.*${up.closed.replace('http://', '')}`), 'containerd fell back to the server after the 401');
  t.deepEqual(
    since(mark).map((r) => [r.method, r.status, r.auth]),
    [['HEAD', 401, '']],
    'one anonymous HEAD, answered 401',
  );

  // The pod's secret for the source registry (here the upstream's own login): containerd
  // offers it to the mirror (kubelet leaves server_address empty); regmirror checks it
  // against its htpasswd, answers 401 and counts a failed login; nothing goes upstream.
  mark = requests().length;
  const refused = await expectPullFails(t, cri, ref, { username: CREDS.username, password: CREDS.password });
  t.regex(refused.details, /401 Unauthorized/);
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

e2e('pod secrets the mirror refuses: a resent secret counts once, so one bad pod cannot lock its node out; MAX different refused secrets do', async (t) => {
  const MAX = 3;
  const up = await seededUpstream(t);
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(up.reg) },
    defaultUpstream: null,
    auth: await loginRequired(up, { loginRateLimit: { maxFailures: MAX, window: '10m' } }),
  });
  const requests = watchRequests(s);
  const { cri } = await criWithHosts(t, up, s);
  const ref = `${UP}/${REPO}:1.0`;
  const refusedLogins = () => requests().filter((r) => fromContainerd(r) && r.auth === 'basic' && r.status === 401).length;

  // A pod whose secret is for the source registry, not the mirror: containerd 1.6 sends the
  // refused Basic again (several times per pull) and kubelet retries the pull; each resend of
  // the same credentials is one failed login, so the node is never locked out by it.
  const stale = { username: CREDS.username, password: `${CREDS.password}-for-the-source` };
  for (let i = 0; i < MAX + 1; i++) {
    const refused = await expectPullFails(t, cri, ref, stale);
    t.regex(refused.details, /401 Unauthorized/, `pull ${i + 1} with the same refused secret: 401, never 429`);
  }
  t.log(`refused Basic logins sent by containerd for ${MAX + 1} pulls: ${refusedLogins()}`);
  t.true(refusedLogins() > MAX, 'containerd resent the refused secret more often than the limit');
  const imageRef = await cri.pull(ref, { username: NODE.username, password: NODE.password });
  t.truthy(imageRef, 'the node still pulls with the right login');
  await cri.remove(ref);

  // Guessing is different credentials each time: MAX distinct refused secrets lock the node out.
  for (let i = 0; i < MAX; i++) await expectPullFails(t, cri, ref, { username: CREDS.username, password: `${CREDS.password}-guess-${i}` });
  const mark = requests().length;
  const blocked = await expectPullFails(t, cri, ref, { username: NODE.username, password: NODE.password });
  t.regex(blocked.details, /429 Too Many Requests/);
  const reqs = requests().slice(mark).filter(fromContainerd);
  t.true(reqs.some((r) => r.auth === 'basic' && r.status === 429), summary(reqs));
  t.false(reqs.some((r) => r.status === 200));
  t.is(await cri.status(ref), null);
});

e2e('imagePullSecrets against a token-auth mirror: containerd POSTs the pod secret to the mirror realm (grant_type=password) and pulls with the Bearer token', async (t) => {
  const up = await seededUpstream(t);
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(up.reg) },
    defaultUpstream: null,
    auth: await loginRequired(up, { token: { service: 'regmirror-cri' } }),
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
