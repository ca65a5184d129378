/**
 * A number that is slow to compute, read by cheap requests: the cached-bytes count is a
 * scan of every blob row (about a minute at a million blobs on a busy 2-core machine,
 * bench/scale.mjs), read by every /metrics scrape and /status poll. Reads answer the last
 * computed value and, once it is older than `ttlMs`, start one recomputation in the
 * background; only the first read ever waits. One computation at a time (the scan worker
 * runs queries one after another: scrapes must not queue up a scan each), and a value
 * given by `set` (an eviction pass's own count) is not overwritten by a computation that
 * started before it. A value stays fresh for at least LOAD_SHARE times as long as its
 * computation took, so frequent scrapes keep a slow scan to a bounded share of one core
 * (a 35 s scan at a million blobs: at most one every ~6 minutes).
 */
import { SingleFlight } from '../singleflight.js';

/** A value is fresh for at least this many times its computation's duration. */
const LOAD_SHARE = 10;

export class StaleValue<T> {
  private current: { value: T; at: number } | null = null;
  /** How long the current value is fresh: ttlMs, or longer after a slow computation. */
  private freshMs: number;
  private generation = 0;
  private readonly flight = new SingleFlight<'load', T>();

  constructor(
    private readonly load: () => Promise<T>,
    private readonly ttlMs: number,
    /** A background recomputation failed (the last value stays). */
    private readonly onError: (err: unknown) => void,
    private readonly now: () => number = Date.now,
  ) {
    this.freshMs = ttlMs;
  }

  get(): Promise<T> {
    const cur = this.current;
    if (cur && this.now() - cur.at <= this.freshMs) return Promise.resolve(cur.value);
    const loading = this.refresh();
    if (!cur) return loading;
    loading.catch(this.onError);
    return Promise.resolve(cur.value);
  }

  /** A value known to be current (computed elsewhere). */
  set(value: T): void {
    this.generation++;
    this.current = { value, at: this.now() };
  }

  private refresh(): Promise<T> {
    return this.flight.run('load', () => {
      const gen = this.generation;
      const started = this.now();
      return this.load().then((value) => {
        this.freshMs = Math.max(this.ttlMs, LOAD_SHARE * (this.now() - started));
        if (gen === this.generation) this.set(value);
        return this.current!.value;
      });
    }).promise;
  }
}
