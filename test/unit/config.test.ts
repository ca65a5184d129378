import test from 'ava';
import { ConfigError, configFromObject, loadConfig, parseConfigYaml } from '../../src/config/load.js';

test('embedded default config: 0.0.0.0:5000, ./storage, docker.io default upstream', (t) => {
  const c = loadConfig();
  t.deepEqual(c.listen, { host: '0.0.0.0', port: 5000 });
  t.is(c.storage, './storage');
  t.is(c.defaultUpstream, 'docker.io');
  t.deepEqual(c.upstreams.get('docker.io')?.endpoints, ['https://registry-1.docker.io']);
  t.true(c.upstreams.get('docker.io')?.libraryPrefix);
  for (const h of ['gcr.io', 'mcr.microsoft.com', 'quay.io', 'registry.k8s.io', 'ghcr.io']) t.truthy(c.upstreams.get(h), h);
  t.true(Object.isFrozen(c));
});

const bad: Array<[string, RegExp]> = [
  ['listen: nope', /listen/],
  ['lisen: 0.0.0.0:5000', /lisen: unknown key/],
  ['log: { level: loud }', /log.level/],
  ['limits: { maxManifestBytes: 1MiB }', /maxManifestBytes/],
  ['limits: { uploadTtl: soon }', /limits.uploadTtl/],
  ['upstreams: { docker.io: { endpoint: [x] } }', /upstreams.docker.io.endpoint: unknown key/],
  ['upstreams: { docker.io: { endpoints: [ftp://x] } }', /endpoints\[0\]/],
  ['upstreams: { docker.io: { credentials: { username: bob } } }', /username and password/],
  ['upstreams: { docker.io: { tags: { immutable: ["("] } } }', /immutable\[0\]/],
  ['defaultUpstream: nowhere.io', /defaultUpstream/],
  ['namespaces: [{ prefix: "Bad Prefix", upstream: ns }]', /namespaces\[0\].prefix/],
  ['namespaces: [{ prefix: x, upstream: nowhere }]', /namespaces\[0\].upstream/],
  ['rewrites: [{ upstream: nowhere, pattern: x, replace: y }]', /rewrites\[0\].upstream/],
  ['upstreams: { docker.io: { credentials: { username: bob, password: "${REGMIRROR_TEST_UNSET_VAR}" } } }', /REGMIRROR_TEST_UNSET_VAR/],
  ['storage: [a]', /storage/],
  ['cache: { maxBytes: lots }', /cache.maxBytes: "lots" is not a size/],
  ['cache: { maxBytes: 0 }', /cache.maxBytes: must be greater than zero/],
  ['cache: { maxBytes: -5 }', /cache.maxBytes/],
  ['cache: { maxAge: forever }', /cache.maxAge: "forever" is not a duration/],
  ['cache: { maxAge: 0s }', /cache.maxAge: must be greater than zero/],
  ['cache: { evictInterval: 10ms }', /cache.evictInterval: must be at least 1s/],
  ['cache: { maxSize: 10GiB }', /cache.maxSize: unknown key/],
  ['cache: 5', /cache: must be a mapping/],
];
for (const [yaml, re] of bad) {
  test(`rejects: ${yaml}`, (t) => {
    const e = t.throws(() => parseConfigYaml(yaml, 'test.yml'));
    t.true(e instanceof ConfigError);
    t.regex(e!.message, re);
  });
}

test('${VAR:-default}: unset or empty takes the default; empty username and password = anonymous; one of them = error', (t) => {
  delete process.env.REGMIRROR_TEST_UNSET;
  process.env.REGMIRROR_TEST_EMPTY = '';
  process.env.REGMIRROR_TEST_USER = 'bob';
  process.env.REGMIRROR_TEST_TOKEN = 'dckr_pat_x';
  const creds = { username: '${REGMIRROR_TEST_USER:-}', password: '${REGMIRROR_TEST_TOKEN:-}' };
  const anon = { username: '${REGMIRROR_TEST_UNSET:-}', password: '${REGMIRROR_TEST_EMPTY:-}' };
  const c = configFromObject({
    listen: '${REGMIRROR_TEST_UNSET:-127.0.0.1:5999}',
    storage: '${REGMIRROR_TEST_EMPTY:-/data}',
    auth: { htpasswd: '${REGMIRROR_TEST_UNSET:-}' },
    upstreams: { 'docker.io': { credentials: creds }, 'quay.io': { credentials: anon } },
  });
  t.deepEqual(c.listen, { host: '127.0.0.1', port: 5999 });
  t.is(c.storage, '/data');
  t.is(c.auth?.htpasswd, null);
  t.deepEqual(c.upstreams.get('docker.io')?.credentials, { kind: 'basic', username: 'bob', password: 'dckr_pat_x' });
  t.is(c.upstreams.get('quay.io')?.credentials, null);
  t.is(configFromObject({ storage: '${REGMIRROR_TEST_USER:-/data}' }).storage, 'bob');
  const half = { 'docker.io': { credentials: { username: '${REGMIRROR_TEST_USER:-}', password: '${REGMIRROR_TEST_UNSET:-}' } } };
  t.throws(() => configFromObject({ upstreams: half }), { instanceOf: ConfigError, message: /username and password go together/ });
  t.throws(() => configFromObject({ storage: '${REGMIRROR_TEST_UNSET}' }), { instanceOf: ConfigError, message: /REGMIRROR_TEST_UNSET is not set/ });
});

test('cache: absent = unlimited and never; sizes, durations and null parse; the default config keeps 90 days', (t) => {
  t.deepEqual(configFromObject({}).cache, { maxBytes: null, maxAgeMs: null, evictIntervalMs: 600_000, deleteGraceMs: 300_000 });
  t.deepEqual(configFromObject({ cache: { maxBytes: '50GiB', maxAge: '30d', evictInterval: '30s' } }).cache, {
    maxBytes: 50 * 1024 ** 3,
    maxAgeMs: 30 * 86_400_000,
    evictIntervalMs: 30_000,
    deleteGraceMs: 300_000,
  });
  t.deepEqual(parseConfigYaml('cache: { maxBytes: null, maxAge: null }', 't.yml').cache, { maxBytes: null, maxAgeMs: null, evictIntervalMs: 600_000, deleteGraceMs: 300_000 });
  t.deepEqual(loadConfig().cache, { maxBytes: null, maxAgeMs: 90 * 86_400_000, evictIntervalMs: 600_000, deleteGraceMs: 300_000 });
});

test('credentials from environment variables; durations and sizes', (t) => {
  process.env.REGMIRROR_TEST_PW = 's3cret';
  const c = configFromObject({
    upstreams: { 'docker.io': { credentials: { username: 'bob', password: '${REGMIRROR_TEST_PW}' }, tags: { ttl: '90s', immutable: ['^v\\d+$'] } } },
    limits: { maxManifestBytes: '8MiB', uploadTtl: '2h' },
  });
  const u = c.upstreams.get('docker.io')!;
  t.deepEqual(u.credentials, { kind: 'basic', username: 'bob', password: 's3cret' });
  t.is(u.tags.ttlMs, 90_000);
  t.true(u.tags.immutable[0]!.test('v12'));
  t.is(c.limits.maxManifestBytes, 8 * 1024 * 1024);
  t.is(c.limits.uploadTtlMs, 7_200_000);
});
