/**
 * WAL checkpoints off the event loop (issue #14 item 4). SQLite's automatic checkpoint runs
 * inside the COMMIT that takes the WAL past 1,000 pages, on the connection that committed:
 * here the serving thread, which then waits for the copy into the database file and its
 * fsync. In an eviction pass at a million blobs that was 60% of the units' time and every
 * unit over 100 ms (one of 800 ms): with it off, units 4.7 s -> 1.8 s, worst 801 -> 70 ms
 * (bench/results/scale/session8-evict2.md).
 *
 * So while the scan worker runs (eviction's scans start it), the main connection does not
 * checkpoint itself (`wal_autocheckpoint = 0`); a timer looks at the WAL file's size and,
 * past `limitBytes`, has the worker's connection run a PASSIVE checkpoint (it never
 * blocks the writer). When the worker stops, SQLite's own checkpoints are back.
 * `journal_size_limit` truncates the WAL back to `limitBytes` when the writer restarts it
 * after a complete checkpoint, so "bigger than the limit" means "grown since". A worker
 * that dies with a checkpoint pending has it run inline, as SQLite's own would have.
 * A checkpoint is a query: it keeps the worker from its idle stop while writes go on.
 */
import fs from 'node:fs/promises';
import type Database from 'better-sqlite3';
import type { ScanReader } from './scan.js';

export interface CheckpointOptions {
  /** WAL size that asks for a checkpoint; also the size a restarted WAL is cut back to. */
  limitBytes?: number;
  /** How often the WAL's size is looked at. */
  everyMs?: number;
}

/** SQLite's default autocheckpoint threshold: 1,000 pages of 4 KiB. */
const LIMIT_BYTES = 4 * 1024 * 1024;
const EVERY_MS = 250;
/** SQLite's default `wal_autocheckpoint`, back while no worker runs. */
const AUTO_PAGES = 1000;

export class Checkpointer {
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  /** WAL size when the last checkpoint ran: unchanged means nothing new to copy. */
  private doneAt = -1;
  /** Checkpoints asked for (tests). */
  runs = 0;
  private readonly limit: number;

  constructor(
    private readonly db: Database.Database,
    private readonly scans: ScanReader,
    opts: CheckpointOptions = {},
  ) {
    this.limit = opts.limitBytes ?? LIMIT_BYTES;
    db.pragma(`journal_size_limit = ${this.limit}`);
    // Only while the worker runs anyway (an eviction pass's scans start it; it stops 30 s
    // after its last query): starting one just for checkpoints would add its ~15 MiB of
    // RSS to every process that writes (issue #14 item 3). Otherwise SQLite's own, as before.
    scans.onAlive = (alive) => {
      if (db.open) db.pragma(`wal_autocheckpoint = ${alive ? 0 : AUTO_PAGES}`);
    };
    this.timer = setInterval(() => void this.check(), opts.everyMs ?? EVERY_MS);
    this.timer.unref();
  }

  private async check(): Promise<void> {
    if (this.running || !this.db.open || !this.scans.alive) return;
    this.running = true;
    try {
      const size = await fs.stat(`${this.db.name}-wal`).then(
        (s) => s.size,
        () => 0,
      );
      if (size <= this.limit || size === this.doneAt) return;
      this.runs++;
      await this.scans.run('checkpoint', [], () => this.db.pragma('wal_checkpoint(PASSIVE)'));
      this.doneAt = size;
    } catch {
      // Closed meanwhile, or busy: the next look tries again.
    } finally {
      this.running = false;
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
