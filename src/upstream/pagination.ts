/**
 * Following an upstream's `Link: <...>; rel="next"` pagination (distribution-spec tags
 * list and referrers) without letting the upstream send the mirror anywhere else.
 */

/** Whether Link parameters (`; rel="next"; type=...`) name the relation `next`. */
function isNextRel(params: string): boolean {
  for (const p of params.split(';')) {
    const m = /^\s*rel\s*=\s*"?([^"]*)"?\s*$/i.exec(p);
    if (m) return m[1]!.toLowerCase().split(/\s+/).includes('next');
  }
  return false;
}

/** The target of the `rel="next"` link in a Link header (RFC 8288), if any. */
export function nextLink(header: string | string[] | undefined): string | null {
  for (const value of Array.isArray(header) ? header : header ? [header] : []) {
    for (const m of value.matchAll(/<([^>]*)>([^,]*)/g)) {
      if (isNextRel(m[2]!)) return m[1]!;
    }
  }
  return null;
}

/**
 * The path (for UpstreamClient.request) of a next page, or null when the link leaves the
 * upstream: it must resolve to one of the configured endpoints and to the same path (only
 * the query may change), so an upstream cannot point the mirror elsewhere.
 */
export function nextPagePath(link: string, pageUrl: string, endpoints: readonly string[], path: string): string | null {
  let u: URL;
  try {
    u = new URL(link, pageUrl);
  } catch {
    return null;
  }
  for (const e of endpoints) {
    const base = new URL(e);
    if (u.origin === base.origin && u.pathname === `${base.pathname.replace(/\/+$/, '')}${path}`) return `${path}${u.search}`;
  }
  return null;
}
