/**
 * Single-flight blob fills. The first miss for a digest starts one upstream download
 * into a temp file; every client (the first one included, and Range requests) reads
 * that growing file, so N concurrent pulls cost one upstream fetch and a client that
 * leaves never cancels or slows the fill (avoids distribution's #3969 and the
 * MultiWriter coupling; style.md (e) 1-2).
 *
 * Integrity: readers never receive the final byte before the digest is verified. On a
 * mismatch the temp file is deleted and every reader's stream errors, so clients see an
 * aborted transfer, never wrong bytes under a good digest.
 *
 * Speed: upstream chunks are queued for the store's stage (which batches the writes, so
 * the upstream never waits for a single one), and the last few MiB written stay in
 * memory, so readers keeping up with the download are served without re-reading the
 * file or allocating; only readers that fall behind read from disk. Chunks are taken from
 * the body's events (ChunkPump) with no promise per chunk unless the stage is behind
 * (bench/results/fill-cpu.md has the profile of where a cold fill's CPU goes).
 *
 * Memory: all fills share one budget (FillMemory in blobfill.ts) for the bytes they hold
 * not yet on disk plus their recent windows; a fill past it waits for its own stage's next
 * write, so three layer fills on a busy disk no longer set the process's high-water mark.
 */
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { BlobFill, FILL_PENDING_FLOOR, FillMemory } from './blobfill.js';
import { RegistryError, insufficientStorage } from '../registry/errors.js';
import { type Digest, type RepoName, digestAlgorithm } from '../registry/names.js';
import type { BlobStore, BlobWriter, StageOptions } from '../storage/ports.js';

/**
 * A body that hands its chunks to a callback (no promise per chunk); a promise returned
 * by the callback pauses the body until it settles. See minimumRate (upstream/client.ts).
 */
export interface ChunkPump {
  pump(onChunk: (chunk: Buffer) => void | Promise<void>): Promise<void>;
}

/** What a fill needs from the upstream: a body from `offset`, and the total size when known. */
export interface FillSource {
  /** `abort` releases a body the fill refuses before reading it (size checks), so its connection is freed. */
  open(offset: number): Promise<{
    size: number | null;
    body: AsyncIterable<Buffer> | (AsyncIterable<Buffer> & ChunkPump);
    abort?: () => void;
    /** The bytes come from another replica or the object store: not upstream traffic (onBytes). */
    notUpstream?: boolean;
  }>;
  /** Called once when the fill committed or failed (a replica's fill lease is released then). */
  settled?(): void;
  /** The stage to fill, when the source decides where the bytes go (cluster relays: cache/relaystage.ts); default the store's. */
  stage?(opts: StageOptions): BlobWriter;
}

export { BlobFill, FillMemory } from './blobfill.js';

function isPump(body: AsyncIterable<Buffer>): body is AsyncIterable<Buffer> & ChunkPump {
  return typeof (body as Partial<ChunkPump>).pump === 'function';
}

const MAX_RESUMES = 3;
/** Upstream byte counts go to onBytes (metrics: label hashing per call) in steps this size. */
const REPORT_BYTES = 1024 * 1024;
/**
 * Stages outside the shared budget (S3 parts, relays; see FillMemory): bytes not yet written
 * beyond which the body waits for the stage's `append` (which applies the stage's own
 * backpressure). Below it appends are not awaited, so a chunk costs no pause and resume of
 * the upstream body; their failures are kept and thrown on the next one.
 */
const STAGE_BACKLOG = 8 * 1024 * 1024;
/**
 * A free-space reading taken when the fill started (while its upstream request is in
 * flight) answers the room check after the response headers if it is at most this old;
 * otherwise the store is asked again. Saves a thread-pool round trip on the first-byte path.
 */
const ROOM_PROBE_MAX_AGE_MS = 1000;

/** Free bytes read at `at`, when fills in total had written `writtenAt` bytes. */
interface RoomProbe {
  free: Promise<number>;
  writtenAt: number;
  at: number;
}

/** A fill in progress, as the status page lists it (read-only copy). */
export interface FillInfo {
  digest: Digest;
  /** The local repository the fill was started for. */
  repository: RepoName;
  /** `<upstream>|<remote name>`. */
  origin: string;
  /** Bytes received from the upstream so far. */
  bytes: number;
  /** Total size, once the upstream announced it. */
  size: number | null;
  startedAt: number;
}

export class FillManager {
  private readonly fills = new Map<Digest, BlobFill>();
  private readonly started = new Map<Digest, { repository: RepoName; at: number }>();
  /** Called with each chunk's size and the fill's origin (`<upstream>|<repo>`); metrics. */
  onBytes: ((origin: string, bytes: number) => void) | null = null;
  /** Bytes all fills have written to their stages (a RoomProbe subtracts what came since). */
  private writtenTotal = 0;
  /** How old a RoomProbe may be and still answer the room check (tests change it). */
  roomProbeMaxAgeMs = ROOM_PROBE_MAX_AGE_MS;
  /** One memory budget for all fills (blobfill.ts): the pull-through high-water mark. */
  readonly memory = new FillMemory();

  constructor(
    private readonly blobs: BlobStore,
    private readonly log: Logger,
    private readonly maxBlobBytes: number,
  ) {}

  inFlight(digest: Digest): BlobFill | undefined {
    return this.fills.get(digest);
  }

  get size(): number {
    return this.fills.size;
  }

  /** Fills in progress, oldest first. */
  list(): FillInfo[] {
    const out: FillInfo[] = [];
    for (const f of this.fills.values()) {
      const s = this.started.get(f.digest);
      if (s) out.push({ digest: f.digest, repository: s.repository, origin: f.origin, bytes: f.received, size: f.size, startedAt: s.at });
    }
    return out.sort((a, b) => a.startedAt - b.startedAt);
  }

  /**
   * Join the fill for `digest`, or start one. `expectedSize` (from a manifest descriptor)
   * is checked against the upstream's length when known.
   */
  fill(digest: Digest, repo: RepoName, origin: string, source: FillSource, expectedSize?: number): BlobFill {
    const existing = this.fills.get(digest);
    if (existing) return existing;
    const opts = { algorithm: digestAlgorithm(digest) };
    const stage = source.stage?.(opts) ?? this.blobs.stage(opts);
    // Only stages that write without waiting for more appends (local) can pause a fill for the
    // shared budget; the others (S3 parts, cluster relays) keep their own bounds and a window each.
    const f = new BlobFill(digest, stage, origin, stage.progress ? this.memory : null);
    this.fills.set(digest, f);
    this.started.set(digest, { repository: repo, at: Date.now() });
    void this.run(f, repo, source, expectedSize).finally(() => {
      this.fills.delete(digest);
      this.started.delete(digest);
      source.settled?.();
    });
    return f;
  }

  /**
   * Refuse a fill that cannot fit (507) before any client got response headers: a client
   * then gets a clear error instead of a transfer aborted when the disk runs full. The
   * bytes other fills still have to write count as taken. Streaming the blob through
   * uncached instead would cost one upstream fetch per client and bypass the digest check
   * that holds back the last byte (README, "Caching rules").
   */
  private async ensureSpace(f: BlobFill, size: number, body: AsyncIterable<Buffer>, probe: RoomProbe | null): Promise<void> {
    let pending = 0;
    for (const other of this.fills.values()) if (other !== f && other.size !== null) pending += Math.max(0, other.size - other.written);
    try {
      if (probe && performance.now() - probe.at <= this.roomProbeMaxAgeMs) {
        // The reading from the fill's start, less what every fill has written since (those
        // bytes were free then); `pending` still counts what other fills have yet to write.
        const room = (await probe.free) - (this.writtenTotal - probe.writtenAt);
        if (size + pending > 0 && room < size + pending) throw insufficientStorage();
      } else await this.blobs.ensureRoom(size + pending);
    } catch (e) {
      // Never read: release the upstream connection. undici reports a destroyed body as an
      // 'error' (AbortError), which must not become an uncaught exception.
      const stream = body as Partial<Pick<Readable, 'on' | 'destroy'>>;
      stream.on?.('error', () => undefined);
      stream.destroy?.();
      throw e;
    }
  }

  private async run(f: BlobFill, repo: RepoName, source: FillSource, expectedSize?: number): Promise<void> {
    const started = Date.now();
    // The stage was created with the fill: its temp file opens while the upstream request
    // is in flight (time to first byte).
    const w = f.stage;
    // The shared budget, for stages that can pause the fill (see fill()); else a dummy.
    const budgeted = w.progress !== undefined;
    const mem = budgeted ? this.memory : new FillMemory();
    /** This fill's share of mem.pending (appended, not yet written). */
    let pending = 0;
    w.onWritten = (bytes) => {
      this.writtenTotal += bytes;
      const d = Math.min(bytes, pending);
      pending -= d;
      mem.pending -= d;
      f.wrote(bytes);
      if (!budgeted) return;
      // Bytes reaching the disk free budget for the other fills' windows too; and a fill
      // whose pending grew trims the others' windows here rather than at their next write.
      for (const other of this.fills.values()) if (other !== f) other.trim();
    };
    // Read while the upstream request is in flight (not after its headers, on the first-byte path).
    const probe: RoomProbe | null = this.blobs.freeBytes ? { free: this.blobs.freeBytes(), writtenAt: this.writtenTotal, at: performance.now() } : null;
    probe?.free.catch(() => undefined); // a failed reading is seen by ensureSpace
    let stageReady = false;
    let unreported = 0;
    let fromUpstream = true;
    const report = () => {
      if (unreported > 0) this.onBytes?.(f.origin, unreported);
      unreported = 0;
    };
    let appendError: unknown = null;
    const noteAppendError = (e: unknown) => void (appendError ??= e);
    // One upstream chunk: to readers at once (memory window), then hashed and queued for
    // the stage (append queues synchronously: "hashed now"); a returned promise pauses the body.
    const take = (chunk: Buffer): Promise<void> | undefined => {
      if (appendError) throw appendError;
      if (f.size !== null && w.received + chunk.length > f.size) throw new RegistryError('BLOB_UNKNOWN', 'upstream sent more bytes than announced', { status: 502 });
      if (fromUpstream && (unreported += chunk.length) >= REPORT_BYTES) report();
      if (!w.failed) f.accept(chunk);
      const appended = w.append(chunk);
      pending += chunk.length;
      mem.pending += chunk.length;
      f.trim(); // this fill's window gives way as bytes not on disk take the budget
      // All fills together hold too much not yet on disk: wait for this stage's next write
      // (it is writing: it has more than the floor queued). Stages without progress() (S3
      // parts, relays) bound their own memory through append's backpressure.
      if (budgeted && pending > FILL_PENDING_FLOOR && mem.pending > mem.pendingLimit) {
        appended.catch(noteAppendError);
        return w.progress!();
      }
      if (w.received - w.written > STAGE_BACKLOG) return appended;
      appended.catch(noteAppendError);
      return undefined;
    };
    mem.fills++;
    try {
      let resumes = 0;
      for (;;) {
        let body: AsyncIterable<Buffer>;
        let opened: Awaited<ReturnType<FillSource['open']>> | null = null;
        try {
          opened = await source.open(w.received);
          fromUpstream = opened.notUpstream !== true;
          if (!stageReady) {
            await w.flush(); // surfaces a temp file that could not be created
            stageReady = true;
          }
          body = opened.body;
          if (f.state === 'starting') {
            const size = opened.size ?? expectedSize ?? null;
            if (expectedSize !== undefined && opened.size !== null && opened.size !== expectedSize) {
              throw new RegistryError('BLOB_UNKNOWN', 'upstream blob size differs from the manifest descriptor', { status: 502 });
            }
            if (size !== null && size > this.maxBlobBytes) throw new RegistryError('SIZE_INVALID', 'blob exceeds the configured maximum size', { status: 502 });
            if (size !== null) await this.ensureSpace(f, size, opened.body, probe);
            f.markReady(size);
          }
        } catch (e) {
          opened?.abort?.();
          if (f.state === 'starting' || resumes >= MAX_RESUMES) throw e;
          resumes++;
          this.log.warn({ digest: f.digest, offset: f.written, err: (e as Error).message }, 'resume failed, retrying');
          continue;
        }
        try {
          if (isPump(body)) await body.pump(take);
          else for await (const chunk of body) await take(chunk);
          if (f.size === null || w.received === f.size) break;
          throw new Error(`upstream body ended early at ${w.received} of ${f.size} bytes`);
        } catch (e) {
          // A failed local write (ENOSPC) is no upstream break: resuming cannot help.
          if (e instanceof RegistryError || w.failed || resumes >= MAX_RESUMES || f.size === null) throw e;
          resumes++;
          this.log.warn({ digest: f.digest, offset: f.written, err: (e as Error).message }, 'upstream broke mid-blob; resuming with Range');
        }
      }
      if (appendError) throw appendError;
      if (w.digest() !== f.digest) {
        throw new RegistryError('DIGEST_INVALID', 'upstream content does not match its digest', { status: 502, detail: { expected: f.digest } });
      }
      // Verified bytes may be served in full now (the tail is still in memory); durability
      // (write, fsync, move into place, row) follows.
      f.verify();
      report();
      await w.commit(f.digest, { repo, provenance: 'cached' });
      f.commit();
      this.log.info({ digest: f.digest, bytes: f.written, ms: Date.now() - started, resumes }, 'blob cached');
    } catch (e) {
      report();
      const err = e instanceof Error ? e : new Error(String(e));
      if (err instanceof RegistryError && err.code === 'DIGEST_INVALID') {
        const from = fromUpstream ? 'upstream' : 'peer replica or object store';
        this.log.error({ digest: f.digest, bytes: f.written, from }, `${fromUpstream ? 'upstream' : 'cluster'} integrity error: digest mismatch, nothing stored`);
      }
      else this.log.warn({ digest: f.digest, bytes: f.written, err: err.message }, 'blob fill failed');
      await w.abort().catch(() => undefined);
      f.fail(err);
    } finally {
      mem.pending -= pending;
      pending = 0;
      mem.fills--;
    }
  }
}
