/** `cluster:` (config/cluster.ts) and the pieces of cache/clusterfill.ts that need no servers. */
import test from 'ava';
import pino from 'pino';
import { ClusterFills, parseFillOwner } from '../../src/cache/clusterfill.js';
import { FillManager } from '../../src/cache/fill.js';
import { ConfigError, configFromObject } from '../../src/config/load.js';
import { LocalCoordination } from '../../src/storage/coordination.js';
import type { BlobStore } from '../../src/storage/ports.js';

const SHARED = {
  driver: 'shared',
  postgres: { url: 'postgres://regmirror@db.local/regmirror' },
  s3: { endpoint: 'http://rgw.local:7480', bucket: 'regmirror', forcePathStyle: true },
};
const SECRET = 'a-cluster-secret-of-some-length';

test('defaults: no advertise URL, no secret (endpoint off), 10 s fill lease', (t) => {
  t.deepEqual(configFromObject({}).cluster, { advertiseUrl: null, secret: null, fillLeaseTtlMs: 10_000 });
  t.deepEqual(configFromObject({ storage: SHARED }).cluster, { advertiseUrl: null, secret: null, fillLeaseTtlMs: 10_000 });
});

test('shared driver: advertiseUrl, secret from ${ENV}, fillLeaseTtl', (t) => {
  process.env.REGMIRROR_TEST_CLUSTER = SECRET;
  const c = configFromObject({ storage: SHARED, cluster: { advertiseUrl: 'http://replica-a:5000/', secret: '${REGMIRROR_TEST_CLUSTER}', fillLeaseTtl: '3s' } });
  t.deepEqual(c.cluster, { advertiseUrl: 'http://replica-a:5000', secret: SECRET, fillLeaseTtlMs: 3000 });
});

test('refused: a short secret (not echoed), white space, a bad URL, a tiny TTL, unknown keys, and cluster settings without the shared driver', (t) => {
  const bad = (cluster: Record<string, unknown>, re: RegExp, storage: unknown = SHARED) => {
    const e = t.throws(() => configFromObject({ storage, cluster }), { instanceOf: ConfigError });
    t.regex(e!.message, re);
    return e!.message;
  };
  t.false(bad({ secret: 'short-secret' }, /cluster\.secret: must be at least 16/).includes('short-secret'));
  bad({ secret: 'has white space in it, sadly' }, /cluster\.secret: must not contain white space/);
  bad({ advertiseUrl: 'replica-a:5000' }, /cluster\.advertiseUrl/);
  bad({ advertiseUrl: 'ftp://replica-a' }, /must be http/);
  bad({ advertiseUrl: 'http://u:p@replica-a:5000' }, /scheme, host and port only/);
  bad({ fillLeaseTtl: '100ms' }, /cluster\.fillLeaseTtl: must be at least/);
  bad({ leaseTtl: '5s' }, /cluster\.leaseTtl/);
  bad({ secret: SECRET }, /only used with storage.driver: shared/, './storage');
});

test('fill lease owners name the replica and its URL; a replica started without one is reachable by nobody', (t) => {
  t.deepEqual(parseFillOwner('0f9c http://10.0.0.5:5000'), { replica: '0f9c', url: 'http://10.0.0.5:5000' });
  t.deepEqual(parseFillOwner('0f9c -'), { replica: '0f9c', url: null });
  t.deepEqual(parseFillOwner('0f9c file:///etc/passwd'), { replica: '0f9c', url: null });
});

test('the internal endpoint\'s check: bearer secret only, in full', (t) => {
  const log = pino({ level: 'silent' });
  const blobs = {} as BlobStore;
  const cluster = { advertiseUrl: null, secret: SECRET, fillLeaseTtlMs: 1000 };
  const c = new ClusterFills(new LocalCoordination(), blobs, new FillManager(blobs, log, 1), cluster, log);
  t.is(c.authorize(`Bearer ${SECRET}`), 'ok');
  t.is(c.authorize(`bearer ${SECRET}`), 'ok');
  t.is(c.authorize(undefined), 'absent');
  t.is(c.authorize(`Basic ${Buffer.from(`a:${SECRET}`).toString('base64')}`), 'absent');
  t.is(c.authorize(`Bearer ${SECRET} extra`), 'absent');
  t.is(c.authorize(`Bearer ${SECRET}x`), 'wrong');
  t.is(c.authorize(`Bearer ${SECRET.slice(1)}`), 'wrong');
  t.is(c.authorize('Bearer '), 'absent');
  c.listening('http://127.0.0.1:5000');
  t.true(c.owner.endsWith(' http://127.0.0.1:5000'));
  c.listening('http://127.0.0.1:6000'); // advertised once (the first listener)
  t.true(c.owner.endsWith(' http://127.0.0.1:5000'));
  const off = new ClusterFills(new LocalCoordination(), blobs, new FillManager(blobs, log, 1), { ...cluster, secret: null }, log);
  t.is(off.authorize(`Bearer ${SECRET}`), 'absent');
  return Promise.all([c.close(), off.close()]).then(() => undefined);
});
