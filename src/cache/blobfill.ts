/**
 * A blob fill in progress as its readers see it (BlobFill), and the memory all fills share
 * (FillMemory). The fill itself (upstream body -> stage) is cache/fill.ts.
 *
 * Integrity: readers never receive the final byte before the digest is verified
 * (readable()). Memory: the chunks not yet on disk plus a few recent MiB already written stay
 * in memory for readers that keep up; any offset before the window is in the file.
 */
import { Readable } from 'node:stream';
import type { Digest } from '../registry/names.js';
import type { BlobWriter, PositionalReader } from '../storage/ports.js';

const MiB = 1024 * 1024;
const READ_CHUNK = MiB;
/** At most this many written bytes per fill stay in memory for readers that keep up. */
const RECENT_WINDOW = 4 * MiB;
/**
 * All fills' bytes in memory together: not yet on disk plus the recent windows. One budget
 * for all fills, not one per fill: three concurrent layer fills with a per-fill window
 * (4 MiB written + up to 32 MiB queued for the disk on a busy machine) set the pull-through
 * high-water mark (bench/results/memory/README.md, issue #14 item 3).
 */
export const FILL_MEMORY = 16 * MiB;
/** Each fill may always have this much not yet on disk, whatever the others hold (progress for every fill). */
export const FILL_PENDING_FLOOR = MiB;

/**
 * The budget shared by all fills of one FillManager. Bytes not yet on disk come first (a
 * fill pauses its upstream body past `pendingLimit` until its stage wrote more); recent
 * windows share what is left.
 */
export class FillMemory {
  /** Bytes all fills hold that are not on disk yet. */
  pending = 0;
  /** Fills running now. */
  fills = 0;

  constructor(readonly budget: number = FILL_MEMORY) {}

  /** Beyond this much pending in total a fill holding more than FILL_PENDING_FLOOR waits for its stage. */
  get pendingLimit(): number {
    return (this.budget * 3) / 4;
  }

  /** Written bytes one fill may keep in memory now. */
  windowShare(): number {
    return Math.min(RECENT_WINDOW, Math.max(0, Math.floor((this.budget - this.pending) / Math.max(1, this.fills))));
  }
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

export class BlobFill {
  size: number | null = null;
  /** Bytes on disk (readers never go past this). */
  written = 0;
  /** Set once the digest matched: the last byte may go out before the commit finishes. */
  verified = false;
  state: 'starting' | 'streaming' | 'committed' | 'failed' = 'starting';
  /** Bytes received from the upstream (on disk or queued for it). */
  received = 0;
  /**
   * Recent bytes [recentStart, received) as the chunks arrived: everything not yet on disk
   * plus this fill's share of the window already written (trim()), so recentStart <=
   * written always holds and any offset is either in memory or in the file.
   */
  private recent: Buffer[] = [];
  private recentStart = 0;
  error: Error | null = null;
  /** Resolves once the size is known (upstream answered 200); rejects if it never does. */
  readonly ready: Promise<void>;
  /** Resolves when the blob is committed; rejects when the fill fails. */
  readonly done: Promise<void>;
  /** Made when someone waits: a chunk nobody waits for costs no promise. */
  private tick: Deferred | null = null;
  private settleReady!: (e?: Error) => void;
  private settleDone!: (e?: Error) => void;

  constructor(
    readonly digest: Digest,
    /** Where the bytes go; readers behind the memory window read them back from it. */
    readonly stage: BlobWriter,
    /** Which upstream repository the bytes come from (`<upstream>|<remote name>`). */
    readonly origin: string,
    /** The memory budget shared with the other fills (none: a window of RECENT_WINDOW). */
    private readonly memory: FillMemory | null = null,
  ) {
    this.ready = new Promise<void>((res, rej) => (this.settleReady = (e) => (e ? rej(e) : res())));
    this.done = new Promise<void>((res, rej) => (this.settleDone = (e) => (e ? rej(e) : res())));
    // Nobody may be listening yet; failures are delivered through readers and awaiters.
    this.ready.catch(() => undefined);
    this.done.catch(() => undefined);
  }

  /** A promise for the next state change (bytes written, commit, failure). */
  changed(): Promise<void> {
    return (this.tick ??= deferred()).promise;
  }

  notify(): void {
    const t = this.tick;
    this.tick = null;
    t?.resolve();
  }

  markReady(size: number | null): void {
    this.size = size;
    this.state = 'streaming';
    this.settleReady();
    this.notify();
  }

  fail(e: Error): void {
    this.state = 'failed';
    this.error = e;
    this.settleReady(e);
    this.settleDone(e);
    this.notify();
  }

  commit(): void {
    this.state = 'committed';
    this.settleDone();
    this.notify();
  }

  get memoryStart(): number {
    return this.recentStart;
  }

  /** A chunk arrived from the upstream: readers may have it at once, from memory. */
  accept(chunk: Buffer): void {
    this.recent.push(chunk);
    this.received += chunk.length;
    this.notify();
  }

  /** `bytes` more reached the file: trim the memory window (never past what is on disk). */
  wrote(bytes: number): void {
    this.written += bytes;
    this.trim();
  }

  /**
   * Let written chunks go beyond this fill's share of the memory budget (at most
   * RECENT_WINDOW): bytes not on disk stay, so any offset is in memory or in the file.
   */
  trim(): void {
    const keep = this.memory ? this.memory.windowShare() : RECENT_WINDOW;
    const keepFrom = Math.min(this.written, this.received - keep);
    while (this.recent.length > 1) {
      const first = this.recent[0]!;
      if (this.recentStart + first.length > keepFrom) break;
      this.recent.shift();
      this.recentStart += first.length;
    }
  }

  /** Bytes this fill holds in memory (test and status hook). */
  get memoryBytes(): number {
    return this.received - this.recentStart;
  }

  /**
   * Bytes [pos, limit) that are in the in-memory window, as slices of the received
   * chunks (no copies); empty if `pos` is not in memory (any longer).
   */
  memorySlices(pos: number, limit: number): Buffer[] {
    const out: Buffer[] = [];
    if (pos < this.recentStart || pos >= this.received) return out;
    // Readers that keep up are near the newest chunk: find the one holding `pos` from the
    // end (recentStart + the chunks' lengths = received), not by walking the whole window.
    let i = this.recent.length - 1;
    let off = this.received - this.recent[i]!.length;
    while (off > pos) off -= this.recent[--i]!.length;
    for (; i < this.recent.length && off < limit; i++) {
      const c = this.recent[i]!;
      if (c.length > 0) out.push(c.subarray(Math.max(pos, off) - off, Math.min(c.length, limit - off)));
      off += c.length;
    }
    return out;
  }

  verify(): void {
    this.verified = true;
    this.notify();
  }

  /** Bytes a reader may consume now: everything but the last byte until verified. */
  readable(): number {
    if (this.state === 'committed') return this.written;
    if (this.verified) return this.received;
    return this.size === null ? this.received : Math.min(this.received, this.size - 1);
  }

  /**
   * Stream bytes [start, end] (inclusive) as they land in the file. Blob GETs use
   * sendFillRange (src/http/sendfile.ts) instead; this serves multipart ranges and tests.
   */
  reader(start: number, end: number): Readable {
    const fill = this;
    async function* gen(): AsyncGenerator<Buffer> {
      // Opened only when a reader falls behind the memory window (not on the first-byte path).
      let file: PositionalReader | null = null;
      try {
        let pos = start;
        while (pos <= end) {
          const next = fill.changed();
          const avail = Math.min(fill.readable(), end + 1);
          if (pos < avail) {
            const mem = fill.memorySlices(pos, avail);
            if (mem.length > 0) {
              for (const m of mem) {
                pos += m.length;
                yield m;
              }
              continue;
            }
            // Not in memory: pos < memoryStart <= written, so the file has these bytes.
            const n = Math.min(Math.min(avail, fill.memoryStart) - pos, READ_CHUNK);
            const buf = Buffer.allocUnsafe(n);
            file ??= await fill.openFile();
            const bytesRead = await file.read(buf, n, pos);
            if (bytesRead === 0) throw new Error('blob file shorter than recorded progress');
            pos += bytesRead;
            yield buf.subarray(0, bytesRead);
            continue;
          }
          if (fill.state === 'failed') throw fill.error ?? new Error('fill failed');
          await next;
        }
      } finally {
        await file?.close();
      }
    }
    return Readable.from(gen(), { objectMode: false });
  }

  /**
   * The bytes written so far, or the committed blob once the fill committed (the stage
   * waits for a commit in progress instead of failing; see BlobWriter.reader).
   */
  async openFile(): Promise<PositionalReader> {
    try {
      return await this.stage.reader();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      // The stage is gone without a commit: the fill failed (or is failing); say why.
      await this.done.catch(() => undefined);
      throw this.error ?? e;
    }
  }
}
