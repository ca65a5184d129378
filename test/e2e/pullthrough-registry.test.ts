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
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import { type Containerd, startContainerd, writeHostsToml } from '../helpers/containerd.js';
import { type AccessEntry, type DockerRegistry, seedRegistry, settleAccessLog, startDockerRegistry } from '../helpers/docker-registry.js';
import { startServer, tempDir, type TestServer } from '../helpers/server.js';
import { http } from '../helpers/http.js';
import { type Skopeo, pullArgs, pushArgs, skopeo } from '../helpers/skopeo.js';
import { CI, freePort, missingTools } from '../helpers/tools.js';
import {
  type Blob,
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

const TOOLS = ['docker-registry', 'htpasswd', 'containerd', 'ctr', 'skopeo'];
const MISSING = missingTools(TOOLS);
const e2e = MISSING.length === 0 || CI ? test : test.skip;
if (MISSING.length > 0 && !CI) console.warn(`pullthrough-registry e2e skipped: missing ${MISSING.join(', ')}`);

/** The registry host name clients use for the upstream (not resolvable: only a name). */
const UP = 'upstream.test:5000';
/** How containerd sends it (Go's url.Values.Encode escapes ':'). */
const NS_UP = 'ns=upstream.test%3A5000';
const REPO = 'library/busybox';
const execFileP = promisify(execFile);
const CREDS = { username: 'mirror', password: `pw-${sha256(String(process.pid)).slice(7, 23)}` };

// ---------------------------------------------------------------------------
// images

/** amd64 + arm64/v8, a shared first layer, one own layer each (the arm64 one uncompressed). */
function busybox(seed: string, kib = 256): ImageIndex {
  const shared = makeLayer([
    { name: 'etc/', content: '' },
    { name: 'etc/os-release', content: `NAME=busybox-test\nVERSION=${seed}\n` },
  ]);
  const amd = makeLayer([
    { name: 'bin/', content: '' },
    { name: 'bin/busybox', content: randomBytes(kib * 1024, `${seed}-amd64`), mode: 0o755 },
  ]);
  const arm = makeLayer(
    [
      { name: 'bin/', content: '' },
      { name: 'bin/busybox', content: randomBytes(((kib * 3) / 4) * 1024, `${seed}-arm64`), mode: 0o755 },
    ],
    { gzip: false },
  );
  return makeIndex([
    { image: makeImage({ arch: 'amd64', layers: [shared, amd] }), platform: { architecture: 'amd64', os: 'linux' } },
    { image: makeImage({ arch: 'arm64', variant: 'v8', layers: [shared, arm] }), platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
  ]);
}

const V1 = busybox('1.0');
const V1_BLOBS = allBlobsOf(V1);
const AMD64 = V1.images[0]!.image;

function isManifest(b: Blob): boolean {
  return b.mediaType === MediaTypes.ociManifest || b.mediaType === MediaTypes.ociIndex || b.mediaType === MediaTypes.dockerManifest;
}

// ---------------------------------------------------------------------------
// fixtures

interface Env {
  reg: DockerRegistry;
  ctd: Containerd;
  /** containerd --hosts-dir */
  hostsDir: string;
  /** A 127.0.0.1 URL nobody listens on: the hosts.toml `server`. */
  closed: string;
  work: string;
  sk: Skopeo;
}

/** docker-registry (Basic auth) holding `library/busybox:<tag>` for each image, plus a containerd. */
async function setup(t: ExecutionContext, images: Array<{ tag: string; idx: ImageIndex }> = [{ tag: '1.0', idx: V1 }]): Promise<Env> {
  const sk = await skopeo(t);
  const [reg, ctd, work, closedPort] = await Promise.all([startDockerRegistry(t, { auth: CREDS }), startContainerd(t), tempDir(t), freePort()]);
  for (const { tag, idx } of images) {
    await seedRegistry(t, reg, { repo: REPO, tag, root: idx.index, blobs: allBlobsOf(idx) }, sk);
    const served = await upstreamDigest(reg, REPO, tag);
    if (served !== idx.index.digest) throw new Error(`seeded ${REPO}:${tag} but the upstream serves ${served}, not ${idx.index.digest}`);
  }
  const hostsDir = path.join(work, 'certs.d');
  await fs.mkdir(hostsDir, { recursive: true });
  return { reg, ctd, hostsDir, closed: `http://127.0.0.1:${closedPort}`, work, sk };
}

/** regmirror's upstream entry for the docker-registry, with its Basic credentials. */
function upstreamEntry(reg: DockerRegistry, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { endpoints: [reg.url], credentials: { ...reg.credentials! }, ...extra };
}

interface SeenRequest {
  method: string;
  url: string;
  /** The status sent (0 if no response head was sent yet). */
  status: number;
  ua: string;
}

/**
 * Record every request regmirror receives, as it arrives (node's 'request' event). The
 * access log (app.ts onResponse) is not used for counting: a response whose client has
 * all the bytes and closes the socket before the server's res.end() was processed never
 * reaches onResponse (observed under load with containerd), so it would be missing there.
 */
function watchRequests(s: TestServer): () => SeenRequest[] {
  const seen: Array<{ method: string; url: string; ua: string; res: ServerResponse }> = [];
  s.app.fastify.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    seen.push({ method: req.method ?? '', url: req.url ?? '', ua: String(req.headers['user-agent'] ?? ''), res });
  });
  return () => seen.map(({ res, ...r }) => ({ ...r, status: res.headersSent ? res.statusCode : 0 }));
}

/** Whether regmirror's own log has an access line for this exact URL with this status. */
function logged(s: TestServer, method: string, url: string, status: number): boolean {
  return s.logs.some((line) => {
    try {
      const doc = JSON.parse(line) as { msg?: string; method?: string; url?: string; status?: number };
      return doc.msg === 'request' && doc.method === method && doc.url === url && doc.status === status;
    } catch {
      return false;
    }
  });
}

function fromContainerd(r: SeenRequest): boolean {
  return r.ua.startsWith('containerd/');
}

function summary(reqs: readonly unknown[]): string {
  return JSON.stringify(reqs).slice(0, 6000);
}

/** The digest the upstream itself gives for a tag (authenticated HEAD). */
async function upstreamDigest(reg: DockerRegistry, repo: string, tag: string): Promise<string> {
  const accept = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifestList, MediaTypes.dockerManifest].join(', ');
  const auth = `Basic ${Buffer.from(`${reg.credentials!.username}:${reg.credentials!.password}`).toString('base64')}`;
  const res = await fetch(`${reg.url}/v2/${repo}/manifests/${tag}`, { method: 'HEAD', headers: { accept, authorization: auth }, signal: AbortSignal.timeout(10_000) });
  const d = res.headers.get('docker-content-digest');
  if (res.status !== 200 || !d) throw new Error(`upstream HEAD ${repo}:${tag}: ${res.status}`);
  return d;
}

/** Successful GETs the upstream served, per path, among `entries`. */
function servedGets(entries: readonly AccessEntry[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const e of entries) if (e.method === 'GET' && e.status >= 200 && e.status < 300) m.set(e.path, (m.get(e.path) ?? 0) + 1);
  return m;
}

async function assertImage(t: ExecutionContext, ctd: Containerd, namespace: string, ref: string, digest: string): Promise<void> {
  const images = await ctd.images(namespace);
  const img = images.find((i) => i.ref === ref);
  t.truthy(img, `ctr -n ${namespace} images ls has no ${ref}: ${JSON.stringify(images)}`);
  t.is(img?.digest, digest, `${ref} in containerd has the wrong digest`);
}

/** Every digest is in the namespace's content store. */
async function assertContent(t: ExecutionContext, ctd: Containerd, namespace: string, blobs: readonly Blob[]): Promise<void> {
  const have = new Set(await ctd.content(namespace));
  const missing = blobs.filter((b) => !have.has(b.digest)).map((b) => `${b.digest} (${b.mediaType})`);
  t.deepEqual(missing, [], `containerd namespace ${namespace} lacks content`);
}

/** The OCI layout at `dir` holds exactly `root` under `tag` and byte-identical `blobs`. */
async function assertLayoutHolds(t: ExecutionContext, dir: string, tag: string, root: Blob, blobs: readonly Blob[]): Promise<void> {
  const ref = await readOciLayoutRef(dir, tag);
  t.is(ref?.digest, root.digest, `${dir}: top-level digest differs from the upstream's`);
  t.is(ref?.mediaType, root.mediaType);
  for (const b of blobs) {
    const got = await readOciLayoutBlob(dir, b.digest).catch(() => undefined);
    t.true(got?.equals(b.bytes) ?? false, `${dir}: blob ${b.digest} (${b.mediaType}) missing or different`);
  }
  const files = (await fs.readdir(path.join(dir, 'blobs', 'sha256'))).sort();
  t.deepEqual(files, blobs.map((b) => b.digest.slice('sha256:'.length)).sort(), `${dir}: unexpected blobs (conversion?)`);
}

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
