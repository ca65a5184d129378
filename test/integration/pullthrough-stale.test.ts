/**
 * Serving cached tags to every client while the upstream cannot answer (issue 8 items 1-2):
 * a tag cached for one client's Accept set answers another client's request when the
 * upstream is down (the variant that client reads, newest first; an index's linux/amd64
 * entry for clients that read no index), and the offline window closes as soon as the
 * upstream answers again instead of running out.
 */
import test, { type ExecutionContext } from 'ava';
import { startServer, type TestServer } from '../helpers/server.js';
import { errorCode, http } from '../helpers/http.js';
import type { FakeUpstream } from '../fixtures/fake-upstream.js';
import { makeIndex } from '../fixtures/images.js';
import { DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, sampleImage } from './_support.js';
import { ACCEPT_ALL, startFake, upstreamEntry, waitFor } from './_pullthrough.js';

const UP = 'hub.test';

/** What containerd sends (cri/ctr): every modern type and `*\/*`. */
const CONTAINERD = ACCEPT_ALL;
/** An OCI-index-first client without `*\/*` (skopeo/prefetch style). */
const INDEX_FIRST = [OCI_INDEX, OCI_MANIFEST, 'application/vnd.docker.distribution.manifest.list.v2+json', DOCKER_MANIFEST].join(', ');
/** A client that reads single OCI manifests only (no index support). */
const OCI_ONLY = OCI_MANIFEST;

async function setup(t: ExecutionContext, timeouts: Record<string, string> = {}): Promise<{ fake: FakeUpstream; s: TestServer }> {
  const fake = await startFake(t);
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true, tags: { ttl: '0s' }, timeouts: { offline: '5m', ...timeouts } }) },
    defaultUpstream: UP,
  });
  return { fake, s };
}

const manifest = (s: TestServer, method: 'GET' | 'HEAD', ref: string, accept: string) =>
  http(method, `${s.url}/v2/library/app/manifests/${ref}`, { headers: { accept } });

function multiArch(seed: string) {
  const amd64 = sampleImage(`${seed}-amd64`);
  const arm64 = sampleImage(`${seed}-arm64`, { arch: 'arm64' });
  return makeIndex([
    { image: amd64, platform: { os: 'linux', architecture: 'amd64' } },
    { image: arm64, platform: { os: 'linux', architecture: 'arm64' } },
  ]);
}

test('a tag cached for one Accept set is served stale to a client with another Accept set', async (t) => {
  const { fake, s } = await setup(t);
  const idx = multiArch('cross');
  fake.addIndex('library/app', idx, 'v1');
  const primed = await manifest(s, 'GET', 'v1', INDEX_FIRST);
  t.is(primed.header('docker-content-digest'), idx.index.digest);
  await fake.stop();

  for (const method of ['GET', 'HEAD'] as const) {
    const res = await manifest(s, method, 'v1', CONTAINERD);
    t.is(res.status, 200, `${method} with containerd's Accept`);
    t.is(res.header('docker-content-digest'), idx.index.digest);
    t.is(res.header('content-type'), OCI_INDEX);
    t.regex(res.header('warning') ?? '', /^299 /);
    if (method === 'GET') t.deepEqual(res.body, idx.index.bytes);
  }
  // A client that reads no index cannot use the cached index, and its platform manifest
  // was never fetched: nothing acceptable, so 503 as before.
  const none = await manifest(s, 'GET', 'v1', OCI_ONLY);
  t.is(none.status, 503);
  t.is(errorCode(none), 'UNAVAILABLE');
});

test('a client that reads no index gets the cached index entry for linux/amd64', async (t) => {
  const { fake, s } = await setup(t);
  const idx = multiArch('amd64');
  fake.addIndex('library/app', idx, 'v1');
  t.is((await manifest(s, 'GET', 'v1', CONTAINERD)).status, 200);
  // containerd goes on to fetch its platform's manifest by digest.
  const amd64 = idx.images[0]!.image;
  t.is((await manifest(s, 'GET', amd64.manifest.digest, CONTAINERD)).status, 200);
  await fake.stop();

  const res = await manifest(s, 'GET', 'v1', OCI_ONLY);
  t.is(res.status, 200);
  t.is(res.header('docker-content-digest'), amd64.manifest.digest);
  t.deepEqual(res.body, amd64.manifest.bytes);
  t.regex(res.header('warning') ?? '', /^299 /);
});

test('a tag cached through another local path of the same upstream repository (host in path vs ?ns=) is served, with its children and blobs', async (t) => {
  const { fake, s } = await setup(t);
  const idx = multiArch('alias');
  fake.addIndex('library/app', idx, 'v1');
  const amd64 = idx.images[0]!.image;
  // CRI-O style: registries.conf location mirror/<registry host>, so the host is in the path.
  const viaHost = (p: string) => `${s.url}/v2/${UP}/library/app/${p}`;
  t.is((await http('GET', viaHost('manifests/v1'), { headers: { accept: INDEX_FIRST } })).status, 200);
  t.is((await http('GET', viaHost(`manifests/${amd64.manifest.digest}`), { headers: { accept: INDEX_FIRST } })).status, 200);
  for (const b of [amd64.config, ...amd64.layers]) t.is((await http('GET', viaHost(`blobs/${b.digest}`))).status, 200);
  await fake.stop();

  // containerd style: the plain path with ?ns=.
  const viaNs = (p: string) => `${s.url}/v2/library/app/${p}?ns=${UP}`;
  const tag = await http('GET', viaNs('manifests/v1'), { headers: { accept: CONTAINERD } });
  t.is(tag.status, 200);
  t.is(tag.header('docker-content-digest'), idx.index.digest);
  t.regex(tag.header('warning') ?? '', /^299 /);
  const child = await http('GET', viaNs(`manifests/${amd64.manifest.digest}`), { headers: { accept: CONTAINERD } });
  t.is(child.status, 200);
  t.deepEqual(child.body, amd64.manifest.bytes);
  for (const b of [amd64.config, ...amd64.layers]) t.deepEqual((await http('GET', viaNs(`blobs/${b.digest}`))).body, b.bytes);
  // Another upstream repository's tag of the same name is never used.
  t.is((await http('GET', `${s.url}/v2/library/other/manifests/v1?ns=${UP}`, { headers: { accept: CONTAINERD } })).status, 503);
});

test('across variants the most recently confirmed digest wins', async (t) => {
  const { fake, s } = await setup(t);
  const first = sampleImage('moved-1');
  const second = sampleImage('moved-2');
  fake.addImage('library/app', first, 'v1');
  t.is((await manifest(s, 'GET', 'v1', INDEX_FIRST)).header('docker-content-digest'), first.manifest.digest);
  // The tag moves upstream; a client with another Accept set sees the new digest.
  fake.addImage('library/app', second, 'v1');
  t.is((await manifest(s, 'GET', 'v1', OCI_MANIFEST + ', ' + DOCKER_MANIFEST)).header('docker-content-digest'), second.manifest.digest);
  await fake.stop();

  const res = await manifest(s, 'GET', 'v1', CONTAINERD);
  t.is(res.status, 200);
  t.is(res.header('docker-content-digest'), second.manifest.digest, 'the newest confirmation, not the first cached');
  t.regex(res.header('warning') ?? '', /^299 /);
});

test('upstream 5xx and 429 also fall back to another Accept variant; 404 does not', async (t) => {
  const { fake, s } = await setup(t, { offline: '0s' });
  const img = sampleImage('status');
  fake.addImage('library/app', img, 'v1');
  t.is((await manifest(s, 'GET', 'v1', INDEX_FIRST)).status, 200);

  fake.faults.push({ path: /\/manifests\//, status: 503, times: 2 });
  const on5xx = await manifest(s, 'GET', 'v1', CONTAINERD);
  t.is(on5xx.status, 200);
  t.regex(on5xx.header('warning') ?? '', /^299 /);
  fake.faults.length = 0;
  fake.faults.push({ path: /\/manifests\//, status: 429, headers: { 'retry-after': '30' }, times: 2 });
  const on429 = await manifest(s, 'HEAD', 'v1', DOCKER_MANIFEST + ', ' + OCI_MANIFEST);
  t.is(on429.status, 200);
  t.is(on429.header('docker-content-digest'), img.manifest.digest);
  fake.faults.length = 0;

  // Gone upstream: no stale copy for anyone (the tag was deleted there).
  fake.repos.get('library/app')!.tags.delete('v1');
  const gone = await manifest(s, 'GET', 'v1', OCI_MANIFEST);
  t.is(gone.status, 404);
  t.is(errorCode(gone), 'MANIFEST_UNKNOWN');
  t.is((await manifest(s, 'GET', 'v1', INDEX_FIRST)).status, 404, 'every variant of a deleted tag is forgotten');
});

test('offline window: requests fail fast while probes fail, and it closes as soon as the upstream answers', async (t) => {
  const { fake, s } = await setup(t, { probe: '100ms' });
  const img = sampleImage('recover');
  const later = sampleImage('recover-later');
  fake.addImage('library/app', img, 'v1');
  fake.addImage('library/app', later, 'never-cached');
  t.is((await manifest(s, 'GET', 'v1', CONTAINERD)).status, 200);

  // The upstream answers, but only with 5xx (its probes fail too): the first failure opens a
  // 5-minute window and requests inside it do not dial.
  await fake.stop();
  t.is((await manifest(s, 'GET', 'v1', INDEX_FIRST)).status, 200, 'stale, another Accept set');
  await waitFor(() => s.logs.some((l) => l.includes('upstream marked offline')), 10_000, 'the offline log line');
  fake.faults.push({ path: /^\/v2\/$/, status: 503 });
  await fake.start();
  await waitFor(() => fake.find({ path: '/v2/' }).length >= 2, 15_000, 'two failed probes');
  fake.resetCounters();
  const miss = await manifest(s, 'GET', 'never-cached', CONTAINERD);
  t.is(miss.status, 503);
  const stale = await manifest(s, 'GET', 'v1', CONTAINERD);
  t.is(stale.status, 200);
  t.regex(stale.header('warning') ?? '', /^299 /);
  t.is(fake.find({ path: /\/manifests\// }).length, 0, 'no client request reached the upstream inside the window');

  // The upstream is healthy again: the next probe closes the window, long before 5 minutes.
  fake.faults.length = 0;
  const healthyAt = Date.now();
  let status = 0;
  await waitFor(async () => (status = (await manifest(s, 'GET', 'never-cached', CONTAINERD)).status) === 200, 30_000, 'a never-cached tag to succeed');
  const recoveredMs = Date.now() - healthyAt;
  t.log(`never-cached tag served ${recoveredMs} ms after the upstream became healthy (probe every 100 ms)`);
  t.is(status, 200);
  t.true(s.logs.some((l) => l.includes('offline window closed')));
  const fresh = await manifest(s, 'GET', 'v1', CONTAINERD);
  t.is(fresh.status, 200);
  t.is(fresh.header('warning'), undefined, 'no longer stale');
});

test('offline window with probing disabled: it runs out by time (timeouts.probe: 0s)', async (t) => {
  const { fake, s } = await setup(t, { offline: '1s', probe: '0s' });
  const img = sampleImage('noprobe');
  fake.addImage('library/app', img, 'v1');
  await fake.stop();
  t.is((await manifest(s, 'GET', 'v1', CONTAINERD)).status, 503);
  await fake.start();
  await waitFor(async () => (await manifest(s, 'GET', 'v1', CONTAINERD)).status === 200, 30_000, 'the window to run out');
  t.is(fake.find({ path: '/v2/' }).length, 0, 'no probes were sent');
});
