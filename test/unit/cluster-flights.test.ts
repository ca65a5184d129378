/**
 * ClusterFlights (src/registry/pullthrough/cluster.ts): one replica works under the lease,
 * the others take its result; a failed or dead holder and a slow one never leave a waiter
 * without an answer. Two instances on one LocalCoordination stand for two replicas on one
 * database (the lease contract is the same; the PostgreSQL run is shared-manifests.test.ts).
 */
import test from 'ava';
import { pino } from 'pino';
import { ClusterFlights } from '../../src/registry/pullthrough/cluster.js';
import { LocalCoordination } from '../../src/storage/coordination.js';
import { waitFor } from '../integration/_pullthrough.js';

const log = pino({ level: 'silent' });

/** A result "row" both replicas read, and a work function that writes it after `gate`. */
function store() {
  let row: string | undefined;
  let works = 0;
  let open: () => void = () => {};
  const gate = new Promise<void>((r) => (open = r));
  return {
    settled: async () => row,
    work: (value: string) => async () => {
      works++;
      await gate;
      row = value;
      return value;
    },
    open: () => open(),
    get works() {
      return works;
    },
  };
}

test('the replica holding the lease works once; the other takes its written result; in-process callers share one flight', async (t) => {
  const c = new LocalCoordination();
  const [a, b] = [new ClusterFlights(c, log), new ClusterFlights(c, log)];
  const s = store();
  const first = a.once('tag|x', { waitMs: 5_000, settled: s.settled, work: s.work('from-a') });
  const alsoA = a.once('tag|x', { waitMs: 5_000, settled: s.settled, work: s.work('from-a-again') });
  // B starts while A holds the lease (acquired on A's first tick).
  await new Promise((r) => setImmediate(r));
  const fromB = b.once('tag|x', { waitMs: 5_000, settled: s.settled, work: s.work('from-b') });
  s.open();
  t.deepEqual(await first, { value: 'from-a', joined: false });
  t.deepEqual(await alsoA, { value: 'from-a', joined: false });
  t.deepEqual(await fromB, { value: 'from-a', joined: true });
  t.is(s.works, 1);
});

test('a result already written is taken right after acquiring the lease, without working', async (t) => {
  const c = new LocalCoordination();
  const a = new ClusterFlights(c, log);
  let works = 0;
  const r = await a.once('list|y', { waitMs: 1_000, settled: async () => 'there', work: async () => `worked ${++works}` });
  t.deepEqual(r, { value: 'there', joined: true });
  t.is(works, 0);
});

test('the holder fails: the waiter takes the lease and works itself; the holder\'s caller gets the error', async (t) => {
  const c = new LocalCoordination();
  const [a, b] = [new ClusterFlights(c, log), new ClusterFlights(c, log)];
  let fail: (e: Error) => void = () => {};
  const failing = a.once('tag|z', { waitMs: 5_000, settled: async () => undefined, work: () => new Promise<string>((_, reject) => (fail = reject)) });
  await new Promise((r) => setImmediate(r));
  let bWorked = 0;
  const started = Date.now();
  const fromB = b.once('tag|z', { waitMs: 60_000, settled: async () => undefined, work: async () => `b ${++bWorked}` });
  fail(new Error('upstream down'));
  await t.throwsAsync(failing, { message: 'upstream down' });
  t.deepEqual(await fromB, { value: 'b 1', joined: false });
  t.true(Date.now() - started < 30_000, 'as soon as the lease was free, not at the end of its wait');
});

test('the holder died (its lease expired): the waiter takes over', async (t) => {
  let now = 1_000_000;
  let checks = 0;
  const c = new (class extends LocalCoordination {
    override leaseHolder(name: string) {
      checks++;
      return super.leaseHolder(name);
    }
  })(() => now);
  t.truthy(await c.acquireLease('manifest|d', 'dead-replica', 15_000));
  const b = new ClusterFlights(c, log);
  const started = Date.now();
  const fromB = b.once('manifest|d', { waitMs: 60_000, settled: async () => undefined, work: async () => 'b did it' });
  // B polls while the dead holder's lease runs; then its expiry passes.
  await waitFor(() => checks >= 2, 10_000, 'B polling the lease');
  now += 15_001;
  t.deepEqual(await fromB, { value: 'b did it', joined: false });
  t.true(Date.now() - started < 30_000, 'once the lease expired, not at the end of its wait');
  t.is((await c.leaseHolder('manifest|d'))?.owner, undefined, 'B released the lease after its work');
});

test('a holder slower than the bounded wait: the waiter asks itself when its wait ends', async (t) => {
  const c = new LocalCoordination();
  t.truthy(await c.acquireLease('tag|slow', 'slow-replica', 60_000));
  const b = new ClusterFlights(c, log);
  const started = Date.now();
  const r = await b.once('tag|slow', { waitMs: 300, settled: async () => undefined, work: async () => 'b did it' });
  t.deepEqual(r, { value: 'b did it', joined: false });
  t.true(Date.now() - started >= 300, 'waited its bound first');
  t.is((await c.leaseHolder('tag|slow'))?.owner, 'slow-replica', 'the slow holder keeps its lease');
});

test('with a copy held (giveUp): a failed holder or one slower than the wait gives the copy\'s answer, never a second upstream lookup; a holder\'s result still wins', async (t) => {
  const c = new LocalCoordination();
  const [a, b] = [new ClusterFlights(c, log), new ClusterFlights(c, log)];
  let bWorked = 0;
  const bOpts = (settled: () => Promise<string | undefined>, waitMs = 60_000) => ({
    waitMs,
    settled,
    work: async () => `b worked ${++bWorked}`,
    giveUp: async () => 'stale copy',
  });

  let fail: (e: Error) => void = () => {};
  const failing = a.once('tag|g', { waitMs: 5_000, settled: async () => undefined, work: () => new Promise<string>((_, reject) => (fail = reject)) });
  await new Promise((r) => setImmediate(r));
  const started = Date.now();
  const fromB = b.once('tag|g', bOpts(async () => undefined));
  fail(new Error('upstream down'));
  await t.throwsAsync(failing);
  t.deepEqual(await fromB, { value: 'stale copy', joined: false }, 'the holder failed: the copy, at once');
  t.true(Date.now() - started < 30_000);

  t.truthy(await c.acquireLease('tag|h', 'hung-replica', 60_000));
  t.deepEqual(await b.once('tag|h', bOpts(async () => undefined, 300)), { value: 'stale copy', joined: false }, 'the holder hangs: the copy after the wait');

  const s = store();
  const done = a.once('tag|i', { waitMs: 5_000, settled: s.settled, work: s.work('fresh from a') });
  await new Promise((r) => setImmediate(r));
  const fromB2 = b.once('tag|i', bOpts(s.settled));
  s.open();
  await done;
  t.deepEqual(await fromB2, { value: 'fresh from a', joined: true });
  t.is(bWorked, 0, 'B never asked the upstream');
});
