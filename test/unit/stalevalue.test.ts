import test from 'ava';
import { StaleValue } from '../../src/ops/stalevalue.js';

/** A load the test finishes by hand, counting how often it started. */
function loads() {
  const pending: Array<{ resolve: (v: number) => void; reject: (e: Error) => void }> = [];
  return {
    pending,
    load: () => new Promise<number>((resolve, reject) => pending.push({ resolve, reject })),
  };
}

test('only the first read waits; a stale value is answered at once while one recomputation runs', async (t) => {
  const l = loads();
  let clock = 0;
  const errors: unknown[] = [];
  const v = new StaleValue(l.load, 1000, (e) => errors.push(e), () => clock);
  const first = v.get();
  const second = v.get();
  t.is(l.pending.length, 1, 'concurrent first reads share one load');
  l.pending[0]!.resolve(10);
  t.is(await first, 10);
  t.is(await second, 10);
  clock = 500;
  t.is(await v.get(), 10);
  t.is(l.pending.length, 1, 'fresh: no load');
  clock = 1500;
  // Stale: answered from the last value without waiting, and only one load starts however many read.
  t.is(await v.get(), 10);
  t.is(await v.get(), 10);
  t.is(l.pending.length, 2);
  l.pending[1]!.resolve(20);
  await Promise.resolve();
  await Promise.resolve();
  t.is(await v.get(), 20);
  clock = 3000;
  t.is(await v.get(), 20);
  l.pending[2]!.reject(new Error('scan failed'));
  await new Promise((r) => setImmediate(r));
  t.is(errors.length, 1, 'a failed background load is reported');
  t.is(await v.get(), 20, 'and the last value stays');
  t.is(l.pending.length, 4, 'the next read tries again');
});

test('a value set meanwhile (an eviction pass) is not overwritten by a load that started before it', async (t) => {
  const l = loads();
  let clock = 0;
  const v = new StaleValue(l.load, 1000, () => undefined, () => clock);
  const first = v.get();
  l.pending[0]!.resolve(100);
  t.is(await first, 100);
  clock = 2000;
  t.is(await v.get(), 100);
  v.set(60);
  l.pending[1]!.resolve(100);
  await new Promise((r) => setImmediate(r));
  t.is(await v.get(), 60);
});

test('the first read fails when its load fails; the next read loads again', async (t) => {
  const l = loads();
  const v = new StaleValue(l.load, 1000, () => undefined, () => 0);
  const first = v.get();
  l.pending[0]!.reject(new Error('no database'));
  await t.throwsAsync(first, { message: 'no database' });
  const again = v.get();
  t.is(l.pending.length, 2);
  l.pending[1]!.resolve(5);
  t.is(await again, 5);
});

test('after a slow computation the value stays fresh for ten times its duration (bounded background load)', async (t) => {
  const l = loads();
  let clock = 0;
  const v = new StaleValue(l.load, 1000, () => undefined, () => clock);
  const first = v.get();
  clock = 5000; // the computation took 5 s
  l.pending[0]!.resolve(1);
  t.is(await first, 1);
  clock = 5000 + 49_000;
  t.is(await v.get(), 1);
  t.is(l.pending.length, 1, 'fresh for 50 s, not ttlMs');
  clock = 5000 + 51_000;
  t.is(await v.get(), 1);
  t.is(l.pending.length, 2, 'then recomputed');
});
