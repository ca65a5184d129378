/** Pure parsers for HTTP `Range` on blob GETs (RFC 9110 §14) and upload `Content-Range`. */

export interface ByteRange {
  start: number;
  end: number; // inclusive
}

/**
 * Parse `Range: bytes=...` against a blob of `size` bytes.
 * Returns null when the header should be ignored (not a bytes range: serve 200),
 * 'unsatisfiable' for 416, or the list of ranges (clamped) to serve.
 */
export function parseRangeHeader(header: string | undefined, size: number): ByteRange[] | 'unsatisfiable' | null {
  if (!header) return null;
  const m = /^\s*bytes\s*=\s*(.+)$/i.exec(header);
  if (!m) return null;
  const out: ByteRange[] = [];
  for (const part of m[1]!.split(',')) {
    const p = part.trim();
    const r = /^(\d*)\s*-\s*(\d*)$/.exec(p);
    if (!r) return null;
    const [, a, b] = r;
    if (a === '' && b === '') return null;
    if (a === '') {
      // Suffix range: the last N bytes.
      const n = Number(b);
      if (n === 0) continue;
      out.push({ start: Math.max(0, size - n), end: size - 1 });
      continue;
    }
    const start = Number(a);
    let end = b === '' ? size - 1 : Number(b);
    if (b !== '' && end < start) return 'unsatisfiable';
    if (start >= size) continue;
    if (end >= size) end = size - 1;
    out.push({ start, end });
  }
  if (out.length === 0) return 'unsatisfiable';
  // Overlapping ranges could ask for the blob many times over in one small header
  // (`bytes=0-,0-,...`): an amplification attack. RFC 9110 14.2 lets a server ignore such
  // a header; the full 200 is always a valid answer, and disjoint ranges never add up to
  // more than the blob.
  const sorted = [...out].sort((x, y) => x.start - y.start);
  if (sorted.some((r, i) => i > 0 && r.start <= sorted[i - 1]!.end)) return null;
  return out;
}

/** Upload `Content-Range: <start>-<end>` (the spec's form has no `bytes ` prefix; tolerate it). */
export function parseContentRange(header: string | undefined): ByteRange | null | 'invalid' {
  if (header === undefined || header === '') return null;
  const m = /^(?:bytes[ =])?(\d+)-(\d+)(?:\/(?:\d+|\*))?$/.exec(header.trim());
  if (!m) return 'invalid';
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end < start) return 'invalid';
  return { start, end };
}

/** The `Range` header of upload responses: `0-<last byte>` (distribution sends 0-0 when empty). */
export function uploadRangeHeader(size: number): Record<string, string> {
  return { Range: `0-${Math.max(0, size - 1)}` };
}
