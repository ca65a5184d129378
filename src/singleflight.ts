/**
 * Single flight: concurrent callers asking for the same key share one running promise
 * instead of each doing the work (one upstream request per manifest, tag list, referrers
 * list or token however many clients ask at once). The entry is dropped when the promise
 * settles, so the next caller after a failure starts afresh; caching results is the
 * caller's job.
 *
 * The shared work must not depend on any one caller (style.md pitfall 10): no per-request
 * abort signal goes into `start`, or one client leaving would fail everyone sharing it.
 */
export class SingleFlight<K, V> {
  private readonly flights = new Map<K, Promise<V>>();

  /** The flight running for `key`, joined, or a new one from `start()`. */
  run(key: K, start: () => Promise<V>): { promise: Promise<V>; joined: boolean } {
    const running = this.flights.get(key);
    if (running) return { promise: running, joined: true };
    const promise = start().finally(() => this.flights.delete(key));
    this.flights.set(key, promise);
    return { promise, joined: false };
  }

  /** Flights running now (metrics, tests). */
  get size(): number {
    return this.flights.size;
  }
}
