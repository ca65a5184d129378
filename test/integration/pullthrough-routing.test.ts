/**
 * Routing end to end (protocol.md 1.9, 4.2-4.3): which fake upstream is dialled, under
 * which remote repository name, for ?ns=, namespace prefixes, hosts in the path, rewrites,
 * defaultUpstream and Docker Hub's `library/`; plus GET /api/v1/resolve. Three fakes run
 * side by side and every case checks that only the expected one saw a request.
 */
import test, { type ExecutionContext } from 'ava';
import { startServer, type TestServer } from '../helpers/server.js';
import { errorCode, http } from '../helpers/http.js';
import type { FakeUpstream } from '../fixtures/fake-upstream.js';
import type { Image } from '../fixtures/images.js';
import { sampleImage } from './_support.js';
import { ACCEPT_ALL, startFake, upstreamEntry } from './_pullthrough.js';

const SECRET = 'hunter2-routing-secret';

interface Env {
  s: TestServer;
  fakes: Record<'hub' | 'quay' | 'myreg', FakeUpstream>;
}

async function setup(t: ExecutionContext): Promise<Env> {
  const hub = await startFake(t);
  const quay = await startFake(t, { auth: 'basic', basic: { username: 'robot', password: SECRET } });
  const myreg = await startFake(t);
  const s = await startServer(t, {
    upstreams: {
      'hub.test': upstreamEntry(hub, { libraryPrefix: true }),
      'quay.test': upstreamEntry(quay, { credentials: { username: 'robot', password: SECRET } }),
      'myreg.test:5000': upstreamEntry(myreg),
    },
    defaultUpstream: 'hub.test',
    namespaces: [
      { prefix: 'test-namespace', upstream: 'ns' },
      { prefix: 'quay-mirror', upstream: 'quay.test' },
      { prefix: 'airgap', upstream: 'local' },
    ],
    rewrites: [{ upstream: 'quay.test', pattern: '^rw/(.*)$', replace: 'org/$1' }],
  });
  return { s, fakes: { hub, quay, myreg } };
}

function totals(env: Env): Record<string, number> {
  return Object.fromEntries(Object.entries(env.fakes).map(([k, f]) => [k, f.totalRequests]));
}

function reset(env: Env): void {
  for (const f of Object.values(env.fakes)) f.resetCounters();
}

interface Case {
  /** Client path after /v2/ (repository part) and query. */
  path: string;
  query?: string;
  fake: keyof Env['fakes'];
  remote: string;
  ns?: string;
}

const CASES: Case[] = [
  { path: 'library/alpine', query: 'ns=hub.test', fake: 'hub', remote: 'library/alpine', ns: 'hub.test' },
  { path: 'alpine', query: 'ns=hub.test', fake: 'hub', remote: 'library/alpine', ns: 'hub.test' },
  { path: 'test-namespace/library/alpine', query: 'ns=hub.test', fake: 'hub', remote: 'library/alpine', ns: 'hub.test' },
  { path: 'test-namespace/busybox', query: 'ns=hub.test', fake: 'hub', remote: 'library/busybox', ns: 'hub.test' },
  { path: 'test-namespace/org/app', query: 'ns=quay.test', fake: 'quay', remote: 'org/app', ns: 'quay.test' },
  { path: 'team/app', query: 'ns=myreg.test%3A5000', fake: 'myreg', remote: 'team/app', ns: 'myreg.test:5000' },
  { path: 'quay.test/org/app', fake: 'quay', remote: 'org/app' },
  { path: 'test-namespace/quay.test/org/app', fake: 'quay', remote: 'org/app' },
  { path: 'quay-mirror/org/app', fake: 'quay', remote: 'org/app' },
  { path: 'quay-mirror/org/app', query: 'ns=hub.test', fake: 'quay', remote: 'org/app' },
  { path: 'rw/app', fake: 'quay', remote: 'org/app' },
  { path: 'someone/app', fake: 'hub', remote: 'someone/app' },
  { path: 'busybox', fake: 'hub', remote: 'library/busybox' },
  // library/ is Docker Hub's rule only (libraryPrefix): other registries keep one-component names.
  { path: 'solo', query: 'ns=myreg.test%3A5000', fake: 'myreg', remote: 'solo', ns: 'myreg.test:5000' },
  { path: 'quay.test/solo', fake: 'quay', remote: 'solo' },
];

test('each routing rule dials exactly the expected upstream under the expected remote name', async (t) => {
  const env = await setup(t);
  const images = new Map<string, Image>();
  // One tag per case, so that two cases landing on the same local repository both miss.
  CASES.forEach((c, i) => {
    const key = `${c.fake}:${c.remote}`;
    const img = images.get(key) ?? sampleImage(`route-${key}`);
    images.set(key, img);
    env.fakes[c.fake].addImage(c.remote, img, `t${i}`);
  });
  const fetchedBlobs = new Set<string>();
  for (const [i, c] of CASES.entries()) {
    reset(env);
    const img = images.get(`${c.fake}:${c.remote}`)!;
    const q = c.query ? `?${c.query}` : '';
    const what = `/v2/${c.path}${q}`;
    const r = await http('GET', `${env.s.url}/v2/${c.path}/manifests/t${i}${q}`, { headers: { accept: ACCEPT_ALL } });
    t.is(r.status, 200, what);
    t.deepEqual(r.body, img.manifest.bytes, what);
    t.is(r.header('oci-namespace'), c.ns, `${what}: OCI-Namespace echoes ns only when ns chose the upstream`);
    const blob = await http('GET', `${env.s.url}/v2/${c.path}/blobs/${img.config.digest}${q}`);
    t.is(blob.status, 200, what);
    t.deepEqual(blob.body, img.config.bytes, what);
    const f = env.fakes[c.fake];
    // 401s are the Basic challenge round trip of quay.test; count the authorised requests.
    const seen = f.find().filter((x) => x.status !== 401).map((x) => `${x.method} ${x.path}`);
    const expected = [`GET /v2/${c.remote}/manifests/t${i}`];
    // A blob already cached under another local name is linked through the manifest that
    // references it, without a request; the first time, it is fetched under the remote name.
    const blobKey = `${c.fake}:${img.config.digest}`;
    if (!fetchedBlobs.has(blobKey)) expected.push(`GET /v2/${c.remote}/blobs/${img.config.digest}`);
    fetchedBlobs.add(blobKey);
    t.deepEqual(seen, expected, what);
    t.is(
      f.find().filter((x) => x.status !== 401).reduce((n, x) => n + x.bytes, 0),
      img.manifest.size + (expected.length === 2 ? img.config.size : 0),
      `${what}: bytes`,
    );
    const others = Object.entries(env.fakes).filter(([k]) => k !== c.fake);
    for (const [k, o] of others) t.is(o.totalRequests, 0, `${what}: ${k} not dialled`);
  }
});

test('?ns= naming an unconfigured host -> 404 NAME_UNKNOWN, and nothing is dialled', async (t) => {
  const env = await setup(t);
  const img = sampleImage('unconfigured');
  env.fakes.hub.addImage('library/alpine', img, 'v1');
  const paths = [
    '/v2/library/alpine/manifests/v1?ns=evil.example.com',
    `/v2/library/alpine/manifests/${img.manifest.digest}?ns=evil.example.com`,
    `/v2/library/alpine/blobs/${img.config.digest}?ns=evil.example.com`,
    '/v2/library/alpine/tags/list?ns=evil.example.com',
    '/v2/test-namespace/library/alpine/manifests/v1?ns=127.0.0.1%3A1',
  ];
  for (const p of paths) {
    const r = await http('GET', `${env.s.url}${p}`, { headers: { accept: ACCEPT_ALL } });
    t.is(r.status, 404, p);
    t.is(errorCode(r), 'NAME_UNKNOWN', p);
    t.is(r.header('oci-namespace'), undefined, p);
  }
  t.deepEqual(totals(env), { hub: 0, quay: 0, myreg: 0 });
});

test('a local-only namespace never dials an upstream, even with ?ns=', async (t) => {
  const env = await setup(t);
  env.fakes.hub.addImage('library/alpine', sampleImage('airgap'), 'v1');
  for (const p of ['/v2/airgap/library/alpine/manifests/v1', '/v2/airgap/library/alpine/manifests/v1?ns=hub.test']) {
    const r = await http('GET', `${env.s.url}${p}`, { headers: { accept: ACCEPT_ALL } });
    t.is(r.status, 404, p);
  }
  t.deepEqual(totals(env), { hub: 0, quay: 0, myreg: 0 });
});

test('GET /api/v1/resolve explains rule, upstream and remote name, and shows no secret', async (t) => {
  const env = await setup(t);
  const cases: Array<[string, string | undefined, string, string | null, string | null]> = [
    ['test-namespace/library/alpine', 'hub.test', 'namespace', 'hub.test', 'library/alpine'],
    ['alpine', 'hub.test', 'ns', 'hub.test', 'library/alpine'],
    ['quay.test/org/app', undefined, 'host-in-path', 'quay.test', 'org/app'],
    ['quay-mirror/org/app', undefined, 'namespace', 'quay.test', 'org/app'],
    ['rw/app', undefined, 'rewrite', 'quay.test', 'org/app'],
    ['someone/app', undefined, 'default', 'hub.test', 'someone/app'],
    ['airgap/x', undefined, 'local', null, null],
  ];
  for (const [p, ns, rule, upstream, remote] of cases) {
    const url = `${env.s.url}/api/v1/resolve?path=${encodeURIComponent(p)}${ns ? `&ns=${ns}` : ''}&reference=v1`;
    const r = await http('GET', url);
    t.is(r.status, 200, p);
    const doc = r.json<{ rule: string; upstream: { name: string; endpoints: string[]; credentials: string | null } | null; remoteRepository: string | null }>();
    t.is(doc.rule, rule, p);
    t.is(doc.upstream?.name ?? null, upstream, p);
    t.is(doc.remoteRepository, remote, p);
    if (upstream === 'quay.test') t.is(doc.upstream!.credentials, 'basic', 'the kind of credentials, not their value');
    t.false(r.body.toString().includes(SECRET), `${p}: no password in the explain output`);
    t.false(r.body.toString().includes(Buffer.from(`robot:${SECRET}`).toString('base64')), p);
  }
  const bad = await http('GET', `${env.s.url}/api/v1/resolve?path=library/alpine&ns=evil.example.com`);
  t.is(bad.status, 200);
  t.truthy(bad.json<{ error: string | null }>().error);
  t.deepEqual(totals(env), { hub: 0, quay: 0, myreg: 0 }, 'explaining never dials');
  t.false(env.s.logs.join('\n').includes(SECRET));
});
