/** Shared pieces of the node-config generators (src/ops/clientconfig.ts and its per-target files). */
import type { Config, UpstreamConfig } from '../../config/schema.js';

export interface ClientConfigOptions {
  /** The mirror as nodes reach it: `https://mirror.example:5000`. */
  mirror: string;
  /** CA file path on the nodes, for a mirror with a private CA. */
  ca?: string;
  /** A `namespaces[]` prefix to put in the mirror URL (containerd with override_path, containerd-legacy, anthos). */
  namespace?: string;
}

/** Relative path -> file content. */
export type ClientFiles = Record<string, string>;

export class ClientConfigError extends Error {}

/** TOML basic strings and YAML double-quoted scalars share JSON's escapes for these inputs. */
export const quote = (s: string): string => JSON.stringify(s);

export function sortedUpstreams(config: Config): UpstreamConfig[] {
  return [...config.upstreams.values()].sort((a, b) => a.name.localeCompare(b.name));
}

/** A repository path component per the distribution spec: `[a-z0-9]+(?:[._-][a-z0-9]+)*`. */
export const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$/;

/**
 * The path under the mirror that names `up` for clients that cannot send `?ns=` (CRI-O,
 * podman, OpenShift mirror sets): a `namespaces[]` prefix mapped to that upstream, else the
 * registry host itself (routed by "registry host in the path"). A host with a port is not a
 * valid path component, so such an upstream needs a namespace: null.
 */
export function pathPrefixFor(config: Config, up: UpstreamConfig): string | null {
  const ns = config.namespaces.find((n) => n.upstream === up.name);
  return ns?.prefix ?? (PATH_COMPONENT.test(up.name) ? up.name : null);
}

/**
 * Every upstream with its mirror path (pathPrefixFor), sorted; those that have none are
 * returned apart so each target can list them as a comment.
 */
export function mirrorPaths(config: Config): { paths: Array<{ up: UpstreamConfig; prefix: string }>; skipped: string[] } {
  const paths: Array<{ up: UpstreamConfig; prefix: string }> = [];
  const skipped: string[] = [];
  for (const up of sortedUpstreams(config)) {
    const prefix = pathPrefixFor(config, up);
    if (prefix === null) skipped.push(up.name);
    else paths.push({ up, prefix });
  }
  return { paths, skipped };
}

export function skippedNote(name: string, comment: string): string {
  return `${comment} ${name}: a host with a port cannot be a path component; add namespaces: [{prefix: <name>, upstream: ${quote(name)}}] to mirror it`;
}
