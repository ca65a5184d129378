/**
 * k3s/RKE2 `registries.yaml` (formats.md §7; the RKE2 private-registry guide's shape):
 * `mirrors.<upstream>.endpoint` is the mirror for every upstream (k3s writes hosts.toml
 * for its containerd, so `?ns=<registry>` routes each request), `rewrite` where a
 * configured `rewrites[]` rule can be inverted, and `configs.<mirror host>` with `tls.ca_file`
 * and a commented `auth` placeholder (never credentials).
 *
 * regmirror's `rewrites[]` map the path a client sends to the upstream's name (the reverse
 * of a k3s `rewrite`, which maps the image's name to the mirror path). Only the literal form
 * `^<a>(.*)` -> `<b>$1` has an exact inverse (`^<b>(.*)` -> `<a>$1`); any other rule is
 * listed as a comment: nodes then pull by the image's own name, which the mirror routes
 * without that rule.
 */
import type { Config, RewriteConfig } from '../../config/schema.js';
import { type ClientConfigOptions, type ClientFiles, quote, sortedUpstreams } from './common.js';

/** A regex source that is a plain literal (escaped punctuation allowed) -> the literal, else null. */
function regexLiteral(src: string): string | null {
  let out = '';
  for (let i = 0; i < src.length; i++) {
    const c = src[i]!;
    if (c === '\\') {
      const next = src[i + 1];
      if (next === undefined || !/[./\-_:@]/.test(next)) return null;
      out += next;
      i++;
    } else if (/[A-Za-z0-9/_\-:@]/.test(c)) {
      out += c;
    } else {
      return null;
    }
  }
  return out;
}

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** The k3s rewrite `[pattern, replacement]` that this rule undoes, or null when there is none. */
export function invertRewrite(r: RewriteConfig): [string, string] | null {
  if (r.pattern.flags.replace(/[gu]/g, '') !== '') return null;
  const m = /^\^(.*)\(\.\*\)\$?$/.exec(r.pattern.source);
  const sent = m ? regexLiteral(m[1]!) : null;
  if (sent === null || !r.replace.endsWith('$1')) return null;
  const name = r.replace.slice(0, -2);
  if (name.includes('$') || !/^[A-Za-z0-9/_.\-:@]*$/.test(name)) return null;
  return [`^${escapeRegex(name)}(.*)`, `${sent}$1`];
}

export function k3sFiles(config: Config, mirror: URL, opts: ClientConfigOptions): ClientFiles {
  const lines = ['# /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/registries.yaml)', 'mirrors:'];
  const notInverted: string[] = [];
  for (const up of sortedUpstreams(config)) {
    lines.push(`  ${quote(up.name)}:`, `    endpoint:`, `      - ${quote(mirror.origin)}`);
    const rewrites: Array<[string, string]> = [];
    config.rewrites.forEach((r, i) => {
      if (r.upstream !== up.name) return;
      const inv = invertRewrite(r);
      if (inv) rewrites.push(inv);
      else notInverted.push(`# rewrites[${i}] (${r.pattern.source} -> ${r.replace}) has no exact k3s inverse; ${up.name} images are pulled by their own name.`);
    });
    if (rewrites.length > 0) {
      // k3s applies these to the repository name (not the tag), for the mirror only; the mirror's rule maps it back.
      lines.push('    rewrite:', ...rewrites.map(([p, s]) => `      ${quote(p)}: ${quote(s)}`));
    }
  }
  const auth = ['# If the mirror requires a login (auth.rules):', '# auth:', '#   username: "<user>"', '#   password: "<password>"'];
  if (opts.ca) {
    lines.push('configs:', `  ${quote(mirror.host)}:`, '    tls:', `      ca_file: ${quote(opts.ca)}`, ...auth.map((l) => `    ${l}`));
  } else {
    lines.push(auth[0]!, '# configs:', `#   ${quote(mirror.host)}:`, '#     auth:', '#       username: "<user>"', '#       password: "<password>"');
  }
  lines.push(...notInverted);
  return { 'registries.yaml': `${lines.join('\n')}\n` };
}
