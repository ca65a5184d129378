/**
 * `cluster:` how replicas on one shared store find each other for fills (issue #13):
 *
 *   cluster:
 *     advertiseUrl: http://replica-a:5000   # how other replicas reach this one (default: from listen)
 *     secret: "${REGMIRROR_CLUSTER_SECRET}" # bearer token of the internal fill endpoint
 *     fillLeaseTtl: 10s                     # a dead filler's lease frees up after this
 *
 * Only the shared driver uses it (the local driver is one replica: no leases, no peers).
 * Without a secret the internal endpoint is off: a replica that finds another one filling
 * waits for its commit and serves from the object store instead of streaming from it.
 */
import type { ClusterConfig, StoreConfig } from './schema.js';
import { ConfigError, type Section } from './section.js';

/** At least this long: a heartbeat every third of it must fit a busy database round trip. */
const MIN_LEASE_TTL_MS = 300;
/** Secrets shorter than this are guessable; the endpoint serves any blob being filled. */
const MIN_SECRET_CHARS = 16;

export function parseCluster(c: Section, store: StoreConfig): ClusterConfig {
  const advertise = c.string('advertiseUrl') || null;
  const secret = c.string('secret') || null;
  const fillLeaseTtlMs = c.durationMs('fillLeaseTtl', '10s');
  c.done();
  if (advertise) {
    let u: URL;
    try {
      u = new URL(advertise);
    } catch {
      throw new ConfigError(`${c.key('advertiseUrl')}: "${advertise}" is not a URL (http(s)://host:port)`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new ConfigError(`${c.key('advertiseUrl')}: must be http(s)`);
    if (u.username || u.password || u.search || u.hash) throw new ConfigError(`${c.key('advertiseUrl')}: scheme, host and port only`);
  }
  // Not echoed: it is a secret.
  if (secret !== null && secret.length < MIN_SECRET_CHARS) throw new ConfigError(`${c.key('secret')}: must be at least ${MIN_SECRET_CHARS} characters`);
  if (secret !== null && /\s/.test(secret)) throw new ConfigError(`${c.key('secret')}: must not contain white space (it is sent as a bearer token)`);
  if (fillLeaseTtlMs < MIN_LEASE_TTL_MS) throw new ConfigError(`${c.key('fillLeaseTtl')}: must be at least ${MIN_LEASE_TTL_MS}ms`);
  if ((advertise || secret) && store.driver !== 'shared') throw new ConfigError(`${c.path}: only used with storage.driver: shared (replicas on one store)`);
  return { advertiseUrl: advertise?.replace(/\/+$/, '') ?? null, secret, fillLeaseTtlMs };
}
