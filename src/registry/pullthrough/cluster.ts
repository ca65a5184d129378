/**
 * One replica does an upstream lookup, the others take its result from the shared rows
 * (storage.driver: shared, issue #13). The in-process SingleFlight already makes one
 * request per process; this makes it one across replicas: the replica that takes the
 * lease `name` (storage/coordination.ts, PostgreSQL) asks the upstream and writes the
 * rows; the others poll `settled` (a read of those rows) until it answers, the lease is
 * gone (the holder finished without a result, or died: they try to take it), or their wait
 * ends (they then ask the upstream themselves, or serve the copy they hold: a slow replica
 * must not hold every other one up). Nothing waits on anything it holds, so there is no
 * deadlock; at worst a lookup is made twice.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { SingleFlight } from '../../singleflight.js';
import { type Coordination, keepRenewed } from '../../storage/coordination.js';
import type { MetadataStore } from '../../storage/ports.js';

/** How long a lease lasts unless renewed; the holder renews it every third of that. */
const LEASE_MS = 15_000;
/** Polling backoff while another replica works: first and longest pause. */
const POLL_FIRST_MS = 15;
const POLL_MAX_MS = 200;

export class ClusterFlights {
  /** This process among the replicas (several in-process servers in tests: hence the random part). */
  readonly owner = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  /** One lease holder or poller per name in this process (the lease is per process, not per request). */
  private readonly local = new SingleFlight<string, { value: unknown; joined: boolean }>();

  constructor(
    private readonly coordination: Coordination,
    private readonly log: Logger,
  ) {}

  /**
   * `settled()` when some replica's result is there (checked again right after taking the
   * lease: the previous holder may have just written it), else `work()`, done by the one
   * replica holding `name`. Others wait at most `waitMs`, then do `work()` themselves; a
   * holder that ends without a result (failed, or died and its lease expired) leaves the
   * lease to the next one. With `giveUp` (the caller has an older copy to serve), a waiter
   * answers `giveUp()` in both cases instead of asking the upstream again: one hung upstream
   * must not cost a client one timeout per replica. `joined`: the answer came from another replica.
   */
  once<T>(name: string, o: OnceOptions<T>): Promise<{ value: T; joined: boolean }> {
    return this.local.run(name, () => this.across(name, o)).promise as Promise<{ value: T; joined: boolean }>;
  }

  private async across<T>(name: string, { waitMs, settled, work, giveUp }: OnceOptions<T>): Promise<{ value: T; joined: boolean }> {
    const deadline = Date.now() + waitMs;
    let pause = POLL_FIRST_MS;
    for (;;) {
      if (await this.coordination.acquireLease(name, this.owner, LEASE_MS)) return this.hold(name, settled, work);
      // Another replica is at it: its rows, once written, are the answer.
      for (;;) {
        const done = await settled();
        if (done !== undefined) return { value: done, joined: true };
        if (Date.now() >= deadline) {
          this.log.warn({ lease: name, waitMs }, giveUp ? 'another replica is slow with an upstream lookup: answering with the copy held' : 'another replica is slow with an upstream lookup: asking the upstream here too');
          return { value: await (giveUp ?? work)(), joined: false };
        }
        await new Promise((r) => setTimeout(r, pause));
        pause = Math.min(pause * 2, POLL_MAX_MS);
        if (await this.coordination.leaseHolder(name)) continue;
        if (!giveUp) break; // take the lease: next round
        // The holder is done: its result (written just before its release), or its failure.
        const last = await settled();
        return last !== undefined ? { value: last, joined: true } : { value: await giveUp(), joined: false };
      }
    }
  }

  private async hold<T>(name: string, settled: () => Promise<T | undefined>, work: () => Promise<T>): Promise<{ value: T; joined: boolean }> {
    const held = keepRenewed(this.coordination, name, this.owner, LEASE_MS, (e) => e && this.log.debug({ lease: name, err: e.message }, 'lease renewal failed'));
    try {
      const done = await settled();
      return done !== undefined ? { value: done, joined: true } : { value: await work(), joined: false };
    } finally {
      // Not awaited: waiters also see the result itself, the release only speeds up a failure case.
      held.release().catch((e: unknown) => this.log.debug({ lease: name, err: (e as Error).message }, 'lease release failed (it expires)'));
    }
  }
}

export interface OnceOptions<T> {
  /** How long to wait for another replica's result before answering without it. */
  waitMs: number;
  /** A replica's result in the shared rows, if there is one yet (fresh enough for the caller). */
  settled: () => Promise<T | undefined>;
  /** Ask the upstream and write the rows (the lease holder). */
  work: () => Promise<T>;
  /** See `once`: the answer when the holder failed or was too slow, for a caller holding an older copy. */
  giveUp?: () => Promise<T>;
}

/**
 * Replicas sharing one store (storage.driver: shared): the lookups other replicas may be
 * doing at the same time, and the store read without the process's read cache (whose
 * entries may be up to a second old: exactly the change a waiting replica looks for).
 */
export interface SharedLookups {
  flights: ClusterFlights;
  meta: MetadataStore;
}

/** A list fetched upstream (tag list, referrers) and when, as kept in memory and in `upstream_lists`. */
export interface ListEntry<V> {
  value: V;
  fetchedAt: number;
}

/**
 * An upstream list fetched by one replica per TTL: the stored one when it is younger than
 * `ttlMs` (its own fetch time travels with it, so no replica serves it longer than the
 * TTL), else `fetch()` under the lease `list|<key>`, stored for the others. A failed store
 * write is logged and the fetched list served anyway (as for best-effort cache writes).
 */
export async function sharedList<V>(
  shared: SharedLookups,
  log: Logger,
  key: string,
  o: { ttlMs: number; waitMs: number; held: boolean },
  fetch: () => Promise<V>,
): Promise<ListEntry<V>> {
  const settled = async () => {
    const e = await storedList<V>(shared, key);
    return e && Date.now() - e.fetchedAt < o.ttlMs ? e : undefined;
  };
  const work = async () => {
    const e = { value: await fetch(), fetchedAt: Date.now() };
    await shared.meta.putUpstreamList(key, JSON.stringify(e.value), e.fetchedAt).catch((err: unknown) => log.warn({ list: key, err: (err as Error).message }, 'storing an upstream list for the other replicas failed'));
    return e;
  };
  // With an older list held, the caller serves it stale when the holder failed or is slow.
  const giveUp = o.held
    ? async (): Promise<ListEntry<V>> => {
        throw new Error('the upstream list fetch failed or is slow on another replica');
      }
    : undefined;
  return (await shared.flights.once(`list|${key}`, { waitMs: o.waitMs, settled, work, giveUp })).value;
}

/** The list as last stored by any replica (any age: a stale answer when the upstream fails), or undefined. */
export async function storedList<V>(shared: SharedLookups, key: string): Promise<ListEntry<V> | undefined> {
  const row = await shared.meta.upstreamList(key);
  return row && { value: JSON.parse(row.body) as V, fetchedAt: row.fetchedAt };
}
