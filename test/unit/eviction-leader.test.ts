/**
 * The Evictor's leader lease and deferred deletes (cache/eviction.ts), against the
 * in-process LocalCoordination and a scripted metadata store: what the shared driver's
 * replicas rely on, without PostgreSQL (test/integration/shared-eviction.test.ts runs the
 * real thing). A stub here stands for the driver, never for the code under test.
 */
import test from 'ava';
import { Evictor, GC_LEADER } from '../../src/cache/eviction.js';
import { LocalCoordination, type DeferredDeletes } from '../../src/storage/coordination.js';
import type { Digest } from '../../src/registry/names.js';
import type { Evicted, MetadataStore } from '../../src/storage/ports.js';

const dg = (i: number) => `sha256:${String(i).padStart(64, '0')}` as Digest;

/** Five cached images of 100 bytes each; every unit takes `unitMs`. */
function fakeMeta(unitMs: number): MetadataStore & { evicted: Digest[] } {
  const images = [1, 2, 3, 4, 5].map((i) => ({ repo: 1, digest: dg(i), lastAccess: i }));
  const evicted: Digest[] = [];
  const meta = {
    evicted,
    cachedBytes: async () => 100 * (images.length - evicted.length),
    cachedImages: async () => images,
    looseBlobs: async () => [],
    evictImage: async (_repo: unknown, digest: Digest): Promise<Evicted> => {
      await new Promise((r) => setTimeout(r, unitMs));
      evicted.push(digest);
      return { manifests: 1, blobs: [{ digest, size: 100 }] };
    },
  };
  return meta as unknown as MetadataStore & { evicted: Digest[] };
}

test('two evictors on one coordination: concurrent passes, one runs and one skips; the lease is released after the pass', async (t) => {
  const coordination = new LocalCoordination();
  const policy = { maxBytes: 150, maxAgeMs: null };
  const meta = fakeMeta(5);
  const deleted: Digest[] = [];
  const blobs = { delete: async (d: Digest) => void deleted.push(d) };
  const a = new Evictor(meta, blobs, policy, { leader: { coordination, owner: 'a' } });
  const b = new Evictor(meta, blobs, policy, { leader: { coordination, owner: 'b' } });
  const [ra, rb] = await Promise.all([a.run(), b.run()]);
  t.deepEqual([ra.skipped, rb.skipped], [undefined, 'not-leader']);
  t.is(ra.images, 4, 'evicted down to the budget');
  t.is(meta.evicted.length, 4);
  t.deepEqual(deleted, meta.evicted, 'content deleted per unit (no deferred deletes configured)');
  t.is(await coordination.leaseHolder(GC_LEADER), null, 'released after the pass');
  t.is((await b.run()).skipped, undefined, 'the other one leads the next pass');
});

test('a leader that loses its lease mid-pass stops after the current unit and skips the deferred deletes', async (t) => {
  const coordination = new LocalCoordination();
  // Renewals fail from the start: someone else took the lease (an expiry while this one stalled).
  coordination.renewLease = async () => false;
  const meta = fakeMeta(40);
  let claimed = 0;
  const deferred: DeferredDeletes = {
    claimDue: async () => (claimed++, []),
    done: async () => undefined,
    claimOrphan: async () => null,
    pending: async () => 0,
    marked: async () => false,
  };
  const ev = new Evictor(meta, { delete: async () => undefined }, { maxBytes: 1, maxAgeMs: null }, {
    leader: { coordination, owner: 'a', ttlMs: 30 },
    deferred: { deletes: deferred, graceMs: 0 },
  });
  const r = await ev.run();
  t.true(r.images >= 1 && r.images < 5, `stopped early: ${r.images} of 5`);
  t.is(claimed, 0, 'no deletes without the lease');
});

test('deferred deletes: units delete no content; the drain deletes what the driver reports due, then marks it done', async (t) => {
  const meta = fakeMeta(0);
  const due = [dg(7), dg(8)];
  const done: Array<[Digest, number]> = [];
  const deferred: DeferredDeletes = {
    claimDue: async (graceMs) => (t.is(graceMs, 1234), due.splice(0).map((digest, i) => ({ digest, token: i + 1 }))),
    done: async (d, token) => void done.push([d, token]),
    claimOrphan: async () => null,
    pending: async () => 0,
    marked: async () => false,
  };
  const deleted: Digest[] = [];
  const ev = new Evictor(meta, { delete: async (d) => void deleted.push(d) }, { maxBytes: 1, maxAgeMs: null }, { deferred: { deletes: deferred, graceMs: 1234 } });
  const r = await ev.run();
  t.is(r.images, 5);
  t.deepEqual(deleted, [dg(7), dg(8)], 'only the due contents, not the units just evicted');
  t.deepEqual(done, [
    [dg(7), 1],
    [dg(8), 2],
  ]);
  t.is(r.contentDeleted, 2);
});

test('stop during a whole-store scan gives the pass up at once (shutdown does not wait a minute for the count)', async (t) => {
  const meta = fakeMeta(5);
  let scanning!: () => void;
  const scanStarted = new Promise<void>((r) => (scanning = r));
  let finishScan!: (bytes: number) => void;
  meta.cachedBytes = () => {
    scanning();
    return new Promise<number>((r) => (finishScan = r)); // the slow count: ends only when the test says
  };
  const passes: unknown[] = [];
  const ev = new Evictor(meta, { delete: async () => undefined }, { maxBytes: 150, maxAgeMs: null });
  ev.onPass = (r) => passes.push(r.skipped);
  const pass = ev.run();
  await scanStarted;
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const ceiling = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), 5_000)));
  t.not(await Promise.race([ev.stop().then(() => 'stopped' as const), ceiling]), 'timeout', 'stop did not wait for the scan');
  clearTimeout(timer);
  t.true(performance.now() - started < 5_000);
  t.is((await pass).skipped, 'stopped');
  t.deepEqual(passes, ['stopped']);
  t.deepEqual(meta.evicted, [], 'nothing evicted');
  finishScan(500); // the abandoned count ending later changes nothing
  await new Promise((r) => setImmediate(r));
  t.deepEqual(meta.evicted, []);
});
