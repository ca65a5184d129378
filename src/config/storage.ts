/**
 * `storage:` either as a path (today's form, the local driver: `storage: ./storage`) or as
 * a mapping choosing the drivers:
 *
 *   storage:
 *     driver: shared            # local (default) | postgres | shared
 *     path: /var/lib/regmirror  # local data (default ./storage)
 *     postgres: { url: postgres://regmirror@db/regmirror, password: "${PGPASSWORD}" }
 *     s3: { endpoint: http://rgw:7480, bucket: regmirror, forcePathStyle: true, ... }
 *
 * Each driver needs exactly its sections: a section the chosen driver would ignore is an
 * error, so a typo in `driver` never silently runs on local disk.
 */
import fs from 'node:fs';
import type { PostgresConfig, S3Config, StoreConfig } from './schema.js';
import { ConfigError, Section, positiveInt } from './section.js';

const DRIVERS = ['local', 'postgres', 'shared'] as const;

/** What each driver needs: metadata in PostgreSQL, blobs in S3. */
const NEEDS: Record<StoreConfig['driver'], { postgres: boolean; s3: boolean }> = {
  local: { postgres: false, s3: false },
  postgres: { postgres: true, s3: false },
  shared: { postgres: true, s3: true },
};

export function parseStore(root: Section): { storage: string; store: StoreConfig } {
  const raw = root.raw('storage');
  if (raw === undefined || raw === null || typeof raw === 'string' || typeof raw === 'number') {
    return { storage: root.string('storage', './storage'), store: { driver: 'local', postgres: null, s3: null } };
  }
  const s = Section.of('storage', raw);
  const storage = s.string('path', './storage');
  const driver = s.string('driver', 'local') as StoreConfig['driver'];
  if (!DRIVERS.includes(driver)) throw new ConfigError(`storage.driver: "${driver}" must be one of ${DRIVERS.join(', ')}`);
  const need = NEEDS[driver];
  const section = <T>(k: 'postgres' | 's3', parse: (sec: Section) => T): T | null => {
    const v = s.raw(k);
    const given = v !== undefined && v !== null;
    if (given && !need[k]) throw new ConfigError(`storage.${k}: not used by driver ${driver} (${k === 's3' ? 'shared' : 'postgres or shared'} uses it)`);
    if (!given && need[k]) throw new ConfigError(`storage.${k}: required by driver ${driver}`);
    return given ? parse(Section.of(`storage.${k}`, v)) : null;
  };
  const postgres = section('postgres', parsePostgres);
  const s3 = section('s3', parseS3);
  s.done();
  return { storage, store: { driver, postgres, s3 } };
}

function parsePostgres(p: Section): PostgresConfig {
  const url = p.string('url') || null;
  const host = p.string('host') || null;
  const portRaw = p.raw('port');
  const cfg: PostgresConfig = {
    url,
    host,
    port: portRaw === undefined || portRaw === null ? 5432 : positiveInt(portRaw, p.key('port')),
    database: p.string('database') || null,
    user: p.string('user') || null,
    password: p.string('password') ?? null,
    poolSize: positiveInt(p.raw('poolSize') ?? 10, p.key('poolSize')),
    statementTimeoutMs: p.durationMs('statementTimeout', '30s'),
    connectTimeoutMs: p.durationMs('connectTimeout', '5s'),
    ssl: parseSsl(p),
  };
  p.done();
  if (cfg.port > 65535) throw new ConfigError(`${p.key('port')}: must be a TCP port (1-65535)`);
  if (url) {
    if (host || portRaw !== undefined || cfg.database || cfg.user) {
      throw new ConfigError(`${p.path}: give url, or host/port/database/user, not both`);
    }
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      // Not echoed: the URL may hold a password.
      throw new ConfigError(`${p.key('url')}: is not a URL (postgres://user@host:5432/database)`);
    }
    if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') throw new ConfigError(`${p.key('url')}: must start with postgres:// or postgresql://`);
    if (!u.hostname) throw new ConfigError(`${p.key('url')}: names no host`);
    if (u.password && cfg.password !== null) throw new ConfigError(`${p.path}: the password is both in url and in password; keep one (password: "\${ENV}" is best)`);
  } else if (!host) {
    throw new ConfigError(`${p.path}: url or host is required`);
  }
  if (cfg.statementTimeoutMs < 100) throw new ConfigError(`${p.key('statementTimeout')}: must be at least 100ms`);
  if (cfg.connectTimeoutMs < 100) throw new ConfigError(`${p.key('connectTimeout')}: must be at least 100ms`);
  return cfg;
}

function parseSsl(p: Section): PostgresConfig['ssl'] {
  const v = p.raw('ssl');
  if (v === undefined || v === null || v === false) return null;
  if (v === true) return { ca: null, insecureSkipVerify: false };
  const s = Section.of(p.key('ssl'), v);
  const ssl = { ca: s.string('ca') ?? null, insecureSkipVerify: s.bool('insecureSkipVerify', false) };
  s.done();
  if (ssl.ca && !fs.existsSync(ssl.ca)) throw new ConfigError(`${s.key('ca')}: file ${ssl.ca} does not exist`);
  return ssl;
}

// S3's own bucket naming rules (3-63 characters, lower case, digits, dots, hyphens).
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const MIN_PART = 5 * 1024 * 1024;
const MAX_PART = 5 * 1024 * 1024 * 1024;
const MAX_PRESIGN_S = 7 * 24 * 3600;

function parseS3(s: Section): S3Config {
  const endpoint = s.string('endpoint') || null;
  const prefix = (s.string('prefix', '') ?? '').replace(/^\/+/, '');
  const cfg: S3Config = {
    endpoint: endpoint?.replace(/\/+$/, '') ?? null,
    region: s.string('region', 'us-east-1'),
    bucket: s.string('bucket', ''),
    prefix: prefix && !prefix.endsWith('/') ? `${prefix}/` : prefix,
    forcePathStyle: s.bool('forcePathStyle', false),
    accessKeyId: s.string('accessKeyId') || null,
    secretAccessKey: s.string('secretAccessKey') || null,
    partSize: s.bytes('partSize', '16MiB'),
    redirect: s.bool('redirect', false),
    redirectExpiresSeconds: Math.floor(s.durationMs('redirectExpires', '5m') / 1000),
    connectTimeoutMs: s.durationMs('connectTimeout', '5s'),
    requestTimeoutMs: s.durationMs('requestTimeout', '60s'),
  };
  s.done();
  if (endpoint) {
    let u: URL;
    try {
      u = new URL(endpoint);
    } catch {
      throw new ConfigError(`${s.key('endpoint')}: "${endpoint}" is not a URL (http(s)://host:port)`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new ConfigError(`${s.key('endpoint')}: must be http(s)`);
    if (u.username || u.password) throw new ConfigError(`${s.key('endpoint')}: put credentials under accessKeyId/secretAccessKey, not in the URL`);
  }
  if (!cfg.region) throw new ConfigError(`${s.key('region')}: must not be empty`);
  if (!cfg.bucket) throw new ConfigError(`${s.key('bucket')}: is required`);
  if (!BUCKET_RE.test(cfg.bucket)) throw new ConfigError(`${s.key('bucket')}: "${cfg.bucket}" is not a bucket name (3-63 of a-z, 0-9, '.', '-')`);
  if (!cfg.accessKeyId !== !cfg.secretAccessKey) {
    throw new ConfigError(`${s.path}: accessKeyId and secretAccessKey go together (both set, or both unset for the environment's credentials)`);
  }
  if (cfg.redirectExpiresSeconds < 1 || cfg.redirectExpiresSeconds > MAX_PRESIGN_S) {
    throw new ConfigError(`${s.key('redirectExpires')}: must be between 1s and 7d (S3's presigned URL limits)`);
  }
  if (cfg.connectTimeoutMs < 100) throw new ConfigError(`${s.key('connectTimeout')}: must be at least 100ms`);
  if (cfg.requestTimeoutMs < 100) throw new ConfigError(`${s.key('requestTimeout')}: must be at least 100ms`);
  if (cfg.partSize < MIN_PART || cfg.partSize > MAX_PART) throw new ConfigError(`${s.key('partSize')}: must be between 5MiB and 5GiB (S3's part size limits)`);
  return cfg;
}
