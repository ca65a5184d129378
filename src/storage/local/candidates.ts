/**
 * Eviction candidates in compact columns (issue #14 item 4). The scan worker (scan.ts)
 * answers a whole pass's candidates, already in eviction order (oldest access first), as
 * a few typed arrays whose buffers are transferred, not cloned: handing ~49,000 candidate
 * objects to the main thread as a structured clone, then mapping and sorting them there,
 * held the event loop for ~200 ms at a million blobs (bench/results/scale/session7-scale4.md).
 * The main thread then makes one small object per candidate as the pass reaches it.
 */
import type { Digest } from '../../registry/names.js';
import type { CandidateList, EvictionCandidate } from '../ports.js';

/** The transferable form: candidate i's digest is digests[ends[i-1] .. ends[i]) (latin1). */
export interface PackedCandidates {
  digests: Uint8Array;
  ends: Uint32Array;
  /** Repository row ids (integers; a double holds any SQLite rowid a store reaches). */
  repos: Float64Array;
  lastAccess: Float64Array;
  /** 0: an image, 1: a loose blob link. */
  kinds: Uint8Array;
}

interface Row {
  repo: number;
  digest: string;
  lastAccess: number;
}

/**
 * Images and loose blobs in one list ordered by last access (ties keep images before
 * loose blobs and each list's own order, as the stable sort of the concatenation did).
 */
export function packCandidates(images: readonly Row[], loose: readonly Row[]): PackedCandidates {
  const n = images.length + loose.length;
  const row = (i: number): Row => (i < images.length ? images[i]! : loose[i - images.length]!);
  const order = Array.from({ length: n }, (_, i) => i);
  order.sort((a, b) => row(a).lastAccess - row(b).lastAccess || a - b);
  let bytes = 0;
  for (let i = 0; i < n; i++) bytes += row(i).digest.length;
  const out: PackedCandidates = {
    digests: new Uint8Array(bytes),
    ends: new Uint32Array(n),
    repos: new Float64Array(n),
    lastAccess: new Float64Array(n),
    kinds: new Uint8Array(n),
  };
  const buf = Buffer.from(out.digests.buffer, out.digests.byteOffset, out.digests.byteLength);
  let at = 0;
  for (let k = 0; k < n; k++) {
    const i = order[k]!;
    const r = row(i);
    // Digests are ASCII (names.ts validates them before any row is written): one byte a char.
    at += buf.write(r.digest, at, 'latin1');
    out.ends[k] = at;
    out.repos[k] = r.repo;
    out.lastAccess[k] = r.lastAccess;
    out.kinds[k] = i < images.length ? 0 : 1;
  }
  return out;
}

/** The buffers to transfer with a PackedCandidates (postMessage's transfer list). */
export function transferList(p: PackedCandidates): ArrayBuffer[] {
  return [p.digests.buffer, p.ends.buffer, p.repos.buffer, p.lastAccess.buffer, p.kinds.buffer] as ArrayBuffer[];
}

/** A CandidateList over the packed columns: one object per candidate, made when asked for. */
export function unpackCandidates(p: PackedCandidates): CandidateList {
  const buf = Buffer.from(p.digests.buffer, p.digests.byteOffset, p.digests.byteLength);
  return {
    length: p.ends.length,
    at(i: number): EvictionCandidate & { kind: 'image' | 'blob' } {
      if (!(i >= 0 && i < p.ends.length)) throw new RangeError(`eviction candidate ${i} of ${p.ends.length}`);
      const start = i === 0 ? 0 : p.ends[i - 1]!;
      return {
        kind: p.kinds[i] === 0 ? 'image' : 'blob',
        repo: p.repos[i]!,
        digest: buf.toString('latin1', start, p.ends[i]!) as Digest,
        lastAccess: p.lastAccess[i]!,
      };
    },
  };
}
