/**
 * Client configuration generated from the upstream table, so nodes are pointed at the
 * mirror by the same table that routes their requests (no hand-kept hosts.toml per
 * registry; anchors.md §10 idea 2):
 *
 * - containerd `config_path` (`/etc/containerd/certs.d/<registry>/hosts.toml`): one file
 *   per upstream; containerd adds `?ns=<registry>` to every mirror request, which routes
 *   it. With `namespace`, the mirror URL carries `/v2/<prefix>` + `override_path`
 *   (Anthos-style; the namespace must route by `ns`).
 * - containerd's legacy CRI form (`containerd-legacy`, containerd 1.x `config.toml`):
 *   `registry.mirrors."<upstream>".endpoint = [mirror]` per upstream and
 *   `registry.configs."<mirror host>".tls.ca_file`. Only the CRI plugin reads it; an
 *   endpoint path is used verbatim (no `/v2` added, checked with containerd 1.6), so the
 *   namespace form is `<mirror>/v2/<prefix>`; without a path containerd uses `/v2`.
 *   Credentials for the mirror go under `configs."<mirror host>".auth`, written only as a
 *   commented placeholder.
 * - k3s/RKE2 `registries.yaml` (clientconfig/k3s.ts): a mirror entry per upstream (k3s writes
 *   hosts.toml for its containerd, so `?ns=` routes here too), inverted `rewrites[]`, `configs`.
 * - OpenShift ImageDigestMirrorSet / ImageTagMirrorSet (clientconfig/openshift.ts) and the
 *   Anthos bare-metal `registryMirrors` block (clientconfig/anthos.ts).
 * - CRI-O/podman `registries.conf`: a `[[registry.mirror]]` per upstream whose location
 *   names the upstream in the path: a namespace prefix mapped to that upstream, else the
 *   registry host itself (`mirror:5000/docker.io`); hosts with a port cannot be a path
 *   component, so those need a namespace entry and are otherwise listed as skipped.
 *
 * Only names and URLs from the config appear; never credentials.
 */
import type { Config, UpstreamConfig } from '../config/schema.js';
import { anthosFiles } from './clientconfig/anthos.js';
import { ClientConfigError, type ClientConfigOptions, type ClientFiles, mirrorPaths, quote as toml, skippedNote, sortedUpstreams } from './clientconfig/common.js';
import { k3sFiles } from './clientconfig/k3s.js';
import { mirrorSetFiles } from './clientconfig/openshift.js';

export { ClientConfigError, type ClientConfigOptions, type ClientFiles };

export const CLIENT_KINDS = ['containerd', 'containerd-legacy', 'k3s', 'registries.conf', 'idms', 'itms', 'anthos'] as const;
export type ClientKind = (typeof CLIENT_KINDS)[number];

/** The mirror URL without a trailing slash; only http(s) with a host, no credentials or query. */
function mirrorUrl(raw: string): URL {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new ClientConfigError(`mirror: not a URL: ${JSON.stringify(raw)}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new ClientConfigError('mirror: must be an http:// or https:// URL');
  if (u.username || u.password || u.search || u.hash || (u.pathname !== '/' && u.pathname !== '')) {
    throw new ClientConfigError('mirror: give scheme, host and port only (no path, credentials or query)');
  }
  return u;
}

/** The registry's own endpoint, for containerd's fallback `server`. */
function serverOf(up: UpstreamConfig): string {
  return up.endpoints[0] ?? `https://${up.name}`;
}

/**
 * The mirror URL containerd gets: the origin, or `<origin>/v2/<prefix>` for a namespace
 * that routes by `?ns=` (one URL serves every registry, so it must be `{upstream: ns}`).
 */
function containerdMirrorUrl(config: Config, mirror: URL, namespace: string | undefined): string {
  if (namespace === undefined) return mirror.origin;
  const ns = config.namespaces.find((n) => n.prefix === namespace);
  if (!ns) throw new ClientConfigError(`namespace: no namespaces[] entry has prefix ${JSON.stringify(namespace)}`);
  if (ns.upstream !== 'ns') throw new ClientConfigError(`namespace: ${ns.prefix} maps to ${ns.upstream} only; for every registry it must be {upstream: ns}`);
  return `${mirror.origin}/v2/${ns.prefix}`;
}

function containerdFiles(config: Config, mirror: URL, opts: ClientConfigOptions): ClientFiles {
  const hostUrl = containerdMirrorUrl(config, mirror, opts.namespace);
  const files: ClientFiles = {};
  for (const up of sortedUpstreams(config)) {
    const lines = [
      `# ${up.name} through regmirror; containerd falls back to the registry itself (server) when the mirror fails.`,
      `server = ${toml(serverOf(up))}`,
      '',
      `[host.${toml(hostUrl)}]`,
      '  capabilities = ["pull", "resolve"]',
    ];
    if (opts.namespace !== undefined) lines.push('  override_path = true');
    if (opts.ca) lines.push(`  ca = ${toml(opts.ca)}`);
    files[`${up.name}/hosts.toml`] = `${lines.join('\n')}\n`;
  }
  return files;
}

const CRI_REGISTRY = 'plugins."io.containerd.grpc.v1.cri".registry';

function containerdLegacyFiles(config: Config, mirror: URL, opts: ClientConfigOptions): ClientFiles {
  const endpoint = containerdMirrorUrl(config, mirror, opts.namespace);
  const lines = [
    '# Merge into /etc/containerd/config.toml (containerd 1.x, version = 2) and restart containerd.',
    '# Legacy CRI form: read by the CRI plugin (kubelet, crictl) only, never by ctr. Remove',
    '# registry.config_path: with both, containerd does not load the CRI plugin at all.',
    '# containerd tries the mirror, then the registry itself, and sends ?ns=<registry> to the mirror.',
  ];
  if (opts.namespace !== undefined) lines.push('# The endpoint path /v2/<prefix> is used as written (an endpoint without a path gets /v2).');
  for (const up of sortedUpstreams(config)) {
    lines.push('', `[${CRI_REGISTRY}.mirrors.${toml(up.name)}]`, `  endpoint = [${toml(endpoint)}]`);
  }
  const configs = `${CRI_REGISTRY}.configs.${toml(mirror.host)}`;
  if (opts.ca) lines.push('', `[${configs}.tls]`, `  ca_file = ${toml(opts.ca)}`);
  lines.push(
    '',
    '# If the mirror requires a login (auth.rules), its credentials for every node (a pod\'s',
    '# imagePullSecrets, when kubelet sends them, replace these for that pull):',
    `# [${configs}.auth]`,
    '#   username = "<user>"',
    '#   password = "<password>"',
  );
  return { 'regmirror-cri-registry.toml': `${lines.join('\n')}\n` };
}

function registriesConfFiles(config: Config, mirror: URL, opts: ClientConfigOptions): ClientFiles {
  const lines = ['# /etc/containers/registries.conf.d/regmirror.conf (CRI-O, podman, skopeo, buildah)'];
  if (opts.ca) lines.push(`# Private CA: install it as /etc/containers/certs.d/${mirror.host}/ca.crt`);
  const { paths, skipped } = mirrorPaths(config);
  for (const { up, prefix } of paths) {
    lines.push('', '[[registry]]', `prefix = ${toml(up.name)}`, `location = ${toml(up.name)}`, '[[registry.mirror]]', `location = ${toml(`${mirror.host}/${prefix}`)}`);
    if (mirror.protocol === 'http:') lines.push('insecure = true');
  }
  for (const name of skipped) {
    lines.push('', skippedNote(name, '#'));
  }
  return { 'registries.conf': `${lines.join('\n')}\n` };
}

export function clientConfig(config: Config, kind: ClientKind, opts: ClientConfigOptions): ClientFiles {
  const mirror = mirrorUrl(opts.mirror);
  if (opts.namespace !== undefined && kind !== 'containerd' && kind !== 'containerd-legacy' && kind !== 'anthos') {
    throw new ClientConfigError('namespace: only containerd (hosts.toml override_path, or a legacy endpoint path) and anthos carry a path prefix');
  }
  switch (kind) {
    case 'containerd':
      return containerdFiles(config, mirror, opts);
    case 'containerd-legacy':
      return containerdLegacyFiles(config, mirror, opts);
    case 'k3s':
      return k3sFiles(config, mirror, opts);
    case 'registries.conf':
      return registriesConfFiles(config, mirror, opts);
    case 'idms':
    case 'itms':
      return mirrorSetFiles(config, mirror, kind);
    case 'anthos':
      return anthosFiles(config, containerdMirrorUrl(config, mirror, opts.namespace), opts);
  }
}

export function isClientKind(s: string): s is ClientKind {
  return (CLIENT_KINDS as readonly string[]).includes(s);
}
