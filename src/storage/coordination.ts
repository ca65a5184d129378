/**
 * Coordination between replicas (issue #13): named leases with an owner and an expiry.
 * One replica fills a digest (`fill:<digest>`), one runs eviction and GC (`gc-leader`);
 * a holder that dies stops renewing and another takes over once the lease expired. A
 * port of its own beside ports.ts: only shared-storage drivers need more than the
 * in-process implementation below (one replica: the process is the whole cluster).
 */
import type { Digest } from '../registry/names.js';

export interface LeaseGrant {
  /** Grows with every new holder: work done under an older token is stale (fencing). */
  token: number;
  /** When the lease ends unless renewed (ms since the epoch, the coordinator's clock). */
  expiresAt: number;
}

/**
 * A lease as held by the work done under it (fencing): a driver that supports fencing
 * refuses a change made under it once `name` has another token or has expired, checked in
 * the same transaction as the change (a paused leader whose lease was taken over changes
 * nothing when it resumes).
 */
export interface Fence {
  name: string;
  owner: string;
  token: number;
}

/** A change under a Fence was refused: the lease is no longer held with that token. */
export class FencedOut extends Error {
  constructor(readonly fence: Fence) {
    super(`lease ${fence.name} is no longer held with fencing token ${fence.token} (taken over or expired); change refused`);
    this.name = 'FencedOut';
  }
}

/** Who holds a lease now. */
export interface LeaseHolder {
  owner: string;
  token: number;
  expiresAt: number;
}

export interface Coordination {
  /**
   * Take `name` for `owner` for `ttlMs`: granted when nobody holds it, its lease expired,
   * or `owner` already holds it (then it is extended, same token). Null when someone
   * else holds it. At most one owner holds a name at any time.
   */
  acquireLease(name: string, owner: string, ttlMs: number): Promise<LeaseGrant | null>;
  /**
   * acquireLease that also says who holds `name` when refused, in one round trip (a fill's
   * non-owner needs both at once: time to first byte). `holder` may be null when refused
   * (the holder changed during the call): ask leaseHolder then.
   */
  claimLease(name: string, owner: string, ttlMs: number): Promise<{ grant: LeaseGrant; holder: null } | { grant: null; holder: LeaseHolder | null }>;
  /** Extend a lease `owner` still holds (not expired); false once it is lost: stop the work. */
  renewLease(name: string, owner: string, ttlMs: number): Promise<boolean>;
  /** Give the lease up if `owner` holds it (no-op otherwise). */
  releaseLease(name: string, owner: string): Promise<void>;
  /** Who holds `name` now (null: nobody, or expired). */
  leaseHolder(name: string): Promise<LeaseHolder | null>;
}

/** The local driver's coordination: leases in a Map, for a single replica. */
export class LocalCoordination implements Coordination {
  private readonly leases = new Map<string, { owner: string; token: number; expiresAt: number }>();
  private tokens = 0;

  constructor(private readonly now: () => number = Date.now) {}

  private live(name: string) {
    const l = this.leases.get(name);
    if (l && l.expiresAt <= this.now()) {
      this.leases.delete(name);
      return undefined;
    }
    return l;
  }

  async acquireLease(name: string, owner: string, ttlMs: number): Promise<LeaseGrant | null> {
    const l = this.live(name);
    if (l && l.owner !== owner) return null;
    const lease = { owner, token: l?.token ?? ++this.tokens, expiresAt: this.now() + ttlMs };
    this.leases.set(name, lease);
    return { token: lease.token, expiresAt: lease.expiresAt };
  }

  async claimLease(name: string, owner: string, ttlMs: number): Promise<{ grant: LeaseGrant; holder: null } | { grant: null; holder: LeaseHolder | null }> {
    const grant = await this.acquireLease(name, owner, ttlMs);
    return grant ? { grant, holder: null } : { grant: null, holder: await this.leaseHolder(name) };
  }

  async renewLease(name: string, owner: string, ttlMs: number): Promise<boolean> {
    const l = this.live(name);
    if (!l || l.owner !== owner) return false;
    l.expiresAt = this.now() + ttlMs;
    return true;
  }

  async releaseLease(name: string, owner: string): Promise<void> {
    if (this.leases.get(name)?.owner === owner) this.leases.delete(name);
  }

  async leaseHolder(name: string): Promise<{ owner: string; token: number; expiresAt: number } | null> {
    const l = this.live(name);
    return l ? { ...l } : null;
  }
}

/** A granted lease kept renewed while its work runs (see `keepRenewed`). */
export interface RenewedLease {
  /** True once a renewal was refused (another holder may have it) or failed: stop at a safe point. */
  lost(): boolean;
  /** Stop renewing and give the lease up (rejects if the release fails; the lease then expires). */
  release(): Promise<void>;
}

/**
 * Renew `name` every third of `ttlMs` until released: the one upkeep loop of fills, tag
 * lookups, eviction passes and gc. `onProblem` hears each failed (error) or refused (null)
 * renewal, e.g. to log it; the timer never keeps the process alive.
 */
export function keepRenewed(coordination: Coordination, name: string, owner: string, ttlMs: number, onProblem?: (err: Error | null) => void): RenewedLease {
  let lost = false;
  const timer = setInterval(() => {
    coordination.renewLease(name, owner, ttlMs).then(
      (ok) => {
        if (ok) return;
        lost = true;
        onProblem?.(null);
      },
      (err: unknown) => {
        lost = true;
        onProblem?.(err instanceof Error ? err : new Error(String(err)));
      },
    );
  }, ttlMs / 3);
  timer.unref();
  return {
    lost: () => lost,
    release: () => {
      clearInterval(timer);
      return coordination.releaseLease(name, owner);
    },
  };
}

/**
 * Deferred deletion of blob content (shared driver; storage/README.md "Eviction with
 * several replicas"). When a blob row goes (eviction, GC) the driver records a marker in
 * the same transaction; the content itself is deleted only once the marker is `graceMs`
 * old, so a replica that resolved the digest just before keeps reading whole bytes. A
 * commit of the digest meanwhile cancels the pending delete; a commit while a delete is
 * claimed waits for it (ContentBeingDeleted) and then writes the content again. Absent for
 * the local driver: an unlinked file stays readable through open descriptors.
 */
export interface DeferredDeletes {
  /**
   * Claim up to `limit` markers older than `graceMs` whose row was not re-created (and
   * claims whose holder died): delete each content, then call `done`.
   */
  claimDue(graceMs: number, limit: number): Promise<Array<{ digest: Digest; token: number }>>;
  /** The claimed content is deleted: drop the marker (a no-op if the claim was lost). */
  done(digest: Digest, token: number): Promise<void>;
  /** Claim content without a row (GC of orphans) for deletion now; null when it has a row or a marker. */
  claimOrphan(digest: Digest): Promise<number | null>;
  /** Markers not yet done (pending or claimed). */
  pending(): Promise<number>;
  /** Whether `digest` has a marker (its content is expected without a row until deleted: not an orphan). */
  marked(digest: Digest): Promise<boolean>;
  /** The same deletes, each claim refused (FencedOut) unless `fence` still holds (drivers with fencing). */
  fenced?(fence: Fence): DeferredDeletes;
}

/**
 * How long a delete claim lasts; a claimer that died is replaced after it. A claimer issues
 * no DELETE later than DELETE_ISSUE_MS after its claim, and a DELETE request gives up within
 * a minute (s3/client.ts), so every DELETE of a claim has ended before the claim does.
 */
export const DELETE_CLAIM_TTL_MS = 5 * 60_000;
export const DELETE_ISSUE_MS = 60_000;

/** A commit met a claimed delete of the same digest: wait until it is done, then write the content again. */
export class ContentBeingDeleted extends Error {
  constructor(readonly digest: Digest) {
    super(`blob ${digest} is being deleted from the store; commit again once that is done`);
    this.name = 'ContentBeingDeleted';
  }
}
