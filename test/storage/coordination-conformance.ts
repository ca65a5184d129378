/**
 * What every Coordination driver promises (src/storage/coordination.ts), checked through
 * two handles `a` and `b` that stand for two replicas (two pools on one database; for the
 * in-process driver, the same object). `lapse(ttlMs)` returns once a lease taken with
 * `ttlMs` has expired (real time for PostgreSQL, a fake clock for the local driver).
 */
import type { ExecutionContext } from 'ava';
import type { Coordination } from '../../src/storage/coordination.js';

export async function leaseContract(t: ExecutionContext, a: Coordination, b: Coordination, lapse: (name: string, ttlMs: number) => Promise<void>): Promise<void> {
  const first = await a.acquireLease('fill:x', 'replica-a', 60_000);
  t.truthy(first);
  t.is(await b.acquireLease('fill:x', 'replica-b', 60_000), null, 'held: nobody else gets it');
  t.is((await a.acquireLease('fill:x', 'replica-a', 60_000))?.token, first!.token, 'the holder extends, same token');
  t.false(await b.renewLease('fill:x', 'replica-b', 60_000), 'only the holder renews');
  t.true(await a.renewLease('fill:x', 'replica-a', 60_000));
  t.like(await b.leaseHolder('fill:x'), { owner: 'replica-a', token: first!.token });
  // claimLease: refused with the holder in the same answer; the holder itself is granted (same token).
  t.like(await b.claimLease('fill:x', 'replica-b', 60_000), { grant: null, holder: { owner: 'replica-a', token: first!.token } });
  t.like(await a.claimLease('fill:x', 'replica-a', 60_000), { grant: { token: first!.token }, holder: null });
  // 24 contenders from both handles for a free name: exactly one wins.
  const grants = await Promise.all(Array.from({ length: 24 }, (_, i) => (i % 2 ? a : b).acquireLease('gc-leader', `r${i}`, 60_000)));
  t.is(grants.filter(Boolean).length, 1, 'one winner among concurrent contenders');
  // Expiry: a short lease lapses, then another replica takes it with a bigger token.
  const ttl = 300;
  const short = await a.acquireLease('fill:y', 'replica-a', ttl);
  t.truthy(short);
  await lapse('fill:y', ttl);
  t.is(await b.leaseHolder('fill:y'), null, 'expired: nobody holds it');
  t.false(await a.renewLease('fill:y', 'replica-a', 60_000), 'an expired lease is not renewed');
  const taken = await b.acquireLease('fill:y', 'replica-b', 60_000);
  t.truthy(taken);
  t.true(taken!.token > short!.token, 'a new holder gets a bigger token');
  t.false(await a.renewLease('fill:y', 'replica-a', 60_000), 'the old holder learns it lost the lease');
  await a.releaseLease('fill:y', 'replica-a'); // not the holder: no effect
  t.like(await a.leaseHolder('fill:y'), { owner: 'replica-b' });
  await b.releaseLease('fill:y', 'replica-b');
  t.is(await a.leaseHolder('fill:y'), null);
  t.truthy(await a.acquireLease('fill:y', 'replica-a', 60_000), 'released: free again');
  const claimed = await b.claimLease('fill:z', 'replica-b', 60_000);
  t.true(claimed.grant !== null && claimed.holder === null, 'free: claimLease grants it');
  const claims = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 ? a : b).claimLease('fill:w', `r${i}`, 60_000)));
  const winners = claims.filter((c) => c.grant);
  t.is(winners.length, 1, 'one winner among concurrent claims');
  const winner = `r${claims.indexOf(winners[0]!)}`;
  for (const c of claims) if (!c.grant && c.holder) t.is(c.holder.owner, winner, 'a refused claim names the winner (or nobody, when it raced)');
}
