/**
 * The upload-session lease upkeep (src/storage/s3/lease.ts) against a scripted
 * Coordination: when `lost` fires (a refusal: at once; renewals failing: once the TTL since
 * the last confirmed renewal was sent has passed, not before), and that it never fires
 * while renewals succeed. Real timers, TTL 300 ms, every wait bounded.
 */
import test from 'ava';
import type { Coordination } from '../../src/storage/coordination.js';
import { dropClaim, keepLease } from '../../src/storage/s3/lease.js';

const TTL = 300;

function coordination(renew: () => Promise<boolean>): Coordination & { renewals: number } {
  const c = {
    renewals: 0,
    acquireLease: async () => ({ token: 1, expiresAt: Date.now() + TTL }),
    renewLease: () => (c.renewals++, renew()),
    releaseLease: async () => undefined,
    leaseHolder: async () => null,
    claimLease: async () => ({ grant: { token: 1, expiresAt: Date.now() + TTL }, holder: null }),
  };
  return c;
}

/** ms until the claim's signal fires, or null if it did not within `withinMs`. */
function lostAfter(signal: AbortSignal, start: number, withinMs: number): Promise<number | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), withinMs);
    signal.addEventListener('abort', () => (clearTimeout(timer), resolve(Date.now() - start)), { once: true });
  });
}

test('a refused renewal (another replica took the lease) fires lost at that renewal, with a 503', async (t) => {
  const start = Date.now();
  const claim = keepLease(coordination(async () => false), 'upload:x', 'me', TTL, start);
  t.teardown(() => dropClaim(claim));
  const ms = await lostAfter(claim.lost.signal, start, 5 * TTL);
  t.not(ms, null);
  t.true(ms! < TTL, `fired at the first renewal (${ms} ms), before the TTL`);
  t.like(claim.lost.signal.reason as object, { code: 'UNAVAILABLE', status: 503 });
});

test('renewals failing (database unreachable) fire lost once the TTL since the last confirmed renewal was sent has passed, not before', async (t) => {
  let ok = true;
  const start = Date.now();
  const c = coordination(async () => {
    if (ok) return true;
    throw new Error('connection refused');
  });
  const claim = keepLease(c, 'upload:x', 'me', TTL, start);
  t.teardown(() => dropClaim(claim));
  // Let two renewals succeed, then fail every one after.
  const deadline = Date.now() + 10 * TTL;
  while (c.renewals < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.is(c.renewals, 2);
  const lastOkSent = Date.now(); // the second renewal was sent at most one poll (10 ms) ago
  ok = false;
  const ms = await lostAfter(claim.lost.signal, lastOkSent, 5 * TTL);
  t.not(ms, null, 'fired');
  t.true(ms! >= TTL - 30, `not before the lease can have expired (${ms} ms after the last confirmed renewal)`);
  t.true(ms! <= TTL + 300, `soon after it, timer delays on a busy machine allowed (${ms} ms)`);
});

test('while renewals succeed, lost never fires', async (t) => {
  const start = Date.now();
  const c = coordination(async () => true);
  const claim = keepLease(c, 'upload:x', 'me', TTL, start);
  t.teardown(() => dropClaim(claim));
  t.is(await lostAfter(claim.lost.signal, start, 4 * TTL), null);
  t.true(c.renewals >= 6, `renewed every third of the TTL (${c.renewals} times)`);
});
