/**
 * Blob pushes (distribution-spec "Pushing blobs"): the decisions behind
 * POST | PATCH | PUT | GET | DELETE /v2/<name>/blobs/uploads/[<id>]. A POST mounts from
 * another repository when asked and allowed, takes a monolithic body when it names the
 * digest, and otherwise opens a session; chunks go to the upload-session port, whose
 * sessions any process over the same storage can carry on (storage/ports.ts).
 */
import type { Readable } from 'node:stream';
import { RegistryError } from './errors.js';
import { type Digest, type DigestAlgorithm, type RepoName, digestAlgorithm, parseDigest, parseRepoName } from './names.js';
import { parseContentRange, uploadRangeHeader } from './range.js';
import type { BlobStore, UploadState, UploadStore } from '../storage/ports.js';

/** A request body as the handler hands it over; whoever does not use it drains it. */
export interface PushBody {
  stream: Readable;
  /** A body was sent (a non-zero Content-Length, or chunked). */
  present: boolean;
  /** Content-Length, when given. */
  length: number | undefined;
  /** Content-Range of a chunk, when given. */
  contentRange?: string | undefined;
}

export interface StartParams {
  mount: string | undefined;
  from: string | undefined;
  digest: string | undefined;
  algorithm: string | undefined;
  /** May the caller pull from `repo`? Mounting reads the source repository. */
  mayRead(repo: RepoName): Promise<boolean>;
}

export type StartResult = { kind: 'created'; digest: Digest } | { kind: 'session'; session: UploadState };

export interface UploadDeps {
  blobs: BlobStore;
  uploads: UploadStore;
  limits: { maxBlobBytes: number };
  /** Link `digest` into `repo` if `from` links it (cross-repository mount). */
  mountBlob(repo: RepoName, digest: Digest, from: RepoName): boolean;
}

export { uploadRangeHeader } from './range.js';

function drain(body: PushBody): void {
  if (body.present) body.stream.resume();
}

export class UploadService {
  constructor(private readonly deps: UploadDeps) {}

  private get maxBlobBytes(): number {
    const max = this.deps.limits.maxBlobBytes;
    return max > 0 ? max : Number.MAX_SAFE_INTEGER;
  }

  /** POST: a mount, a monolithic push (`digest` given), or a new session. */
  async start(repo: RepoName, p: StartParams, body: PushBody): Promise<StartResult> {
    if (p.mount !== undefined && p.from !== undefined) {
      const d = parseDigest(p.mount);
      let from: RepoName | undefined;
      try {
        from = parseRepoName(p.from);
      } catch {
        from = undefined; // an unusable `from` just means "no mount": fall back to an upload
      }
      if (from && (await p.mayRead(from)) && this.deps.mountBlob(repo, d, from)) {
        drain(body);
        return { kind: 'created', digest: d };
      }
    }
    if (p.digest !== undefined) return { kind: 'created', digest: await this.pushWhole(repo, parseDigest(p.digest), body) };
    drain(body);
    if (p.algorithm !== undefined && p.algorithm !== 'sha256' && p.algorithm !== 'sha512') {
      throw new RegistryError('DIGEST_INVALID', 'unsupported digest algorithm');
    }
    return { kind: 'session', session: await this.deps.uploads.start(repo, (p.algorithm ?? 'sha256') as DigestAlgorithm) };
  }

  /** Monolithic upload: the whole blob in the POST body, staged and committed at once. */
  private async pushWhole(repo: RepoName, digest: Digest, body: PushBody): Promise<Digest> {
    const len = body.length;
    const limit = this.maxBlobBytes;
    if (len !== undefined && len > limit) throw new RegistryError('SIZE_INVALID', `blob exceeds the maximum size of ${limit} bytes`, { status: 413 });
    const stage = this.deps.blobs.stage({ algorithm: digestAlgorithm(digest), maxBytes: limit, ...(len === undefined ? {} : { expectedBytes: len }) });
    await stage.appendStream(body.stream); // a failure drops the stage
    if (stage.digest() !== digest || (len !== undefined && stage.received !== len)) {
      await stage.abort();
      throw stage.digest() !== digest ? new RegistryError('DIGEST_INVALID', undefined, { detail: { expected: digest } }) : new RegistryError('SIZE_INVALID');
    }
    await stage.commit(digest, { repo, provenance: 'pushed' }); // a failure (e.g. SQLITE_FULL) drops the stage
    return digest;
  }

  /** GET: the session of `repo` called `id`, or BLOB_UPLOAD_UNKNOWN. */
  async session(repo: RepoName, id: string): Promise<UploadState> {
    const s = await this.deps.uploads.status(id);
    if (!s || s.repo !== repo) throw new RegistryError('BLOB_UPLOAD_UNKNOWN');
    return s;
  }

  /** PATCH: append a chunk; resolves with the session at its new offset. */
  async append(repo: RepoName, id: string, body: PushBody): Promise<UploadState> {
    const s = await this.session(repo, id);
    return { ...s, offset: await this.appendTo(s, body) };
  }

  /** PUT: append the last chunk, if any, and commit the session as `digest`. */
  async finish(repo: RepoName, id: string, digestParam: string | undefined, body: PushBody): Promise<Digest> {
    const s = await this.session(repo, id);
    if (digestParam === undefined) {
      drain(body);
      throw new RegistryError('DIGEST_INVALID', 'the digest query parameter is required to complete an upload');
    }
    const digest = parseDigest(digestParam);
    if (body.present) await this.appendTo(s, body);
    await this.deps.uploads.finish(id, digest);
    return digest;
  }

  /** DELETE: end the session. */
  async cancel(repo: RepoName, id: string): Promise<void> {
    await this.session(repo, id);
    await this.deps.uploads.cancel(id);
  }

  /**
   * A chunk starts where its Content-Range says (checked against the stored offset) or,
   * without one, at the end; Content-Length, when also given, must agree with the range.
   */
  private async appendTo(s: UploadState, body: PushBody): Promise<number> {
    const cr = parseContentRange(body.contentRange);
    if (cr === 'invalid') {
      body.stream.resume();
      throw new RegistryError('RANGE_INVALID', 'invalid Content-Range', { status: 416, headers: uploadRangeHeader(s.offset) });
    }
    const rangeLength = cr ? cr.end - cr.start + 1 : undefined;
    if (cr && body.length !== undefined && body.length !== rangeLength) {
      body.stream.resume();
      // A chunk at the wrong place is refused as such whatever its length (the store checks
      // the offset first too).
      if (cr.start !== s.offset) throw new RegistryError('RANGE_INVALID', `chunk must start at offset ${s.offset}`, { status: 416, headers: uploadRangeHeader(s.offset) });
      throw new RegistryError('SIZE_INVALID', 'Content-Length does not match Content-Range');
    }
    const length = rangeLength ?? body.length;
    return this.deps.uploads.append(s.id, body.stream, {
      ...(cr ? { offset: cr.start } : {}),
      ...(length === undefined ? {} : { length }),
      maxBytes: this.maxBlobBytes,
    });
  }
}
