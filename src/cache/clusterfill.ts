/**
 * One upstream fetch per digest across replicas on a shared store (issue #13). A replica
 * that misses a digest wraps its upstream FillSource here:
 *
 * - It takes the lease `fill:<digest>` (Coordination; PostgreSQL with the shared driver),
 *   renews it every third of `cluster.fillLeaseTtl` while filling and releases it when the
 *   fill committed or failed. Its owner string names the replica and its internal URL.
 * - If another replica holds the lease, it does not go upstream: it streams that
 *   replica's fill over GET /internal/fills/<digest> (bearer `cluster.secret`; time to
 *   first byte like the owner's), or, when the owner cannot be reached or its fill ended,
 *   reads the blob from the object store once committed.
 * - A resume (the owner died mid-stream: its connection broke) comes back here: the lease
 *   expires one TTL after the last renewal, one waiting replica takes it and resumes from
 *   the upstream with Range at the offset it had reached.
 *
 * Integrity: the bytes from a peer go into an ordinary local BlobFill, which hashes
 * everything it receives and withholds the last byte from its clients until the digest
 * matched (fill.ts), on top of the owner's own withholding. So a non-owner verifies
 * locally, whatever the peer sends; a broken peer stream aborts transfers, never passes
 * wrong bytes. A non-owner writes nothing to the object store (cache/relaystage.ts: a local
 * spool for its slow readers; its commit waits for the owner's), unless the owner dies
 * and this replica takes the lease: then it uploads what it spooled and commits.
 *
 * The local driver never gets here (one replica: the FillManager's single flight is all).
 */
import { randomUUID, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { Agent, request } from 'undici';
import type { ClusterConfig } from '../config/schema.js';
import { RegistryError } from '../registry/errors.js';
import type { Digest } from '../registry/names.js';
import { type Coordination, keepRenewed } from '../storage/coordination.js';
import type { BlobBody, BlobStore } from '../storage/ports.js';
import type { BlobFill, FillManager, FillSource } from './fill.js';
import { ClusterStage } from './relaystage.js';

/** Path of the internal endpoint (http/internal.ts) on every replica. */
export const INTERNAL_FILLS_PATH = '/internal/fills';
/** How long a miss waits for another replica's fill before answering 503 (clients retry). */
const WAIT_FOR_OWNER_MS = 5 * 60_000;
/** Poll interval while waiting for a lease or a commit (capped by a quarter TTL). */
const POLL_MS = 200;
/** A peer that sends nothing for this long is treated as gone (the lease decides who resumes). */
const PEER_BODY_TIMEOUT_MS = 60_000;
const PEER_CONNECT_TIMEOUT_MS = 5_000;
/**
 * Idle peer connections are kept this long (undici's default is 4 s) when the peer does
 * not say (a replica does: `Keep-Alive: timeout=` from http.keepAliveTimeout, 65 s by
 * default, which undici follows minus its safety margin). Peer fills come in bursts
 * minutes apart; a new connection per burst would put its set-up on the time to first byte.
 */
const PEER_IDLE_MS = 60_000;

type Opened = Awaited<ReturnType<FillSource['open']>>;

/** `<replica id> <internal URL or ->`: who holds a fill lease and where to stream it from. */
export function parseFillOwner(owner: string): { replica: string; url: string | null } {
  const [replica = '', url = '-'] = owner.split(' ', 2);
  return { replica, url: /^https?:\/\//.test(url) ? url : null };
}

export class ClusterFills {
  /** A new id per process: a restarted replica never inherits its predecessor's leases. */
  readonly replicaId = randomUUID();
  private advertised: string | null;
  private readonly agent = new Agent({ connect: { timeout: PEER_CONNECT_TIMEOUT_MS }, bodyTimeout: PEER_BODY_TIMEOUT_MS, keepAliveTimeout: PEER_IDLE_MS });
  private readonly secret: Buffer | null;
  private readonly ttlMs: number;
  private refusedWarned = false;

  constructor(
    private readonly coordination: Coordination,
    private readonly blobs: BlobStore,
    private readonly fills: FillManager,
    cluster: ClusterConfig,
    private readonly log: Logger,
    /** Local directory for relayed fills' spool files (never the object store). */
    private readonly spoolDir: string = path.join(os.tmpdir(), `regmirror-relay-${process.pid}`),
  ) {
    this.advertised = cluster.advertiseUrl;
    this.secret = cluster.secret === null ? null : Buffer.from(cluster.secret);
    this.ttlMs = cluster.fillLeaseTtlMs;
  }

  /** The listen address, when `cluster.advertiseUrl` is not set (known only once listening). */
  listening(url: string): void {
    this.advertised ??= url;
    // One throwaway request to ourselves through the peer agent (GET /v2/, connection closed
    // after it): undici compiles its HTTP parser (WebAssembly) on a process's first
    // connection, ~30-100 ms on the serving thread that otherwise landed on the first
    // relayed fill's time to first byte (bench/results/ttfb-nonowner-4.md). Not the internal
    // endpoint, so its access lines stay peer fills only. Best effort.
    void request(`${url}/v2/`, { dispatcher: this.agent, headers: { connection: 'close' } })
      .then((res) => res.body.dump())
      .catch(() => undefined);
  }

  get owner(): string {
    return `${this.replicaId} ${this.advertised ?? '-'}`;
  }

  /** The internal endpoint's check, in constant time: `ok`, or which 401/403 to answer. */
  authorize(header: string | undefined): 'ok' | 'absent' | 'wrong' {
    const m = /^Bearer (\S+)$/i.exec(header ?? '');
    if (!m || !this.secret) return 'absent';
    const given = Buffer.from(m[1]!);
    return given.length === this.secret.length && timingSafeEqual(given, this.secret) ? 'ok' : 'wrong';
  }

  /** This replica's fill of `digest` with a known size, for a peer to stream; null: none here. */
  async servable(digest: Digest): Promise<BlobFill | null> {
    const fill = this.fills.inFlight(digest);
    if (!fill) return null;
    const t0 = performance.now();
    await fill.ready.catch(() => undefined);
    this.log.debug({ digest, state: fill.state, waitedMs: +(performance.now() - t0).toFixed(1) }, 'cluster fill timing: peer request served');
    // Unknown length: the peer cannot announce one; it waits for the commit instead.
    return fill.state === 'streaming' && fill.size !== null ? fill : null;
  }

  /** `upstream`, fetched only by the replica holding the digest's fill lease (see the top). */
  source(digest: Digest, upstream: FillSource): FillSource {
    const name = `fill:${digest}`;
    let held: { stop(): void } | null = null;
    let stage: ClusterStage | null = null;
    /** Where the bytes of this open go: upstream bytes are stored here, others only relayed. */
    const route = (opened: Opened, fromUpstream: boolean): Opened => {
      if (!fromUpstream) stage?.useRelay();
      else if (stage?.mode === 'relay') stage.mustStore = true; // took over from a dead owner
      else stage?.useStore();
      return opened;
    };
    const ourLease = async (offset: number): Promise<Opened> => {
      const stored = await this.openStored(digest, offset);
      return stored ? route(stored, false) : route(await upstream.open(offset), true);
    };
    return {
      stage: (opts) => (stage = new ClusterStage(this.blobs, opts, this.spoolDir, { awaitOwnerCommit: (d) => this.awaitOwnerCommit(d, name, () => (held ??= this.heartbeat(name, this.owner, digest))) })),
      open: async (offset) => {
        // Our lease: resume from the upstream as before (unless the blob got committed meanwhile).
        if (held) return ourLease(offset);
        const deadline = Date.now() + WAIT_FOR_OWNER_MS;
        // Where a non-owner's time to first byte goes (debug level; bench/ha.mjs BENCH_HA_LOG_LEVEL).
        const t0 = performance.now();
        const lap = (step: string) => this.log.debug({ digest, step, ms: +(performance.now() - t0).toFixed(1) }, 'cluster fill timing');
        for (;;) {
          const owner = this.owner;
          // One round trip: the lease, or who holds it.
          const claim = await this.coordination.claimLease(name, owner, this.ttlMs);
          lap(claim.grant ? 'lease acquired' : 'lease refused');
          if (claim.grant) {
            held = this.heartbeat(name, owner, digest);
            // The previous holder may have committed and released it since our lookup missed
            // (one row lookup): serve that instead of fetching the blob a second time.
            return ourLease(offset);
          }
          const holder = claim.holder ?? (await this.coordination.leaseHolder(name));
          const url = holder ? parseFillOwner(holder.owner).url : null;
          if (url && this.secret) {
            const peer = await this.openPeer(url, digest, offset).catch((err: unknown) => {
              this.log.info({ digest, peer: url, err: (err as Error).message }, 'cannot stream the fill from its owner; waiting for its commit');
              return null;
            });
            lap(peer ? 'peer answered' : 'peer has no fill');
            if (peer) return route(peer, false);
          }
          // The owner cannot be reached or its fill ended: the blob may be in the store now.
          const stored = await this.openStored(digest, offset);
          if (stored) return route(stored, false);
          if (Date.now() > deadline) throw new RegistryError('UNAVAILABLE', 'another replica is still fetching this blob; retry', { status: 503 });
          if (holder) await new Promise((r) => setTimeout(r, Math.min(POLL_MS, this.ttlMs / 4)));
        }
      },
      settled: () => held?.stop(),
    };
  }

  close(): Promise<void> {
    return this.agent.close();
  }

  /** Remove spool files a previous process of this replica left behind (they are never committed). */
  async recover(): Promise<void> {
    await fs.rm(this.spoolDir, { recursive: true, force: true });
    await fs.mkdir(this.spoolDir, { recursive: true, mode: 0o700 });
  }

  /**
   * A relayed fill verified its bytes: wait for the owner's commit of them. When nobody
   * holds the lease any more without the blob stored (the owner failed or died after
   * sending everything), take it (`take`: renewed until the fill settles) and commit here.
   */
  private async awaitOwnerCommit(digest: Digest, name: string, take: () => void): Promise<'stored' | 'store'> {
    const deadline = Date.now() + WAIT_FOR_OWNER_MS;
    for (;;) {
      if (await this.blobs.stat(digest)) return 'stored';
      const holder = await this.coordination.leaseHolder(name);
      if (!holder) {
        const claim = await this.coordination.claimLease(name, this.owner, this.ttlMs);
        if (claim.grant) {
          // Ours now: renewed until the fill settles, then released, like an owner's.
          take();
          // The owner may have committed between the stat and the claim.
          if (await this.blobs.stat(digest)) return 'stored';
          this.log.info({ digest }, 'the fill owner ended without committing; committing the relayed copy here');
          return 'store';
        }
      }
      if (Date.now() > deadline) throw new RegistryError('UNAVAILABLE', 'the replica filling this blob did not commit it; retry', { status: 503 });
      await new Promise((r) => setTimeout(r, Math.min(POLL_MS, this.ttlMs / 4)));
    }
  }

  /** Renew every third of the TTL while the fill runs; release when it ends. */
  private heartbeat(name: string, owner: string, digest: Digest): { stop(): void } {
    let warnedLost = false;
    const held = keepRenewed(this.coordination, name, owner, this.ttlMs, (err) => {
      if (err) return this.log.warn({ digest, err: err.message }, 'renewing the fill lease failed');
      if (warnedLost) return;
      warnedLost = true;
      // Integrity is unaffected (every replica verifies); another one may fetch too.
      this.log.warn({ digest }, 'fill lease lost (renewal came too late); another replica may fetch this blob too');
    });
    return {
      stop: () => void held.release().catch((err: unknown) => this.log.warn({ digest, err: (err as Error).message }, 'releasing the fill lease failed; it expires by itself')),
    };
  }


  /** The owner's fill from `offset`; null when it has none (404) or refuses us. */
  private async openPeer(base: string, digest: Digest, offset: number): Promise<Opened | null> {
    const res = await request(`${base}${INTERNAL_FILLS_PATH}/${digest}`, {
      method: 'GET',
      dispatcher: this.agent,
      headers: { authorization: `Bearer ${this.secret!.toString()}`, ...(offset > 0 ? { range: `bytes=${offset}-` } : {}) },
    });
    const abort = () => {
      res.body.on('error', () => undefined);
      res.body.destroy();
    };
    const len = Number(res.headers['content-length']);
    if (offset === 0 && res.statusCode === 200 && Number.isSafeInteger(len)) return { size: len, body: res.body, abort, notUpstream: true };
    if (offset > 0 && res.statusCode === 206) return { size: null, body: res.body, abort, notUpstream: true };
    await res.body.dump().catch(() => undefined);
    if ((res.statusCode === 401 || res.statusCode === 403) && !this.refusedWarned) {
      this.refusedWarned = true;
      this.log.warn({ peer: base, status: res.statusCode }, 'a replica refused the cluster secret: give every replica the same cluster.secret');
    }
    return null;
  }

  /** The committed blob from `offset` out of the object store; null while it is not there. */
  private async openStored(digest: Digest, offset: number): Promise<Opened | null> {
    const st = await this.blobs.stat(digest);
    if (!st || offset >= st.size) return st && st.size === 0 ? { size: 0, body: (async function* () {})(), notUpstream: true } : null;
    const body = await this.blobs.open(digest);
    if (!body) return null;
    const abort = () => void body.close().catch(() => undefined);
    return { size: offset === 0 ? st.size : null, body: closing(body, offset, st.size - 1), abort, notUpstream: true };
  }
}

async function* closing(body: BlobBody, start: number, end: number): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of body.stream(start, end)) yield chunk as Buffer;
  } finally {
    await body.close();
  }
}
