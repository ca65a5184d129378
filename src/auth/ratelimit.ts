/**
 * Failed-login limiter per client address: after `maxFailures` failures inside `windowMs`
 * the address is refused (429) until the window passes. Bounded memory (LRU).
 */
import { LRUCache } from 'lru-cache';

export class LoginLimiter {
  private readonly failures: LRUCache<string, number[]>;

  constructor(
    private readonly maxFailures: number,
    private readonly windowMs: number,
  ) {
    this.failures = new LRUCache({ max: 100_000, ttl: windowMs });
  }

  private recent(addr: string): number[] {
    const now = Date.now();
    return (this.failures.get(addr) ?? []).filter((t) => now - t < this.windowMs);
  }

  /** Seconds until the address may try again, or 0. */
  blockedFor(addr: string): number {
    const r = this.recent(addr);
    if (r.length < this.maxFailures) return 0;
    return Math.max(1, Math.ceil((r[0]! + this.windowMs - Date.now()) / 1000));
  }

  fail(addr: string): void {
    const r = this.recent(addr);
    r.push(Date.now());
    this.failures.set(addr, r.slice(-this.maxFailures));
  }

  succeed(addr: string): void {
    this.failures.delete(addr);
  }
}
