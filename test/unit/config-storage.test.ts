import test from 'ava';
import { ConfigError, configFromObject, loadConfig, parseConfigYaml } from '../../src/config/load.js';

test('storage as a path (every existing config, the embedded default) = local driver in that directory', (t) => {
  t.deepEqual(loadConfig().store, { driver: 'local', postgres: null, s3: null });
  const c = parseConfigYaml('storage: /var/lib/regmirror', 'test.yml');
  t.is(c.storage, '/var/lib/regmirror');
  t.is(c.store.driver, 'local');
  t.is(parseConfigYaml('{}', 'test.yml').storage, './storage');
});

test('storage as a mapping: driver, path, postgres and s3 sections with defaults', (t) => {
  process.env.REGMIRROR_TEST_PGPASS = 's3cret';
  process.env.REGMIRROR_TEST_S3SECRET = 'abc/def';
  const c = parseConfigYaml(
    `storage:
  driver: shared
  path: /data
  postgres:
    url: postgres://regmirror@db.local:5433/regmirror
    password: "\${REGMIRROR_TEST_PGPASS}"
    poolSize: 20
    statementTimeout: 10s
  s3:
    endpoint: http://rgw.local:7480/
    bucket: regmirror-blobs
    prefix: /mirror
    forcePathStyle: true
    accessKeyId: AK
    secretAccessKey: "\${REGMIRROR_TEST_S3SECRET}"
    partSize: 32MiB
    redirect: true
    redirectExpires: 2m
`,
    'test.yml',
  );
  t.is(c.storage, '/data');
  t.deepEqual(c.store, {
    driver: 'shared',
    postgres: {
      url: 'postgres://regmirror@db.local:5433/regmirror',
      host: null,
      port: 5432,
      database: null,
      user: null,
      password: 's3cret',
      poolSize: 20,
      statementTimeoutMs: 10_000,
      connectTimeoutMs: 5_000,
      ssl: null,
    },
    s3: {
      endpoint: 'http://rgw.local:7480',
      region: 'us-east-1',
      bucket: 'regmirror-blobs',
      prefix: 'mirror/',
      forcePathStyle: true,
      accessKeyId: 'AK',
      secretAccessKey: 'abc/def',
      partSize: 32 * 1024 * 1024,
      redirect: true,
      redirectExpiresSeconds: 120,
      connectTimeoutMs: 5_000,
      requestTimeoutMs: 60_000,
    },
  });
  t.true(Object.isFrozen(c.store.postgres));
});

test('storage.driver postgres from fields; local is the default driver of a mapping', (t) => {
  const c = configFromObject({ storage: { driver: 'postgres', postgres: { host: 'db', database: 'rm', user: 'rm', ssl: true } } });
  t.is(c.storage, './storage');
  t.like(c.store.postgres, { url: null, host: 'db', port: 5432, database: 'rm', user: 'rm', password: null, poolSize: 10, ssl: { ca: null, insecureSkipVerify: false } });
  t.is(c.store.s3, null);
  // Redirects are opt-in: by default every blob byte goes through the mirror.
  t.like(configFromObject({ storage: { driver: 'shared', postgres: { host: 'db' }, s3: { bucket: 'abc' } } }).store.s3, { redirect: false, redirectExpiresSeconds: 300, connectTimeoutMs: 5_000, requestTimeoutMs: 60_000 });
  t.deepEqual(configFromObject({ storage: { path: '/x' } }).store, { driver: 'local', postgres: null, s3: null });
});

const bad: Array<[string, RegExp]> = [
  ['storage: { driver: s3 }', /storage.driver: "s3" must be one of local, postgres, shared/],
  ['storage: { driver: postgres }', /storage.postgres: required by driver postgres/],
  ['storage: { driver: shared, postgres: { host: db } }', /storage.s3: required by driver shared/],
  ['storage: { postgres: { host: db } }', /storage.postgres: not used by driver local/],
  ['storage: { driver: postgres, postgres: { host: db }, s3: { bucket: abc } }', /storage.s3: not used by driver postgres/],
  ['storage: { driver: postgres, postgres: {} }', /storage.postgres: url or host is required/],
  ['storage: { driver: postgres, postgres: { url: "mysql://db/x" } }', /storage.postgres.url: must start with postgres:\/\//],
  ['storage: { driver: postgres, postgres: { url: "postgres://db/x", host: db } }', /url, or host\/port\/database\/user, not both/],
  ['storage: { driver: postgres, postgres: { url: "postgres://u:pw@db/x", password: pw2 } }', /password is both in url and in password/],
  ['storage: { driver: postgres, postgres: { host: db, poolSize: 0 } }', /storage.postgres.poolSize: must be a positive integer/],
  ['storage: { driver: postgres, postgres: { host: db, port: 70000 } }', /storage.postgres.port: must be a TCP port/],
  ['storage: { driver: postgres, postgres: { host: db, statementTimeout: soon } }', /storage.postgres.statementTimeout: "soon" is not a duration/],
  ['storage: { driver: postgres, postgres: { host: db, pool: 5 } }', /storage.postgres.pool: unknown key/],
  ['storage: { driver: postgres, postgres: { host: db, ssl: { ca: /nonexistent/ca.pem } } }', /storage.postgres.ssl.ca: file \/nonexistent\/ca.pem does not exist/],
  ['storage: { driver: postgres, postgres: { host: db, password: "${REGMIRROR_TEST_UNSET_PG}" } }', /storage.postgres.password: environment variable REGMIRROR_TEST_UNSET_PG is not set/],
  ['storage: { driver: shared, postgres: { host: db }, s3: { endpoint: "http://rgw:7480" } }', /storage.s3.bucket: is required/],
  ['storage: { driver: shared, postgres: { host: db }, s3: { bucket: My_Bucket } }', /storage.s3.bucket: "My_Bucket" is not a bucket name/],
  ['storage: { driver: shared, postgres: { host: db }, s3: { bucket: abc, endpoint: "ftp://x" } }', /storage.s3.endpoint: must be http\(s\)/],
  ['storage: { driver: shared, postgres: { host: db }, s3: { bucket: abc, endpoint: "http://k:s@rgw" } }', /storage.s3.endpoint: put credentials under accessKeyId/],
  ['storage: { driver: shared, postgres: { host: db }, s3: { bucket: abc, accessKeyId: AK } }', /accessKeyId and secretAccessKey go together/],
  ['storage: { driver: shared, postgres: { host: db }, s3: { bucket: abc, partSize: 1MiB } }', /storage.s3.partSize: must be between 5MiB and 5GiB/],
  ['storage: { driver: shared, postgres: { host: db }, s3: { bucket: abc, pathStyle: true } }', /storage.s3.pathStyle: unknown key/],
  ['storage: { driver: shared, postgres: { host: db }, s3: { bucket: abc, redirect: yes } }', /storage.s3.redirect: must be true or false/],
  ['storage: { driver: shared, postgres: { host: db }, s3: { bucket: abc, redirectExpires: 8d } }', /storage.s3.redirectExpires: must be between 1s and 7d/],
  ['storage: { driver: shared, postgres: { host: db }, s3: { bucket: abc, redirectExpires: 0s } }', /storage.s3.redirectExpires: must be between 1s and 7d/],
  ['storage: { dir: /x }', /storage.dir: unknown key/],
];
for (const [yaml, re] of bad) {
  test(`rejects: ${yaml}`, (t) => {
    const e = t.throws(() => parseConfigYaml(yaml, 'test.yml'));
    t.true(e instanceof ConfigError);
    t.regex(e!.message, re);
  });
}

test('a postgres URL that does not parse is refused without echoing it (it may hold a password)', (t) => {
  const e = t.throws(() => configFromObject({ storage: { driver: 'postgres', postgres: { url: 'postgres://u:hunter2@[bad' } } }));
  t.regex(e!.message, /storage.postgres.url: is not a URL/);
  t.false(e!.message.includes('hunter2'));
});

test('a config file: shared is accepted (with or without eviction, #13), postgres alone is refused, never run on local disk', async (t) => {
  const fs = await import('node:fs/promises');
  const os = await import('node:os');
  const path = await import('node:path');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-cfg-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'c.yml');
  await fs.writeFile(file, 'storage: { driver: postgres, postgres: { host: db } }\n');
  const e = t.throws(() => loadConfig(file));
  t.true(e instanceof ConfigError);
  t.regex(e!.message, /storage.driver: postgres \(PostgreSQL metadata with local blobs\) is not available; use shared/);
  const shared = 'storage: { driver: shared, postgres: { host: db }, s3: { endpoint: "http://rgw:7480", bucket: blobs } }\n';
  await fs.writeFile(file, shared);
  t.is(loadConfig(file).store.driver, 'shared');
  // Eviction with several replicas runs under the gc-leader lease, content deleted after cache.deleteGrace.
  await fs.writeFile(file, `${shared}cache: { maxAge: 7d }\n`);
  t.like(loadConfig(file).cache, { maxAgeMs: 7 * 86_400_000, maxBytes: null, deleteGraceMs: 300_000 });
  await fs.writeFile(file, `${shared}cache: { maxBytes: 10GiB, deleteGrace: 30s }\n`);
  t.like(loadConfig(file).cache, { maxBytes: 10 * 1024 ** 3, deleteGraceMs: 30_000 });
  await fs.writeFile(file, `${shared}cache: { maxBytes: 10GiB, deleteGrace: soon }\n`);
  t.throws(() => loadConfig(file), { instanceOf: ConfigError, message: /cache.deleteGrace/ });
  await fs.writeFile(file, 'storage: { path: /srv/regmirror }\n');
  t.is(loadConfig(file).storage, '/srv/regmirror');
});
