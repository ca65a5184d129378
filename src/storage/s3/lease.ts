/**
 * S3 driver: the upkeep of a session lease (uploads.ts) while one request writes. The lease
 * is renewed every third of its TTL. It surely holds until `sentAt` (when the last
 * confirmed renewal was sent; the database's expiry is later) plus the TTL; past that
 * without a confirmation (the database unreachable), or on a refusal (another replica took
 * it), it may belong to someone else: `lost` fires, and the write it guards stops.
 */
import { RegistryError } from '../../registry/errors.js';
import type { Coordination } from '../coordination.js';

export interface Claim {
  renew: NodeJS.Timeout;
  expiry: NodeJS.Timeout;
  /** Aborted (reason: a 503 RegistryError) when the lease may have lapsed. */
  lost: AbortController;
}

export function keepLease(leases: Coordination, name: string, owner: string, ttl: number, sentAt: number): Claim {
  const lost = new AbortController();
  const lapse = () => {
    clearInterval(claim.renew);
    lost.abort(new RegistryError('UNAVAILABLE', 'upload session lease lost (metadata database unreachable); the chunk was not stored, retry it', { status: 503, headers: { 'retry-after': '5' } }));
  };
  const claim: Claim = {
    lost,
    expiry: setTimeout(lapse, Math.max(0, sentAt + ttl - Date.now())).unref(),
    renew: setInterval(() => {
      const t0 = Date.now();
      void leases.renewLease(name, owner, ttl).then(
        (ok) => {
          if (lost.signal.aborted) return;
          if (!ok) return lapse();
          clearTimeout(claim.expiry);
          claim.expiry = setTimeout(lapse, Math.max(0, t0 + ttl - Date.now())).unref();
        },
        () => undefined, // the expiry timer decides
      );
    }, ttl / 3).unref(),
  };
  return claim;
}

/** Stop the upkeep (the request ended); the lease itself is released by the caller. */
export function dropClaim(c: Claim): void {
  clearInterval(c.renew);
  clearTimeout(c.expiry);
}
