/**
 * Parse `WWW-Authenticate` (RFC 9110 §11.6.1): several challenges in one header or in
 * several headers, quoted values containing commas, any capitalisation of the scheme.
 * Modelled on distribution's internal/client/auth/challenge tokenizer.
 */
export interface Challenge {
  scheme: string; // lower-case: 'bearer' | 'basic' | ...
  params: Record<string, string>; // lower-case keys
}

export function parseChallenges(header: string | string[] | undefined): Challenge[] {
  if (header === undefined) return [];
  const out: Challenge[] = [];
  for (const h of Array.isArray(header) ? header : [header]) parseOne(h, out);
  return out;
}

function parseOne(s: string, out: Challenge[]): void {
  let i = 0;
  const n = s.length;
  const skipWs = () => {
    while (i < n && (s[i] === ' ' || s[i] === '\t')) i++;
  };
  const token = () => {
    const start = i;
    while (i < n && /[!#$%&'*+\-.^_`|~0-9A-Za-z/:]/.test(s[i]!)) i++;
    return s.slice(start, i);
  };
  let current: Challenge | null = null;
  while (i < n) {
    skipWs();
    if (s[i] === ',') {
      i++;
      continue;
    }
    const start = i;
    const word = token();
    if (!word) {
      i++; // skip junk
      continue;
    }
    skipWs();
    if (s[i] === '=' && current) {
      i++;
      skipWs();
      let value = '';
      if (s[i] === '"') {
        i++;
        while (i < n && s[i] !== '"') {
          if (s[i] === '\\' && i + 1 < n) i++;
          value += s[i];
          i++;
        }
        i++; // closing quote
      } else {
        const vs = i;
        while (i < n && s[i] !== ',' && s[i] !== ' ') i++;
        value = s.slice(vs, i);
      }
      current.params[word.toLowerCase()] = value;
    } else {
      // A new scheme. (A token68 after the scheme is ignored; registries do not use it.)
      void start;
      current = { scheme: word.toLowerCase(), params: {} };
      out.push(current);
    }
  }
}
