/**
 * The configuration shape (YAML on disk) and its resolved, typed form. `load.ts` is the
 * only code that reads YAML or the environment; everything else receives `Config`.
 */
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

export type CredentialsConfig =
  | { readonly kind: 'basic'; readonly username: string; readonly password: string }
  | { readonly kind: 'dockerConfig'; readonly file: string }
  | { readonly kind: 'googleKey'; readonly file: string }
  | { readonly kind: 'bearer'; readonly token: string };

export interface UpstreamConfig {
  /** The registry host clients name it by (`docker.io`, `gcr.io`, `myreg:5000`). */
  readonly name: string;
  /** Tried in order on connection errors and 5xx. */
  readonly endpoints: readonly string[];
  readonly credentials: CredentialsConfig | null;
  /** PEM file of extra CA certificates for the endpoints. */
  readonly caFile: string | null;
  /** Skip TLS verification (logged as a warning at start). */
  readonly insecureSkipVerify: boolean;
  /** HTTPS/HTTP proxy URL for this upstream. */
  readonly proxy: string | null;
  readonly connectTimeoutMs: number;
  readonly headersTimeoutMs: number;
  /** Idle time allowed between body chunks; also the window for the minimum body rate (upstream/client.ts). */
  readonly bodyTimeoutMs: number;
  /** After every endpoint failed to connect or answer, fail fast for this long. */
  readonly offlineMs: number;
  /** While offline, probe the upstream this often and close the window when it answers (0: never). */
  readonly probeIntervalMs: number;
  readonly maxConnections: number;
  /** Docker Hub: one-component names get `library/`. */
  readonly libraryPrefix: boolean;
  readonly tags: {
    /** A cached tag is served without asking upstream for this long. */
    readonly ttlMs: number;
    /** Tags matching any of these are never revalidated. */
    readonly immutable: readonly RegExp[];
    /** How long a revalidation may take before the stale copy is served instead. */
    readonly revalidateTimeoutMs: number;
  };
}

export interface NamespaceConfig {
  /** Path prefix (one or more name components) that clients put in front of the source path. */
  readonly prefix: string;
  /** Upstream name, or 'ns' for "whatever ?ns= (or a host in the path) says, else defaultUpstream". */
  readonly upstream: string;
  /** Whether clients may push under this prefix. */
  readonly push: boolean;
}

export interface RewriteConfig {
  readonly upstream: string;
  readonly pattern: RegExp;
  readonly replace: string;
}

export interface TlsConfig {
  readonly cert: string;
  readonly key: string;
  /** Require client certificates signed by this CA (mutual TLS). */
  readonly clientCA: string | null;
  /** Also serve plain HTTP here (loopback/dev), e.g. 127.0.0.1:5080. */
  readonly httpListen: { readonly host: string; readonly port: number } | null;
}

export interface AuthRuleConfig {
  readonly repositories: string;
  readonly pull: readonly string[];
  readonly push: readonly string[];
  readonly delete: readonly string[];
}

export interface AuthConfig {
  readonly htpasswd: string | null;
  /** Docker token auth; null = Basic challenges only. */
  readonly token: {
    readonly issuer: string;
    readonly service: string;
    /** PEM private key (EC P-256); null = generated at first start, kept in storage. */
    readonly key: string | null;
    readonly ttlSeconds: number;
    /** Realm URL in challenges; null = derived from the request (`<scheme>://<host>/token`). */
    readonly realm: string | null;
  } | null;
  readonly groups: ReadonlyMap<string, readonly string[]>;
  /** First match wins; default: anonymous pull, authenticated push and delete. */
  readonly rules: readonly AuthRuleConfig[];
  readonly loginRateLimit: { readonly maxFailures: number; readonly windowMs: number };
}

/** Disk budget and age limit for content pulled through from upstreams (never pushed content). */
export interface CacheConfig {
  /** Bytes of cached blobs kept on disk; least recently used images go first. null = unlimited. */
  readonly maxBytes: number | null;
  /** Cached images not pulled for this long are evicted. null = never. */
  readonly maxAgeMs: number | null;
  /** How often the running server checks both limits. */
  readonly evictIntervalMs: number;
  /**
   * storage.driver shared: blob content is deleted from the bucket this long after its row
   * went (eviction, GC), so a replica that resolved the digest just before reads it whole.
   */
  readonly deleteGraceMs: number;
}

/** PostgreSQL for metadata (storage.postgres): several replicas share one database. */
export interface PostgresConfig {
  /** postgres://user@host:port/db URL; null when given as fields. */
  readonly url: string | null;
  readonly host: string | null;
  readonly port: number;
  readonly database: string | null;
  readonly user: string | null;
  /** Usually `${ENV}`; never logged. */
  readonly password: string | null;
  /** Connections per replica. */
  readonly poolSize: number;
  /** Server-side limit per statement; a query over it fails (503) instead of holding a connection. */
  readonly statementTimeoutMs: number;
  /** How long to wait for a connection (new or from the pool) before answering 503. */
  readonly connectTimeoutMs: number;
  /** TLS to the server: null = plain; otherwise verified against `ca` (PEM file) or the system CAs. */
  readonly ssl: { readonly ca: string | null; readonly insecureSkipVerify: boolean } | null;
}

/** An S3-compatible object store for blobs and upload data (storage.s3). */
export interface S3Config {
  /** http(s)://host[:port]; null = the AWS endpoint for `region`. */
  readonly endpoint: string | null;
  readonly region: string;
  readonly bucket: string;
  /** Key prefix for everything regmirror stores ('' or ending in '/'). */
  readonly prefix: string;
  /** Path-style URLs (http://endpoint/bucket/key): needed by most on-prem stores (Ceph RGW, MinIO). */
  readonly forcePathStyle: boolean;
  /** Both null = the SDK's default chain (environment, instance role). */
  readonly accessKeyId: string | null;
  readonly secretAccessKey: string | null;
  /** Multipart part size in bytes (S3: 5 MiB to 5 GiB). */
  readonly partSize: number;
  /**
   * Blob GETs served from the store answer 307 to a presigned URL (distribution's
   * `redirect`): clients must reach the store themselves. HEAD and fills stay here.
   */
  readonly redirect: boolean;
  /** How long a presigned URL is valid (`redirectExpires`, a duration; S3 allows 1s to 7 days). */
  readonly redirectExpiresSeconds: number;
  /** Per store request: TCP connect, and silence on the socket (`connectTimeout`, `requestTimeout`); a hung store is a 503 after at most 3 attempts of these. */
  readonly connectTimeoutMs: number;
  readonly requestTimeoutMs: number;
}

/**
 * Where metadata and blobs live. `local`: SQLite + files under `storage` (one replica).
 * `postgres`: metadata in PostgreSQL, blobs under `storage`. `shared`: PostgreSQL + S3,
 * for several replicas.
 */
export interface StoreConfig {
  readonly driver: 'local' | 'postgres' | 'shared';
  readonly postgres: PostgresConfig | null;
  readonly s3: S3Config | null;
}

/** How replicas on one shared store cooperate on fills (`cluster:`; config/cluster.ts). */
export interface ClusterConfig {
  /** How other replicas reach this one; null = derived from the listen address. */
  readonly advertiseUrl: string | null;
  /** Bearer token of the internal fill endpoint; null = endpoint off (non-owners wait for the commit). */
  readonly secret: string | null;
  /** A fill lease not renewed for this long is free for another replica. */
  readonly fillLeaseTtlMs: number;
}

export interface Config {
  readonly listen: { readonly host: string; readonly port: number };
  /** Data directory: blobs, uploads, regmirror.db (local driver), tmp/ and the token key (every driver). */
  readonly storage: string;
  /** The storage drivers (`storage.driver`, default local). */
  readonly store: StoreConfig;
  readonly cluster: ClusterConfig;
  readonly log: { readonly level: LogLevel; readonly pretty: boolean };
  readonly limits: {
    /** Manifest PUT bodies above this answer 413 (spec asks to accept at least 4 MB). */
    readonly maxManifestBytes: number;
    /** Largest blob accepted by push; 0 = unlimited. */
    readonly maxBlobBytes: number;
    /** Abandoned upload sessions are removed after this long. */
    readonly uploadTtlMs: number;
  };
  readonly cache: CacheConfig;
  readonly tls: TlsConfig | null;
  /** null: no client authentication (every request may pull, push and delete). */
  readonly auth: AuthConfig | null;
  readonly upstreams: ReadonlyMap<string, UpstreamConfig>;
  /** Upstream for paths no other rule matches; null = such paths are local only. */
  readonly defaultUpstream: string | null;
  readonly namespaces: readonly NamespaceConfig[];
  readonly rewrites: readonly RewriteConfig[];
  /** The status page (GET /, /ui/) and GET /api/v1/status; off = 404 there. */
  readonly status: { readonly enabled: boolean };
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
# Pulled-through content only (pushed content is never evicted). Set maxBytes to what the
# disk can spare (there is no safe guess); images nobody pulled for 90 days are dropped
# and fetched again on the next pull.
cache:
  maxBytes: null
  maxAge: 90d
  evictInterval: 10m
# Client access: anonymous pull; pushes and deletes need a user. Add users with
#   htpasswd -B -c ./htpasswd alice   and set auth.htpasswd: ./htpasswd
auth:
  htpasswd: null
  token: { issuer: regmirror }
  rules:
    - { repositories: "**", pull: [anonymous], push: [authenticated], delete: [authenticated] }
# Pull-through upstreams. An entry with no endpoints uses the registry's well-known API
# host (docker.io -> https://registry-1.docker.io, others -> https://<name>).
upstreams:
  docker.io:
    tags: { ttl: 5m }
  gcr.io: {}
  mcr.microsoft.com: {}
  quay.io: {}
  registry.k8s.io: {}
  ghcr.io: {}
# Paths that match no namespace, no ?ns= and no host in the path go here (null: local only).
defaultUpstream: docker.io
namespaces: []
rewrites: []
# Status page at / and /ui/, JSON at /api/v1/status (repositories shown only to callers who may pull them).
status:
  enabled: true
`;
