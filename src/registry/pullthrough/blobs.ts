/**
 * Blob lookups: local first (or stored for another repository, when this one may see
 * it), then the upstream, through a shared fill that clients read while it is written.
 */
import type { BlobFill, FillManager, FillSource } from '../../cache/fill.js';
import type { Resolution } from '../../upstream/routing.js';
import { minimumRate } from '../../upstream/client.js';
import { RegistryError } from '../errors.js';
import type { Digest, RepoName } from '../names.js';
import type { RegistryService } from '../service.js';
import { type BlobAnswer, type Count, type UpstreamRoute, type Upstreams, nsHeaders, originOf, routeOrThrow, upstreamError } from './shared.js';

export class BlobLookups {
  /** Shared storage: the upstream fetched only by the replica holding the fill lease (cache/clusterfill.ts). */
  coordinate: ((digest: Digest, source: FillSource) => FillSource) | null = null;

  constructor(
    private readonly local: RegistryService,
    private readonly upstreams: Upstreams,
    private readonly fills: FillManager,
    private readonly count: Count,
  ) {}

  async find(repo: RepoName, r: Resolution, digest: Digest, head: boolean): Promise<BlobAnswer> {
    const meta = this.local.meta;
    const headers = nsHeaders(r);
    const localSize = await meta.repoBlobSize(repo, digest);
    if (localSize !== undefined) return this.count('blob', 'hit', r, this.localBlob(digest, localSize, headers));
    // Stored for another repository: serve here only if a manifest this repository got
    // from upstream references it, or the upstream confirms it below.
    let stored = await meta.blobSize(digest);
    if (stored !== undefined && (await meta.referencedInRepo(repo, digest))) {
      if (await this.link(repo, digest)) return this.count('blob', 'hit', r, this.localBlob(digest, stored, headers));
      stored = undefined; // evicted since the lookup: as if never stored
    }
    const up = routeOrThrow(r);
    if (!up) throw new RegistryError('BLOB_UNKNOWN', undefined, { detail: { digest } });

    // Joining a fill from the same upstream repository needs no confirmation; a fill
    // for another repository does (digest guessing must not reveal private blobs).
    const fill0 = this.fills.inFlight(digest);
    const inflight = fill0 && fill0.origin !== originOf(up) ? fill0 : undefined;
    if (stored !== undefined || (head && !fill0) || inflight) {
      const res = await this.upstreams.request(up, 'HEAD', `/v2/${up.remoteName}/blobs/${digest}`, { timeoutMs: up.lookupTimeoutMs });
      await res.body.dump();
      if (res.status !== 200) throw upstreamError(res, 'BLOB_UNKNOWN');
      // Re-read: a fill may have committed the blob while the HEAD was in flight.
      const storedNow = stored ?? (await meta.blobSize(digest));
      if (storedNow !== undefined && (await this.link(repo, digest))) {
        return this.count('blob', 'hit', r, this.localBlob(digest, storedNow, headers));
      }
      if (head) {
        const len = Number(res.headers['content-length']);
        if (!Number.isSafeInteger(len)) throw new RegistryError('UNAVAILABLE', 'upstream did not give the blob size', { status: 502 });
        return { size: len, headers, open: null };
      }
    }
    // A request that finds the fill running shares it: counted as `joined`, not a miss.
    this.count('blob', this.fills.inFlight(digest) ? 'joined' : 'miss', r, undefined);
    const fill = this.startFill(repo, up, digest);
    fill.done.then(() => meta.linkBlob(repo, digest, 'cached')).catch(() => undefined);
    await fill.ready;
    if (fill.size === null) {
      // The upstream sent no length: wait for the whole blob, then serve it from disk.
      await fill.done;
      return this.localBlob(digest, fill.written, headers);
    }
    return { size: fill.size, headers, fill, open: (start, end) => fill.reader(start, end) };
  }

  /**
   * Link a stored blob here (cached). False when it was evicted since the lookup; with the
   * disk full the link is skipped and the blob served anyway (true).
   */
  private async link(repo: RepoName, digest: Digest): Promise<boolean> {
    let linked = true;
    await this.upstreams.bestEffort('blob link', async () => (linked = await this.local.meta.linkBlob(repo, digest, 'cached')));
    return linked;
  }

  private localBlob(digest: Digest, size: number, headers: Record<string, string>): BlobAnswer {
    return { size, headers, body: () => this.local.blobs.open(digest), open: (start, end) => this.local.openBlob(digest, start, end) };
  }

  startFill(repo: RepoName, up: UpstreamRoute, digest: Digest, expectedSize?: number): BlobFill {
    const source: FillSource = {
      open: async (offset) => {
        const res = await this.upstreams.request(up, 'GET', `/v2/${up.remoteName}/blobs/${digest}`, offset > 0 ? { range: `bytes=${offset}-` } : {});
        // A trickling upstream fails the fill for good (a RegistryError is not resumed): a
        // new request starts afresh instead of every client waiting on it.
        const release = () => void res.body.dump().catch(() => undefined);
        const body = () => minimumRate(res.body, up.upstream.bodyTimeoutMs, () => new RegistryError('UNAVAILABLE', 'upstream sends the blob too slowly', { status: 503 }));
        if (offset === 0 && res.status === 200) {
          const len = res.headers['content-length'];
          return { size: len === undefined ? null : Number(len), body: body(), abort: release };
        }
        if (offset > 0 && res.status === 206) {
          const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
          if (m && Number(m[1]) === offset) return { size: null, body: body(), abort: release };
        }
        await res.body.dump();
        if (offset > 0) throw new Error(`upstream cannot resume at ${offset} (status ${res.status})`);
        throw upstreamError(res, 'BLOB_UNKNOWN');
      },
    };
    return this.fills.fill(digest, repo, originOf(up), this.coordinate ? this.coordinate(digest, source) : source, expectedSize);
  }
}
