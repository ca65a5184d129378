import test from 'ava';
import { LocalCoordination } from '../../src/storage/coordination.js';
import { leaseContract } from '../storage/coordination-conformance.js';

test('local coordination (one replica, in memory) keeps the lease contract', async (t) => {
  let now = 1_000_000;
  const c = new LocalCoordination(() => now);
  await leaseContract(t, c, c, async (_name, ttlMs) => {
    now += ttlMs;
  });
});
