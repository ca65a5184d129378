/**
 * One resolver for every client dialect (protocol.md 4.2-4.10). Given the repository
 * path a client asked for and containerd's optional `?ns=`, decide which upstream (if
 * any) serves misses and under which remote repository name. Pure: no I/O.
 *
 * Precedence (first that applies):
 *   1. Namespace prefix (longest first): `/v2/<prefix>/<rest>`; the prefix is stripped.
 *      Its upstream is fixed, `local` (never upstream), or `ns` (continue with 2-5 on <rest>).
 *   2. `?ns=<registry host>` (containerd): that upstream. A host that is not configured
 *      is never dialled.
 *   3. A registry host as the first path component: `/v2/gcr.io/<rest>`.
 *   4. Rewrite rules (reverse of k3s/RKE2 `rewrite`): the first pattern that matches.
 *   5. defaultUpstream, with the path unchanged.
 * After the upstream is chosen, rewrite rules for that upstream apply to the remote
 * name, and Docker Hub's one-component names get `library/`.
 */
import type { Config, NamespaceConfig, UpstreamConfig } from '../config/schema.js';
import { KNOWN_REGISTRIES } from '../config/known.js';

export interface Resolution {
  /** Which rule decided. */
  rule: 'namespace' | 'ns' | 'host-in-path' | 'rewrite' | 'default' | 'local';
  /** The matching namespace prefix, if any. */
  namespace: NamespaceConfig | null;
  upstream: UpstreamConfig | null;
  /** Repository name on the upstream. */
  remoteName: string | null;
  /** Echo as OCI-Namespace when `ns` was used (distribution-spec "Registry Proxying"). */
  ns: string | null;
  /** Set when the request cannot be routed (e.g. `ns` names an unconfigured host). */
  error: string | null;
}

export class Router {
  private readonly byHost = new Map<string, UpstreamConfig>();
  private readonly namespaces: NamespaceConfig[];

  constructor(private readonly config: Pick<Config, 'upstreams' | 'defaultUpstream' | 'namespaces' | 'rewrites'>) {
    for (const u of config.upstreams.values()) {
      this.byHost.set(u.name, u);
      for (const alias of KNOWN_REGISTRIES[u.name]?.aliases ?? []) if (!this.byHost.has(alias)) this.byHost.set(alias, u);
    }
    this.namespaces = [...config.namespaces].sort((a, b) => b.prefix.length - a.prefix.length);
  }

  upstreamByHost(host: string): UpstreamConfig | undefined {
    return this.byHost.get(host.toLowerCase());
  }

  /** Answers by path and `ns`: the rules are fixed for the process, so one never changes (bounded). */
  private readonly memo = new Map<string, Readonly<Resolution>>();

  /** Every request resolves its path (often twice): remembered, as the rules are pure. */
  resolve(path: string, nsParam?: string): Resolution {
    const key = nsParam === undefined ? path : `${path}\0${nsParam}`;
    let r = this.memo.get(key);
    if (r === undefined) {
      r = Object.freeze(this.compute(path, nsParam));
      if (this.memo.size >= 10_000) this.memo.clear();
      this.memo.set(key, r);
    }
    return r;
  }

  private compute(path: string, nsParam?: string): Resolution {
    const ns = nsParam ? nsParam.trim().toLowerCase() : null;
    let rest = path;
    let namespace: NamespaceConfig | null = null;
    for (const n of this.namespaces) {
      if (path.startsWith(`${n.prefix}/`)) {
        namespace = n;
        rest = path.slice(n.prefix.length + 1);
        break;
      }
    }
    const base = { namespace, ns: null as string | null, error: null as string | null };
    if (namespace && namespace.upstream === 'local') return { ...base, rule: 'local', upstream: null, remoteName: null };
    if (namespace && namespace.upstream !== 'ns') {
      const u = this.config.upstreams.get(namespace.upstream)!;
      return { ...base, rule: 'namespace', upstream: u, remoteName: this.remoteName(u, rest) };
    }
    if (ns) {
      const u = this.upstreamByHost(ns);
      if (!u) return { ...base, rule: 'ns', ns, upstream: null, remoteName: null, error: `upstream registry "${ns.slice(0, 255)}" is not configured` };
      return { ...base, rule: namespace ? 'namespace' : 'ns', ns, upstream: u, remoteName: this.remoteName(u, rest) };
    }
    const slash = rest.indexOf('/');
    if (slash > 0) {
      const first = rest.slice(0, slash);
      const u = first.includes('.') || first === 'localhost' ? this.upstreamByHost(first) : undefined;
      if (u) return { ...base, rule: namespace ? 'namespace' : 'host-in-path', upstream: u, remoteName: this.remoteName(u, rest.slice(slash + 1)) };
    }
    for (const r of this.config.rewrites) {
      if (r.pattern.test(rest)) {
        const u = this.config.upstreams.get(r.upstream)!;
        return { ...base, rule: namespace ? 'namespace' : 'rewrite', upstream: u, remoteName: this.libraryName(u, rest.replace(r.pattern, r.replace)) };
      }
    }
    if (this.config.defaultUpstream) {
      const u = this.config.upstreams.get(this.config.defaultUpstream)!;
      return { ...base, rule: namespace ? 'namespace' : 'default', upstream: u, remoteName: this.libraryName(u, rest) };
    }
    return { ...base, rule: 'local', upstream: null, remoteName: null };
  }

  /** Apply the first rewrite rule of `u` that matches, then the library/ rule. */
  private remoteName(u: UpstreamConfig, name: string): string {
    for (const r of this.config.rewrites) {
      if (r.upstream === u.name && r.pattern.test(name)) return this.libraryName(u, name.replace(r.pattern, r.replace));
    }
    return this.libraryName(u, name);
  }

  private libraryName(u: UpstreamConfig, name: string): string {
    return u.libraryPrefix && !name.includes('/') ? `library/${name}` : name;
  }
}
