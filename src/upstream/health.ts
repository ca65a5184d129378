/**
 * Per-upstream offline window (a circuit breaker; verdaccio's max_fails/fail_timeout).
 *
 * After a complete failure (every endpoint refused, reset or timed out) requests fail
 * fast, so a dead or hung upstream costs clients nothing but the stale copy or a quick
 * 503. While the window is open a background probe asks the upstream, one request at a
 * time with a short timeout, and closes the window the moment it answers: recovery does
 * not wait for the window to run out. The window still ends after `windowMs` even if the
 * probes keep failing, since a probe can fail where real requests would not.
 */
import type { Logger } from 'pino';

/** Resolves true when the upstream answered (any status below 500). Never rejects. */
export type Probe = () => Promise<boolean>;

export class UpstreamHealth {
  private offlineUntil = 0;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Called when the state changes (metrics, status). */
  onChange: ((offline: boolean) => void) | null = null;

  constructor(
    private readonly name: string,
    private readonly windowMs: number,
    private readonly probeIntervalMs: number,
    private readonly probe: Probe,
    private readonly log: Logger,
  ) {}

  /** Whether requests currently fail fast. */
  get offline(): boolean {
    return Date.now() < this.offlineUntil;
  }

  /** Open (or extend) the window after a complete failure. */
  markOffline(reason: string): void {
    if (this.windowMs <= 0 || this.closed) return;
    const was = this.offline;
    this.offlineUntil = Date.now() + this.windowMs;
    if (!was) {
      this.log.warn({ upstream: this.name, forMs: this.windowMs, reason }, 'upstream marked offline');
      this.onChange?.(true);
    }
    this.scheduleProbe();
  }

  private markOnline(): void {
    if (!this.offline) return;
    this.offlineUntil = 0;
    this.log.info({ upstream: this.name }, 'upstream answers again: offline window closed');
    this.onChange?.(false);
  }

  private scheduleProbe(): void {
    if (this.timer || this.probeIntervalMs <= 0 || this.closed) return;
    this.timer = setTimeout(() => void this.runProbe(), this.probeIntervalMs);
    this.timer.unref();
  }

  private async runProbe(): Promise<void> {
    const ok = await this.probe();
    this.timer = null;
    if (this.closed) return;
    if (ok) return this.markOnline();
    if (this.offline) this.scheduleProbe();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
