import test from 'ava';
import { SingleFlight } from '../../src/singleflight.js';

test('concurrent callers of one key share one run; other keys run on their own', async (t) => {
  const sf = new SingleFlight<string, number>();
  let runs = 0;
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const start = async () => {
    runs++;
    await gate;
    return runs;
  };
  const a = sf.run('k', start);
  const b = sf.run('k', start);
  const c = sf.run('other', start);
  t.false(a.joined);
  t.true(b.joined);
  t.false(c.joined);
  t.is(a.promise, b.promise);
  t.is(sf.size, 2);
  release();
  t.is(await a.promise, await b.promise);
  await c.promise;
  t.is(runs, 2);
  t.is(sf.size, 0, 'settled flights are dropped');
});

test('a failed run is shared by its joiners and not remembered: the next caller starts afresh', async (t) => {
  const sf = new SingleFlight<string, string>();
  let attempt = 0;
  const start = async () => {
    attempt++;
    if (attempt === 1) throw new Error('upstream down');
    return 'ok';
  };
  const first = sf.run('k', start);
  const joiner = sf.run('k', start);
  await t.throwsAsync(first.promise, { message: 'upstream down' });
  await t.throwsAsync(joiner.promise, { message: 'upstream down' });
  const again = sf.run('k', start);
  t.false(again.joined);
  t.is(await again.promise, 'ok');
  t.is(attempt, 2);
});
