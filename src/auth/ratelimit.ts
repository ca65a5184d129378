/**
 * Failed-login limiter per client address: after `maxFailures` failures inside `windowMs`
 * the address is refused (429) until the window passes. Bounded memory (LRU).
 *
 * Failures count per distinct credentials: the same wrong user and password sent again
 * is one failure, not several. Guessing needs different passwords, each of which counts;
 * but containerd resends a refused pull secret several times per pull (kubelet retries
 * the pull too), and counting every resend locked whole nodes out after two bad pods.
 * Only a hash of the credentials is kept, in memory, never logged.
 */
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { countBounded } from '../lru.js';

interface Failure {
  at: number;
  /** sha256 of the credentials presented, truncated. */
  key: string;
}

export class LoginLimiter {
  private readonly failures: LRUCache<string, Failure[]>;

  constructor(
    private readonly maxFailures: number,
    private readonly windowMs: number,
  ) {
    this.failures = new LRUCache({ ...countBounded(100_000), ttl: windowMs });
  }

  private recent(addr: string): Failure[] {
    const now = Date.now();
    return (this.failures.get(addr) ?? []).filter((f) => now - f.at < this.windowMs);
  }

  /** Seconds until the address may try again, or 0. */
  blockedFor(addr: string): number {
    const r = this.recent(addr);
    if (r.length < this.maxFailures) return 0;
    return Math.max(1, Math.ceil((r[0]!.at + this.windowMs - Date.now()) / 1000));
  }

  /** `credentials`: what was presented (`user:password`), so a resend counts once. */
  fail(addr: string, credentials: string): void {
    const key = createHash('sha256').update(credentials).digest('hex').slice(0, 32);
    const r = this.recent(addr).filter((f) => f.key !== key);
    r.push({ at: Date.now(), key });
    this.failures.set(addr, r.slice(-this.maxFailures));
  }

  succeed(addr: string): void {
    this.failures.delete(addr);
  }
}
