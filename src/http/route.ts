/**
 * Parse a `/v2/...` path into an API route. Repository names have any number of
 * components, so the path is read from the right: the trailing `/manifests/<ref>`,
 * `/blobs/<digest>`, `/blobs/uploads/[<id>]`, `/tags/list` or `/referrers/<digest>`
 * fixes where the name ends (protocol.md 1.1).
 *
 * The raw path must not contain percent-escapes: no valid name, tag, digest or upload
 * id needs one, and refusing them closes the `%2e%2e` / `%2f` family of traversal tricks.
 */
export type ApiRoute =
  | { kind: 'base' }
  | { kind: 'catalog' }
  | { kind: 'manifest'; name: string; reference: string }
  | { kind: 'blob'; name: string; digest: string }
  | { kind: 'uploadStart'; name: string }
  | { kind: 'upload'; name: string; id: string }
  | { kind: 'tags'; name: string }
  | { kind: 'referrers'; name: string; digest: string }
  | { kind: 'invalid'; reason: string }
  | { kind: 'unknown' };

export function parseApiPath(rawPath: string): ApiRoute {
  if (!rawPath.startsWith('/v2')) return { kind: 'unknown' };
  const rest = rawPath.slice(3);
  if (rest === '' || rest === '/') return { kind: 'base' };
  if (!rest.startsWith('/')) return { kind: 'unknown' };
  if (/[%\0\\]/.test(rest)) return { kind: 'invalid', reason: 'escaped or control characters in path' };
  if (rest === '/_catalog') return { kind: 'catalog' };
  const segs = rest.slice(1).split('/');
  const n = segs.length;
  const name = (upTo: number) => segs.slice(0, upTo).join('/');
  const at = (i: number) => segs[n + i];
  if (n >= 3 && at(-2) === 'manifests') return { kind: 'manifest', name: name(n - 2), reference: at(-1)! };
  if (n >= 3 && at(-2) === 'tags' && at(-1) === 'list') return { kind: 'tags', name: name(n - 2) };
  if (n >= 3 && at(-2) === 'referrers') return { kind: 'referrers', name: name(n - 2), digest: at(-1)! };
  if (n >= 4 && at(-3) === 'blobs' && at(-2) === 'uploads') {
    const id = at(-1)!;
    return id === '' ? { kind: 'uploadStart', name: name(n - 3) } : { kind: 'upload', name: name(n - 3), id };
  }
  if (n >= 3 && at(-2) === 'blobs' && at(-1) === 'uploads') return { kind: 'uploadStart', name: name(n - 2) };
  if (n >= 3 && at(-2) === 'blobs') return { kind: 'blob', name: name(n - 2), digest: at(-1)! };
  return { kind: 'unknown' };
}
