/**
 * Per-upstream circuit breaker (verdaccio's max_fails/fail_timeout, with a half-open step).
 *
 *   closed --complete failure--> open --probe answers, or the window ran out--> half-open
 *   half-open: the next request is the trial, concurrent ones fail fast;
 *              trial answered -> closed, trial failed -> open again.
 *
 * Open means requests fail fast, so a dead or hung upstream costs clients nothing but the
 * stale copy or a quick 503. While open, a background probe (`GET /v2/`, short timeout,
 * one at a time) notices the upstream's return at once instead of waiting out
 * `timeouts.offline`. A probe can succeed where real requests still hang (a registry
 * whose ping works but whose storage does not), hence one trial request before closing:
 * a flapping upstream costs one bounded wait per cycle, not one per client request.
 */
import type { Logger } from 'pino';

/** Resolves true when the upstream answered (any status below 500). Never rejects. */
export type Probe = () => Promise<boolean>;

/** What a request may do now: go ahead, go ahead as the half-open trial, or fail fast. */
export type Admission = 'ok' | 'trial' | 'reject';

export class UpstreamHealth {
  private state: 'closed' | 'open' | 'half-open' = 'closed';
  private openUntil = 0;
  private trialInFlight = false;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Called when requests start or stop failing fast (metrics, status). */
  onChange: ((offline: boolean) => void) | null = null;

  constructor(
    private readonly name: string,
    private readonly windowMs: number,
    private readonly probeIntervalMs: number,
    private readonly probe: Probe,
    private readonly log: Logger,
  ) {}

  /** Whether requests currently fail fast (open, or half-open with its trial running). */
  get offline(): boolean {
    this.expire();
    return this.state === 'open' || (this.state === 'half-open' && this.trialInFlight);
  }

  admit(): Admission {
    this.expire();
    if (this.state === 'closed') return 'ok';
    if (this.state === 'open' || this.trialInFlight) return 'reject';
    this.trialInFlight = true;
    return 'trial';
  }

  /** The half-open trial's outcome: an answer closes the breaker, a failure reopens it. */
  trialDone(answered: boolean, reason = 'trial request failed'): void {
    this.trialInFlight = false;
    if (!answered) return this.markOffline(reason);
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.log.info({ upstream: this.name }, 'upstream answers again: offline window closed');
    this.onChange?.(false);
  }

  /** Open (or extend) the window after a complete failure. */
  markOffline(reason: string): void {
    if (this.windowMs <= 0 || this.closed) return;
    const was = this.state;
    this.state = 'open';
    this.openUntil = Date.now() + this.windowMs;
    if (was === 'closed') {
      this.log.warn({ upstream: this.name, forMs: this.windowMs, reason }, 'upstream marked offline');
      this.onChange?.(true);
    }
    this.scheduleProbe();
  }

  /** An open window that ran out lets one trial through, like a successful probe. */
  private expire(): void {
    if (this.state === 'open' && Date.now() >= this.openUntil) this.state = 'half-open';
  }

  private scheduleProbe(): void {
    if (this.timer || this.probeIntervalMs <= 0 || this.closed) return;
    this.timer = setTimeout(() => void this.runProbe(), this.probeIntervalMs);
    this.timer.unref();
  }

  private async runProbe(): Promise<void> {
    const ok = await this.probe();
    this.timer = null;
    if (this.closed || this.state !== 'open') return;
    if (ok) this.state = 'half-open';
    else this.scheduleProbe();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
