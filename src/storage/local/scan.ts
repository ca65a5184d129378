/**
 * Whole-store read queries (eviction's candidates) off the event loop.
 * Each is a scan of every blob or manifest row: about a second per million rows on a busy
 * machine, during which a synchronous query on the main connection would stall every
 * request (bench/scale.mjs). They run on a second connection in a worker thread instead,
 * started on first use and stopped when idle. A file database only (not `:memory:`);
 * without a worker (it failed to start or died) the query runs inline, as before.
 */
import { Worker } from 'node:worker_threads';

export type ScanOp = 'cachedImages' | 'looseBlobs' | 'evictionCandidates' | 'checkpoint';
export interface ScanRequest {
  id: number;
  op: ScanOp;
  args: unknown[];
}
export type ScanReply = { id: number; value: unknown } | { id: number; error: string };

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  inline: () => unknown;
}

/** A worker idle this long is stopped (it holds a connection and a V8 isolate). */
const IDLE_MS = 30_000;

export class ScanReader {
  private worker: Worker | null = null;
  private broken = false;
  private nextId = 0;
  private readonly pending = new Map<number, Pending>();
  private idleTimer: NodeJS.Timeout | null = null;
  /** Told when a worker starts (true) and when it is gone (false): checkpoint.ts. */
  onAlive: ((alive: boolean) => void) | null = null;

  /** Whether a worker runs now (it costs ~15 MiB of RSS while it does). */
  get alive(): boolean {
    return this.worker !== null;
  }

  private setWorker(w: Worker | null): void {
    const was = this.worker !== null;
    this.worker = w;
    if (was !== (w !== null)) this.onAlive?.(w !== null);
  }

  /**
   * `file`: the database file; null runs every query inline. `script`: the worker's
   * module (tests inject a slow one).
   */
  constructor(
    private readonly file: string | null,
    private readonly script: URL = new URL('./scan-worker.js', import.meta.url),
  ) {}

  run<T>(op: ScanOp, args: unknown[], inline: () => T): Promise<T> {
    const w = this.broken || this.file === null ? null : this.start();
    if (!w) return Promise.resolve(inline());
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, inline });
      w.postMessage({ id, op, args } satisfies ScanRequest);
    });
  }

  /**
   * Abandons queries in progress: a count at a million blobs takes a minute, and shutdown
   * must not wait for it (nor rerun it inline). The worker's own connection lets the main
   * one close at once; terminate() only takes effect once the worker's current native
   * query returns, so it is not awaited.
   */
  close(): Promise<void> {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    const w = this.worker;
    this.setWorker(null);
    this.broken = true; // closed: anything later runs inline (and fails on the closed db)
    if (w) void w.terminate().catch(() => undefined);
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new Error('metadata store closed during a whole-store scan'));
    }
    return Promise.resolve();
  }

  private start(): Worker | null {
    if (this.worker) return this.worker;
    try {
      const w = new Worker(this.script, { workerData: { file: this.file } });
      w.unref();
      w.on('message', (r: ScanReply) => this.settle(r));
      w.on('error', () => this.fail(w));
      w.on('exit', () => this.fail(w));
      this.setWorker(w);
      return w;
    } catch {
      this.broken = true;
      return null;
    }
  }

  private settle(r: ScanReply): void {
    const p = this.pending.get(r.id);
    if (!p) return;
    this.pending.delete(r.id);
    if ('error' in r) p.reject(new Error(r.error));
    else p.resolve(r.value);
    if (this.pending.size === 0 && this.worker) {
      const w = this.worker;
      this.idleTimer = setTimeout(() => {
        if (this.worker !== w || this.pending.size > 0) return;
        this.setWorker(null); // the next query starts a fresh one
        void w.terminate();
      }, IDLE_MS);
      this.idleTimer.unref();
    }
  }

  /** The worker died (or was stopped idle): queries it still owed run inline. */
  private fail(w: Worker): void {
    if (this.worker === w) {
      this.setWorker(null);
      this.broken = true;
    }
    this.failPending();
  }

  private failPending(): void {
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      try {
        p.resolve(p.inline());
      } catch (e) {
        p.reject(e as Error);
      }
    }
  }
}
