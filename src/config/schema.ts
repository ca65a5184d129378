/**
 * The configuration shape (YAML on disk) and its resolved, typed form. `load.ts` is the
 * only code that reads YAML or the environment; everything else receives `Config`.
 */
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

export interface Config {
  readonly listen: { readonly host: string; readonly port: number };
  /** Data directory: blobs, uploads, regmirror.db. */
  readonly storage: string;
  readonly log: { readonly level: LogLevel; readonly pretty: boolean };
  readonly limits: {
    /** Manifest PUT bodies above this answer 413 (spec asks to accept at least 4 MB). */
    readonly maxManifestBytes: number;
    /** Largest blob accepted by push; 0 = unlimited. */
    readonly maxBlobBytes: number;
    /** Abandoned upload sessions are removed after this long. */
    readonly uploadTtlMs: number;
  };
  readonly http: {
    /** Above any load balancer idle timeout, so clients close idle sockets (protocol 6.8). */
    readonly keepAliveTimeoutMs: number;
    readonly headersTimeoutMs: number;
    /** Stalled request bodies (no bytes for this long) are cut off. */
    readonly idleTimeoutMs: number;
  };
}

export const DEFAULT_CONFIG_YAML = `# regmirror embedded default configuration
listen: 0.0.0.0:5000
storage: ./storage
log:
  level: info
limits:
  maxManifestBytes: 4MiB
  maxBlobBytes: 0
  uploadTtl: 24h
http:
  keepAliveTimeout: 65s
  headersTimeout: 60s
  idleTimeout: 5m
`;
