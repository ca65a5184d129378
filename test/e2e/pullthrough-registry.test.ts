/**
 * Pull-through end to end with real tools only: Debian's docker-registry (CNCF
 * distribution 2.8) is the upstream, with htpasswd Basic auth; regmirror runs in-process
 * with that upstream's credentials; a private containerd 1.6 (`ctr images pull
 * --hosts-dir`) and skopeo are the clients.
 *
 * The upstream is registered in regmirror under a made-up registry host name,
 * `upstream.test:5000`, whose endpoint is the docker-registry on 127.0.0.1. containerd
 * pulls `upstream.test:5000/...` through hosts.toml, so every request it sends carries
 * `?ns=upstream.test%3A5000` (protocol.md 4.3); the hosts.toml `server` is a closed port
 * so a failing mirror can never fall back anywhere.
 *
 * The private containerd uses content_sharing_policy "isolated" (test/helpers/containerd.ts):
 * each containerd namespace is its own content store, so a pull in a new namespace
 * fetches everything through the mirror again.
 *
 * Skipped only when a tool is missing and CI !== 'true'; under CI a missing tool fails.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { writeHostsToml } from '../helpers/containerd.js';
import { settleAccessLog } from '../helpers/docker-registry.js';
import { startServer } from '../helpers/server.js';
import { http } from '../helpers/http.js';
import { pullArgs, pushArgs } from '../helpers/skopeo.js';
import { allBlobsOf, writeOciLayout } from '../fixtures/images.js';
import {
  e2e,
  UP,
  NS_UP,
  REPO,
  execFileP,
  CREDS,
  busybox,
  V1,
  V1_BLOBS,
  AMD64,
  isManifest,
  setup,
  upstreamEntry,
  watchRequests,
  logged,
  fromContainerd,
  summary,
  upstreamDigest,
  servedGets,
  assertImage,
  assertContent,
  assertLayoutHolds,
} from './_registry.js';

// ---------------------------------------------------------------------------
// (a)

e2e('containerd pulls upstream.test:5000/library/busybox:1.0 (multi-arch, Basic-auth upstream) through hosts.toml with ?ns=', async (t) => {
  const env = await setup(t);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(env.reg) }, defaultUpstream: null });
  const requests = watchRequests(s);
  await writeHostsToml(env.hostsDir, UP, { server: env.closed, hosts: [{ url: s.url }] });

  const ref = `${UP}/${REPO}:1.0`;
  await env.ctd.pull(ref, { namespace: 'a', hostsDir: env.hostsDir, platform: 'linux/amd64' });

  const upstream = await upstreamDigest(env.reg, REPO, '1.0');
  t.is(upstream, V1.index.digest);
  await assertImage(t, env.ctd, 'a', ref, upstream);
  await assertContent(t, env.ctd, 'a', [V1.index, AMD64.manifest, AMD64.config, ...AMD64.layers]);

  const reqs = requests().filter(fromContainerd);
  t.true(
    reqs.some((r) => r.method === 'HEAD' && r.url === `/v2/${REPO}/manifests/1.0?${NS_UP}` && r.status === 200),
    `no tag HEAD with ${NS_UP}: ${summary(reqs)}`,
  );
  t.true(logged(s, 'HEAD', `/v2/${REPO}/manifests/1.0?${NS_UP}`, 200), 'regmirror logged the tag HEAD with ns=');
  t.true(reqs.length >= 5, 'containerd sent the resolve and fetch requests to regmirror');
  t.deepEqual(reqs.filter((r) => !r.url.endsWith(`?${NS_UP}`)), [], 'every containerd request names the registry with ns=');
  t.deepEqual(reqs.filter((r) => r.status !== 200), [], 'regmirror answered every containerd request with 200');
  for (const b of [AMD64.config, ...AMD64.layers]) {
    t.true(reqs.some((r) => r.method === 'GET' && r.url === `/v2/${REPO}/blobs/${b.digest}?${NS_UP}`), `blob ${b.digest} not fetched via the mirror: ${summary(reqs)}`);
  }

  // The upstream saw regmirror (authenticated), under the remote name, never containerd.
  await settleAccessLog(env.reg);
  const pulls = env.reg.accessLog().filter((e) => e.method === 'GET' || e.method === 'HEAD');
  t.false(pulls.some((e) => e.userAgent.startsWith('containerd/')), 'containerd bypassed the mirror');
  const served = servedGets(pulls.filter((e) => e.userAgent.startsWith('regmirror/')));
  t.is(served.get(`/v2/${REPO}/manifests/1.0`), 1, 'tag fetched upstream once');
  for (const b of [AMD64.config, ...AMD64.layers]) t.is(served.get(`/v2/${REPO}/blobs/${b.digest}`), 1, `blob ${b.digest} fetched upstream once`);
});

// ---------------------------------------------------------------------------
// (b)

e2e('Anthos-style namespace: hosts.toml /v2/test-namespace + override_path, regmirror namespace {upstream: ns}', async (t) => {
  const env = await setup(t);
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(env.reg) },
    defaultUpstream: null,
    namespaces: [{ prefix: 'test-namespace', upstream: 'ns' }],
  });
  const requests = watchRequests(s);
  await writeHostsToml(env.hostsDir, UP, { server: env.closed, hosts: [{ url: `${s.url}/v2/test-namespace`, overridePath: true }] });

  const ref = `${UP}/${REPO}:1.0`;
  await env.ctd.pull(ref, { namespace: 'b', hostsDir: env.hostsDir, allPlatforms: true });
  await assertImage(t, env.ctd, 'b', ref, await upstreamDigest(env.reg, REPO, '1.0'));
  await assertContent(t, env.ctd, 'b', V1_BLOBS);

  const reqs = requests().filter(fromContainerd);
  t.true(
    reqs.some((r) => r.method === 'HEAD' && r.url === `/v2/test-namespace/${REPO}/manifests/1.0?${NS_UP}` && r.status === 200),
    `no namespaced tag HEAD: ${summary(reqs)}`,
  );
  t.deepEqual(reqs.filter((r) => !r.url.startsWith(`/v2/test-namespace/${REPO}/`)), [], 'every request is under the namespace');
  t.deepEqual(reqs.filter((r) => r.status !== 200), []);

  // The prefix is stripped before going upstream.
  await settleAccessLog(env.reg);
  const fromMirror = env.reg.accessLog().filter((e) => e.userAgent.startsWith('regmirror/'));
  t.true(fromMirror.length > 0);
  t.deepEqual(fromMirror.filter((e) => !e.path.startsWith(`/v2/${REPO}/`)), [], 'regmirror asked the upstream for the un-prefixed name');
});

// ---------------------------------------------------------------------------
// (c)

e2e('docker.io-style: hosts.toml for docker.io, regmirror upstream docker.io -> local docker-registry (library/ prefix)', async (t) => {
  const env = await setup(t);
  const s = await startServer(t, { upstreams: { 'docker.io': upstreamEntry(env.reg) }, defaultUpstream: 'docker.io' });
  const requests = watchRequests(s);
  await writeHostsToml(env.hostsDir, 'docker.io', { server: env.closed, hosts: [{ url: s.url }] });
  const digest = await upstreamDigest(env.reg, REPO, '1.0');

  const ref = `docker.io/${REPO}:1.0`;
  await env.ctd.pull(ref, { namespace: 'c', hostsDir: env.hostsDir, platform: 'linux/amd64' });
  await assertImage(t, env.ctd, 'c', ref, digest);
  await assertContent(t, env.ctd, 'c', [V1.index, AMD64.manifest, AMD64.config, ...AMD64.layers]);

  // A one-component name (ctr does not normalise it): regmirror adds library/ upstream.
  const short = 'docker.io/busybox:1.0';
  await env.ctd.pull(short, { namespace: 'c-short', hostsDir: env.hostsDir, platform: 'linux/amd64' });
  await assertImage(t, env.ctd, 'c-short', short, digest);
  await assertContent(t, env.ctd, 'c-short', [V1.index, AMD64.manifest, AMD64.config, ...AMD64.layers]);

  const reqs = requests().filter(fromContainerd);
  t.true(reqs.some((r) => r.method === 'HEAD' && r.url === `/v2/${REPO}/manifests/1.0?ns=docker.io` && r.status === 200), summary(reqs));
  t.true(reqs.some((r) => r.method === 'HEAD' && r.url === '/v2/busybox/manifests/1.0?ns=docker.io' && r.status === 200), summary(reqs));
  t.deepEqual(reqs.filter((r) => !r.url.endsWith('?ns=docker.io')), []);
  t.deepEqual(reqs.filter((r) => r.status !== 200), []);

  await settleAccessLog(env.reg);
  const fromMirror = env.reg.accessLog().filter((e) => e.userAgent.startsWith('regmirror/'));
  t.deepEqual(fromMirror.filter((e) => !e.path.startsWith(`/v2/${REPO}/`)), [], 'upstream only ever saw library/busybox');
});

e2e('one regmirror for docker.io and gcr.io: hosts.toml for both, each routed by ?ns= to its own upstream', async (t) => {
  const env = await setup(t);
  // Both names point at the local docker-registry; what matters is that each pull is
  // routed by containerd's ns= to the upstream of that name (and only that one).
  const s = await startServer(t, {
    upstreams: { 'docker.io': upstreamEntry(env.reg), 'gcr.io': upstreamEntry(env.reg, { libraryPrefix: false }) },
    defaultUpstream: null,
  });
  const requests = watchRequests(s);
  await writeHostsToml(env.hostsDir, 'docker.io', { server: env.closed, hosts: [{ url: s.url }] });
  await writeHostsToml(env.hostsDir, 'gcr.io', { server: env.closed, hosts: [{ url: s.url }] });
  const digest = await upstreamDigest(env.reg, REPO, '1.0');

  for (const [host, ns] of [['gcr.io', 'gcr'], ['docker.io', 'hub']] as const) {
    const ref = `${host}/${REPO}:1.0`;
    await env.ctd.pull(ref, { namespace: ns, hostsDir: env.hostsDir, platform: 'linux/amd64' });
    await assertImage(t, env.ctd, ns, ref, digest);
    await assertContent(t, env.ctd, ns, [V1.index, AMD64.manifest, AMD64.config, ...AMD64.layers]);
  }
  const reqs = requests().filter(fromContainerd);
  t.true(reqs.some((r) => r.method === 'HEAD' && r.url === `/v2/${REPO}/manifests/1.0?ns=gcr.io` && r.status === 200), summary(reqs));
  t.true(reqs.some((r) => r.method === 'HEAD' && r.url === `/v2/${REPO}/manifests/1.0?ns=docker.io` && r.status === 200), summary(reqs));
  t.deepEqual(reqs.filter((r) => r.status !== 200), []);
  const explain = await http('GET', `${s.url}/api/v1/resolve?path=${REPO}&ns=gcr.io`);
  t.is(explain.json<{ upstream: { name: string } }>().upstream.name, 'gcr.io');
});

// ---------------------------------------------------------------------------
// (d)

e2e('8 concurrent cold containerd pulls of the same image: the upstream serves each blob and manifest once', async (t) => {
  const idx = busybox('concurrent', 2048); // 2 MiB + 1.5 MiB layers: fills overlap with readers
  const blobs = allBlobsOf(idx);
  const env = await setup(t, [{ tag: '1.0', idx }]);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(env.reg) }, defaultUpstream: null });
  const requests = watchRequests(s);
  await writeHostsToml(env.hostsDir, UP, { server: env.closed, hosts: [{ url: s.url }] });
  await settleAccessLog(env.reg);
  const mark = env.reg.accessLog().length; // everything before is the seeding push

  const ref = `${UP}/${REPO}:1.0`;
  const namespaces = Array.from({ length: 8 }, (_, i) => `cold-${i}`);
  await Promise.all(namespaces.map((namespace) => env.ctd.pull(ref, { namespace, hostsDir: env.hostsDir, allPlatforms: true, timeoutMs: 90_000 })));
  for (const namespace of namespaces) {
    await assertImage(t, env.ctd, namespace, ref, idx.index.digest);
    await assertContent(t, env.ctd, namespace, blobs);
  }

  // All 8 really went through regmirror (isolated content stores): 8 GETs per blob.
  const reqs = requests().filter(fromContainerd);
  for (const b of blobs.filter((x) => !isManifest(x))) {
    const n = reqs.filter((r) => r.method === 'GET' && r.status === 200 && r.url === `/v2/${REPO}/blobs/${b.digest}?${NS_UP}`).length;
    t.is(n, 8, `regmirror served ${b.digest} ${n} times`);
  }

  await settleAccessLog(env.reg);
  const after = env.reg.accessLog().slice(mark);
  const served = servedGets(after);
  for (const b of blobs.filter((x) => !isManifest(x))) {
    t.is(served.get(`/v2/${REPO}/blobs/${b.digest}`) ?? 0, 1, `upstream served blob ${b.digest} (${b.mediaType}) ${served.get(`/v2/${REPO}/blobs/${b.digest}`) ?? 0} times`);
  }
  t.is(served.get(`/v2/${REPO}/manifests/1.0`) ?? 0, 1, 'upstream served the tag once');
  for (const { image } of idx.images) t.is(served.get(`/v2/${REPO}/manifests/${image.manifest.digest}`) ?? 0, 1, `platform manifest ${image.manifest.digest}`);
  t.true((served.get(`/v2/${REPO}/manifests/${idx.index.digest}`) ?? 0) <= 1, 'index by digest at most once');
  const successes = after.filter((e) => e.status < 300).length;
  t.true(successes <= blobs.length + 1, `upstream answered ${successes} requests successfully: ${summary(after)}`);
});

// ---------------------------------------------------------------------------
// (e)

e2e('upstream killed: pulled tags and digests still pull into a fresh content store; a never-pulled tag fails cleanly', async (t) => {
  const v11 = busybox('1.1');
  const env = await setup(t, [
    { tag: '1.0', idx: V1 },
    { tag: '1.1', idx: v11 },
  ]);
  // ttl 0: every tag request revalidates upstream, so the outage path (stale-if-error) is exercised.
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(env.reg, { tags: { ttl: '0s' } }) }, defaultUpstream: null });
  const requests = watchRequests(s);
  await writeHostsToml(env.hostsDir, UP, { server: env.closed, hosts: [{ url: s.url }] });

  const tagRef = `${UP}/${REPO}:1.0`;
  const indexRef = `${UP}/${REPO}@${V1.index.digest}`;
  const amdRef = `${UP}/${REPO}@${AMD64.manifest.digest}`;
  await env.ctd.pull(tagRef, { namespace: 'warm', hostsDir: env.hostsDir, allPlatforms: true });
  await env.ctd.pull(amdRef, { namespace: 'warm', hostsDir: env.hostsDir, platform: 'linux/amd64' });
  await assertImage(t, env.ctd, 'warm', tagRef, V1.index.digest);

  await env.reg.kill();
  const mark = requests().length;

  await env.ctd.pull(tagRef, { namespace: 'cold', hostsDir: env.hostsDir, allPlatforms: true });
  await env.ctd.pull(indexRef, { namespace: 'cold', hostsDir: env.hostsDir, allPlatforms: true });
  await env.ctd.pull(amdRef, { namespace: 'cold-amd64', hostsDir: env.hostsDir, platform: 'linux/amd64' });
  await assertImage(t, env.ctd, 'cold', tagRef, V1.index.digest);
  await assertImage(t, env.ctd, 'cold', indexRef, V1.index.digest);
  await assertImage(t, env.ctd, 'cold-amd64', amdRef, AMD64.manifest.digest);
  await assertContent(t, env.ctd, 'cold', V1_BLOBS);
  await assertContent(t, env.ctd, 'cold-amd64', [AMD64.manifest, AMD64.config, ...AMD64.layers]);

  const after = requests().slice(mark).filter(fromContainerd);
  for (const b of V1_BLOBS.filter((x) => !isManifest(x))) {
    t.true(after.some((r) => r.method === 'GET' && r.status === 200 && r.url === `/v2/${REPO}/blobs/${b.digest}?${NS_UP}`), `blob ${b.digest} not served after the upstream died`);
  }
  t.true(s.logs.some((l) => l.includes('serving stale tag')), 'the tag was served stale (revalidation failed)');

  // Never pulled: regmirror cannot know it; containerd must fail, promptly, with no image.
  const started = Date.now();
  const miss = await env.ctd.tryPull(`${UP}/${REPO}:1.1`, { namespace: 'cold', hostsDir: env.hostsDir, platform: 'linux/amd64', timeoutMs: 40_000 });
  t.log(`ctr: ${miss.stderr.trim().split('\n').pop() ?? ''} (${miss.ms} ms)`);
  t.not(miss.code, 0, 'pulling a never-cached tag with the upstream down must fail');
  t.false(miss.timedOut, 'ctr hung instead of failing');
  t.regex(miss.stderr, /failed to resolve reference/);
  t.true(Date.now() - started < 30_000, `failure took ${Date.now() - started} ms`);
  t.false((await env.ctd.images('cold')).some((i) => i.ref.endsWith(':1.1')));
  const missReqs = requests().filter((r) => r.url.startsWith(`/v2/${REPO}/manifests/1.1`));
  t.true(missReqs.length > 0, 'containerd asked regmirror for 1.1');
  t.deepEqual(
    missReqs.filter((r) => r.status !== 503),
    [],
    'regmirror answered 503 (upstream unavailable), not 404 or 200',
  );
});

// ---------------------------------------------------------------------------
// (f)

e2e('skopeo through mirror paths: host in path, a CRI-O style prefix namespace, and a registries.conf mirror', async (t) => {
  const env = await setup(t);
  const s = await startServer(t, {
    // The same docker-registry under two names: `upstream.test:5000` (a name with a port
    // cannot appear as a path component, see below) and `upstream.test` for host-in-path.
    upstreams: { [UP]: upstreamEntry(env.reg), 'upstream.test': upstreamEntry(env.reg) },
    defaultUpstream: null,
    namespaces: [{ prefix: 'dockerhub', upstream: UP }],
  });
  const requests = watchRequests(s);
  const sk = env.sk;

  // Host in path: /v2/upstream.test/library/busybox/...
  const hostOut = path.join(env.work, 'host-in-path');
  await sk.run(pullArgs(sk, `docker://${s.hostPort}/upstream.test/${REPO}:1.0`, `oci:${hostOut}:1.0`));
  await assertLayoutHolds(t, hostOut, '1.0', V1.index, V1_BLOBS);

  // `upstream.test:5000` itself cannot be put in the path: ':' is not allowed in a
  // repository path component, so no client can send it (skopeo refuses the reference).
  await t.throwsAsync(sk.run(pullArgs(sk, `docker://${s.hostPort}/${UP}/${REPO}:1.0`, `oci:${path.join(env.work, 'never')}:1.0`)), {
    message: /invalid reference format/,
  });

  // CRI-O style prefix namespace: /v2/dockerhub/library/busybox/...
  const nsOut = path.join(env.work, 'prefix');
  await sk.run(pullArgs(sk, `docker://${s.hostPort}/dockerhub/${REPO}:1.0`, `oci:${nsOut}:1.0`));
  await assertLayoutHolds(t, nsOut, '1.0', V1.index, V1_BLOBS);

  // What CRI-O/podman actually do: registries.conf mirror with a namespace in `location`;
  // the reference names the (unresolvable) upstream.test:5000, only the mirror is reachable.
  await sk.setRegistriesConf(
    [
      '[[registry]]',
      `prefix = "${UP}"`,
      `location = "${UP}"`,
      '[[registry.mirror]]',
      `location = "${s.hostPort}/dockerhub"`,
      'insecure = true',
      '',
    ].join('\n'),
  );
  const mirOut = path.join(env.work, 'registries-conf');
  await sk.run(pullArgs(sk, `docker://${UP}/${REPO}:1.0`, `oci:${mirOut}:1.0`));
  await assertLayoutHolds(t, mirOut, '1.0', V1.index, V1_BLOBS);

  const reqs = requests();
  for (const prefix of ['upstream.test', 'dockerhub']) {
    t.true(
      reqs.some((r) => r.method === 'GET' && r.url === `/v2/${prefix}/${REPO}/manifests/1.0` && r.status === 200),
      `no GET /v2/${prefix}/${REPO}/manifests/1.0: ${summary(reqs)}`,
    );
  }
  t.deepEqual(reqs.filter((r) => r.status >= 400 && r.url !== '/v2/'), [], 'regmirror refused nothing skopeo asked for');
  await settleAccessLog(env.reg);
  const fromMirror = env.reg.accessLog().filter((e) => e.userAgent.startsWith('regmirror/'));
  t.deepEqual(fromMirror.filter((e) => !e.path.startsWith(`/v2/${REPO}/`)), [], 'prefixes were stripped before going upstream');
});

// ---------------------------------------------------------------------------
// (g)

e2e('bulk push into a pull-through namespace whose upstream has the image; then the upstream dies and it still pulls', async (t) => {
  const env = await setup(t);
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(env.reg) },
    defaultUpstream: null,
    namespaces: [{ prefix: 'test-namespace', upstream: UP, push: true }],
  });
  const requests = watchRequests(s);
  const sk = env.sk;
  const layout = path.join(env.work, 'layout');
  await writeOciLayout(layout, [{ tag: '1.0', root: V1.index }], V1_BLOBS);

  const dest = `docker://${s.hostPort}/test-namespace/${REPO}:1.0`;
  await sk.run(pushArgs(sk, `oci:${layout}:1.0`, dest));
  const pushReqs = requests();
  t.true(pushReqs.some((r) => r.method === 'PUT' && r.url === `/v2/test-namespace/${REPO}/manifests/1.0` && r.status === 201), summary(pushReqs));
  // skopeo HEADs each blob first; regmirror answers from the upstream, so blobs are
  // skipped and only completeFromUpstream (at the manifest PUT) makes them local.
  const uploads = pushReqs.filter((r) => r.method === 'POST' && r.url.includes('/blobs/uploads/')).length;
  const blobCount = V1_BLOBS.filter((b) => !isManifest(b)).length;
  t.log(`skopeo uploaded ${uploads} of ${blobCount} blobs (the rest answered HEAD 200 from upstream)`);
  t.true(uploads < blobCount, 'no blob upload was skipped: the test would not exercise completing from upstream');

  await env.reg.kill();

  // containerd, Anthos-style, from a fresh content store.
  await writeHostsToml(env.hostsDir, UP, { server: env.closed, hosts: [{ url: `${s.url}/v2/test-namespace`, overridePath: true }] });
  const ref = `${UP}/${REPO}:1.0`;
  await env.ctd.pull(ref, { namespace: 'g', hostsDir: env.hostsDir, allPlatforms: true });
  await assertImage(t, env.ctd, 'g', ref, V1.index.digest);
  await assertContent(t, env.ctd, 'g', V1_BLOBS);

  // skopeo, from the same path.
  const out = path.join(env.work, 'out');
  await sk.run(pullArgs(sk, dest, `oci:${out}:1.0`));
  await assertLayoutHolds(t, out, '1.0', V1.index, V1_BLOBS);

  const late = requests().slice(pushReqs.length);
  t.deepEqual(late.filter((r) => r.status >= 400 && r.url !== '/v2/'), [], 'nothing failed after the upstream died');
});

// ---------------------------------------------------------------------------
// (h)

e2e('generated node config: `regmirror client-config` containerd hosts.toml and registries.conf pull through the mirror', async (t) => {
  const env = await setup(t);
  const serverConfig = {
    upstreams: { [UP]: upstreamEntry(env.reg), 'upstream.test': upstreamEntry(env.reg) },
    defaultUpstream: null,
    // A host with a port cannot be a path component: registries.conf needs this prefix.
    namespaces: [{ prefix: 'up5000', upstream: UP }],
  };
  const s = await startServer(t, serverConfig);
  const requests = watchRequests(s);
  const configFile = path.join(env.work, 'regmirror.yml');
  await fs.writeFile(configFile, JSON.stringify({ listen: '127.0.0.1:0', storage: path.join(env.work, 'unused'), ...serverConfig })); // JSON is YAML
  const cli = (...args: string[]) => execFileP(process.execPath, ['dist/cli.js', 'client-config', ...args, '--config', configFile, '--mirror', s.url]);

  // containerd: one hosts.toml per upstream, written by the CLI.
  const hostsDir = path.join(env.work, 'generated-certs.d');
  await cli('containerd', '--out', hostsDir);
  const files = (await fs.readdir(hostsDir)).sort();
  t.deepEqual(files, [UP, 'upstream.test'].sort());
  for (const f of files) {
    const text = await fs.readFile(path.join(hostsDir, f, 'hosts.toml'), 'utf8');
    t.false(text.includes(CREDS.password), 'no credentials in generated files');
    t.notRegex(text, /auth/i);
  }
  const ref = `${UP}/${REPO}:1.0`;
  await env.ctd.pull(ref, { namespace: 'gen', hostsDir, platform: 'linux/amd64' });
  await assertImage(t, env.ctd, 'gen', ref, V1.index.digest);
  await assertContent(t, env.ctd, 'gen', [V1.index, AMD64.manifest, AMD64.config, ...AMD64.layers]);
  const fromCtd = requests().filter(fromContainerd);
  t.true(fromCtd.some((r) => r.method === 'HEAD' && r.url === `/v2/${REPO}/manifests/1.0?${NS_UP}` && r.status === 200), `no tag HEAD with ${NS_UP}: ${summary(fromCtd)}`);
  t.deepEqual(fromCtd.filter((r) => r.status !== 200), [], 'regmirror answered containerd with 200 throughout');
  await settleAccessLog(env.reg);
  t.false(env.reg.accessLog().some((e) => e.userAgent.startsWith('containerd/')), 'containerd fell back to the server instead of using the mirror');

  // CRI-O/podman/skopeo: registries.conf from the CLI (stdout), the port-named upstream under its namespace.
  const { stdout } = await cli('registries.conf');
  const conf = stdout.replace(/^# ==> .* <==\n/m, '');
  t.true(conf.includes(`location = "${s.hostPort}/up5000"`), conf);
  t.true(conf.includes(`location = "${s.hostPort}/upstream.test"`), conf);
  await env.sk.setRegistriesConf(conf);
  const out = path.join(env.work, 'via-registries-conf');
  await env.sk.run(pullArgs(env.sk, `docker://${ref}`, `oci:${out}:1.0`));
  await assertLayoutHolds(t, out, '1.0', V1.index, V1_BLOBS);
  t.true(requests().some((r) => r.method === 'GET' && r.url === `/v2/up5000/${REPO}/manifests/1.0` && r.status === 200), 'skopeo used the generated mirror');
});
