/**
 * Where writes (pushes, deletes, imports) are possible at all: a repository under a
 * namespace prefix takes them only if that namespace has `push: true`; paths outside
 * every namespace always do. Who may write is a separate question (auth/rules.ts).
 */
import type { NamespaceConfig } from '../config/schema.js';
import type { Resolution } from '../upstream/routing.js';
import { RegistryError } from './errors.js';

/** Whether a namespace (null: none matched) accepts pushes. */
export function acceptsPushes(namespace: NamespaceConfig | null): boolean {
  return !namespace || namespace.push;
}

/** The error a write to this resolved path is refused with, or null when it is allowed. */
export function writeRefusal(r: Pick<Resolution, 'namespace'>): RegistryError | null {
  const ns = r.namespace;
  if (!ns || acceptsPushes(ns)) return null;
  return new RegistryError('DENIED', `pushing to ${ns.prefix}/ is not enabled (namespaces[].push)`);
}
