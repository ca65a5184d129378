/**
 * Parse, validate and freeze the configuration, once. Unknown keys and bad values are
 * rejected with a message naming the key, so a typo never silently falls back to a
 * default. `${VAR}` in string values is replaced from the environment here (section.ts) and
 * nowhere else.
 */
import fs from 'node:fs';
import YAML from 'yaml';
import { KNOWN_REGISTRIES } from './known.js';
import {
  type AuthConfig,
  type CacheConfig,
  type TlsConfig,
  type Config,
  type CredentialsConfig,
  DEFAULT_CONFIG_YAML,
  type LogLevel,
  type NamespaceConfig,
  type RewriteConfig,
  type UpstreamConfig,
} from './schema.js';
import { ConfigError, Section, positiveInt } from './section.js';
import { parseStore } from './storage.js';
import { parseCluster } from './cluster.js';

export { ConfigError, Section, parseBytes, parseDurationMs } from './section.js';

function parseListen(v: string, key: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:]*)):(\d{1,5})$/.exec(v);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ConfigError(`${key}: "${v}" must be host:port (e.g. 0.0.0.0:5000)`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

const LOG_LEVELS: LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

/** Build a Config from an already-parsed YAML document (defaults filled in). */
export function configFromObject(doc: unknown): Config {
  const root = Section.of('', doc);
  const listen = parseListen(root.string('listen', '0.0.0.0:5000'), 'listen');
  const { storage, store } = parseStore(root);
  const cluster = parseCluster(root.section('cluster'), store);
  const logS = root.section('log');
  const level = logS.string('level', 'info') as LogLevel;
  if (!LOG_LEVELS.includes(level)) throw new ConfigError(`log.level: must be one of ${LOG_LEVELS.join(', ')}`);
  const log = { level, pretty: logS.bool('pretty', false) };
  logS.done();
  const lim = root.section('limits');
  const limits = {
    maxManifestBytes: lim.bytes('maxManifestBytes', '4MiB'),
    maxBlobBytes: lim.bytes('maxBlobBytes', 0),
    uploadTtlMs: lim.durationMs('uploadTtl', '24h'),
  };
  lim.done();
  if (limits.maxManifestBytes < 4 * 1024 * 1024) {
    throw new ConfigError('limits.maxManifestBytes: must be at least 4MiB (the spec requires accepting 4 MB manifests)');
  }
  const h = root.section('http');
  const http = {
    keepAliveTimeoutMs: h.durationMs('keepAliveTimeout', '65s'),
    headersTimeoutMs: h.durationMs('headersTimeout', '60s'),
    idleTimeoutMs: h.durationMs('idleTimeout', '5m'),
  };
  h.done();
  const cache = parseCache(root.section('cache'));
  const statusS = root.section('status');
  const status = { enabled: statusS.bool('enabled', true) };
  statusS.done();
  const tls = parseTls(root.section('tls'));
  const authRaw = root.raw('auth');
  const auth = authRaw === undefined || authRaw === null ? null : parseAuth(Section.of('auth', authRaw));
  const upstreams = parseUpstreams(root.section('upstreams'));
  const defaultRaw = root.raw('defaultUpstream');
  const defaultUpstream = defaultRaw === undefined || defaultRaw === null ? null : String(defaultRaw);
  if (defaultUpstream !== null && !upstreams.has(defaultUpstream)) {
    throw new ConfigError(`defaultUpstream: "${defaultUpstream}" is not a configured upstream`);
  }
  const namespaces = root.list('namespaces').map((v, i) => parseNamespace(Section.of(`namespaces[${i}]`, v), upstreams));
  const rewrites = root.list('rewrites').map((v, i) => parseRewrite(Section.of(`rewrites[${i}]`, v), upstreams));
  root.done();
  return deepFreeze({ listen, storage, store, cluster, log, limits, http, cache, status, tls, auth, upstreams, defaultUpstream, namespaces, rewrites });
}

export function parseConfigYaml(text: string, source: string): Config {
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch (e) {
    throw new ConfigError(`${source}: invalid YAML: ${(e as Error).message}`);
  }
  return configFromObject(doc ?? {});
}

/** Load from a file, or the embedded default when no file is given. */
export function loadConfig(file?: string): Config {
  if (!file) return parseConfigYaml(DEFAULT_CONFIG_YAML, 'embedded default config');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config file ${file}: ${(e as Error).message}`);
  }
  const config = parseConfigYaml(text, file);
  // `postgres` alone (PostgreSQL metadata, local files) is not implemented (storage/open.ts
  // says why): refuse rather than run such a config on something else.
  if (config.store.driver === 'postgres') {
    throw new ConfigError('storage.driver: postgres (PostgreSQL metadata with local blobs) is not available; use shared (PostgreSQL + S3) or local; see issue #13');
  }
  return config;
}

/** Absent section = no budget and no age limit (the embedded default config sets maxAge). */
function parseCache(c: Section): CacheConfig {
  const cache = {
    maxBytes: c.optionalBytes('maxBytes', null),
    maxAgeMs: c.optionalDurationMs('maxAge', null),
    evictIntervalMs: c.durationMs('evictInterval', '10m'),
    deleteGraceMs: c.durationMs('deleteGrace', '5m'),
  };
  c.done();
  if (cache.evictIntervalMs < 1000) throw new ConfigError('cache.evictInterval: must be at least 1s');
  return cache;
}

function parseTls(t: Section): TlsConfig | null {
  const cert = t.string('cert');
  const key = t.string('key');
  const clientCA = t.string('clientCA') ?? null;
  const httpListen = t.string('httpListen');
  t.done();
  if (!cert && !key) {
    if (clientCA || httpListen) throw new ConfigError('tls: cert and key are required');
    return null;
  }
  if (!cert || !key) throw new ConfigError('tls: cert and key go together');
  for (const [k, f] of [['cert', cert], ['key', key], ['clientCA', clientCA]] as const) {
    if (f && !fs.existsSync(f)) throw new ConfigError(`tls.${k}: file ${f} does not exist`);
  }
  return { cert, key, clientCA, httpListen: httpListen ? parseListen(httpListen, 'tls.httpListen') : null };
}

function stringList(sec: Section, k: string): string[] {
  return sec.list(k).map((v, i) => {
    if (typeof v !== 'string') throw new ConfigError(`${sec.key(k)}[${i}]: must be a string`);
    return v;
  });
}

function parseAuth(a: Section): AuthConfig {
  // '' (e.g. `${REGMIRROR_HTPASSWD:-}` unset) = no users, like null.
  const htpasswd = a.string('htpasswd') || null;
  if (htpasswd && !fs.existsSync(htpasswd)) throw new ConfigError(`auth.htpasswd: file ${htpasswd} does not exist`);
  const tokenRaw = a.raw('token');
  let token: AuthConfig['token'] = null;
  if (tokenRaw !== undefined && tokenRaw !== null && tokenRaw !== false) {
    const t = Section.of('auth.token', tokenRaw === true ? {} : tokenRaw);
    token = {
      issuer: t.string('issuer', 'regmirror'),
      service: t.string('service', 'regmirror'),
      key: t.string('key') ?? null,
      ttlSeconds: Math.round(t.durationMs('ttl', '5m') / 1000),
      realm: t.string('realm') ?? null,
    };
    t.done();
    if (token.ttlSeconds < 60) throw new ConfigError('auth.token.ttl: must be at least 60s');
  }
  const g = a.section('groups');
  const groups = new Map<string, string[]>();
  for (const [name] of g.entries()) groups.set(name, stringList(g, name));
  const rules = a.list('rules').map((v, i) => {
    const r = Section.of(`auth.rules[${i}]`, v);
    const repositories = r.string('repositories');
    if (!repositories) throw new ConfigError(`${r.key('repositories')}: is required (a glob such as "team/**")`);
    const rule = { repositories, pull: stringList(r, 'pull'), push: stringList(r, 'push'), delete: stringList(r, 'delete') };
    r.done();
    return rule;
  });
  const rl = a.section('loginRateLimit');
  const loginRateLimit = { maxFailures: positiveInt(rl.raw('maxFailures') ?? 10, rl.key('maxFailures')), windowMs: rl.durationMs('window', '1m') };
  rl.done();
  a.done();
  return { htpasswd, token, groups, rules, loginRateLimit };
}

const NAME_PREFIX_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
const UPSTREAM_NAME_RE = /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$/;

function parseUpstreams(sec: Section): Map<string, UpstreamConfig> {
  const out = new Map<string, UpstreamConfig>();
  for (const [name, v] of sec.entries()) {
    const key = sec.key(name);
    if (!UPSTREAM_NAME_RE.test(name)) throw new ConfigError(`${key}: upstream names are registry hosts (e.g. docker.io, myreg.local:5000)`);
    const u = Section.of(key, v);
    const known = KNOWN_REGISTRIES[name];
    const endpoints = u.list('endpoints').map((e, i) => {
      if (typeof e !== 'string') throw new ConfigError(`${u.key('endpoints')}[${i}]: must be a URL string`);
      let url: URL;
      try {
        url = new URL(e);
      } catch {
        throw new ConfigError(`${u.key('endpoints')}[${i}]: "${e}" is not a URL`);
      }
      if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new ConfigError(`${u.key('endpoints')}[${i}]: must be http(s)`);
      // Credentials in URLs would be shown by the explain endpoint and logged with URLs.
      if (url.username || url.password) throw new ConfigError(`${u.key('endpoints')}[${i}]: put credentials under credentials:, not in the URL`);
      return e.replace(/\/+$/, '');
    });
    if (endpoints.length === 0) endpoints.push(known?.endpoint ?? `https://${name}`);
    const timeouts = u.section('timeouts');
    const tags = u.section('tags');
    const immutable = tags.list('immutable').map((p, i) => compileRegex(p, `${tags.key('immutable')}[${i}]`));
    const cfg: UpstreamConfig = {
      name,
      endpoints,
      credentials: parseCredentials(u.section('credentials')),
      caFile: u.string('ca') ?? null,
      insecureSkipVerify: u.bool('insecureSkipVerify', false),
      proxy: u.string('proxy') ?? null,
      connectTimeoutMs: timeouts.durationMs('connect', '10s'),
      headersTimeoutMs: timeouts.durationMs('headers', '30s'),
      bodyTimeoutMs: timeouts.durationMs('body', '60s'),
      offlineMs: timeouts.durationMs('offline', '10s'),
      probeIntervalMs: timeouts.durationMs('probe', '500ms'),
      maxConnections: positiveInt(u.raw('maxConnections') ?? 32, u.key('maxConnections')),
      libraryPrefix: u.bool('libraryPrefix', known?.libraryPrefix ?? false),
      tags: { ttlMs: tags.durationMs('ttl', '5m'), immutable, revalidateTimeoutMs: tags.durationMs('revalidateTimeout', '5s') },
    };
    timeouts.done();
    tags.done();
    u.done();
    out.set(name, cfg);
  }
  return out;
}

function parseCredentials(c: Section): CredentialsConfig | null {
  let username = c.string('username');
  let password = c.string('password');
  const dockerConfig = c.string('dockerConfig');
  const googleKeyFile = c.string('googleKeyFile');
  const token = c.string('token');
  c.done();
  // Both empty (`${USER:-}`, `${TOKEN:-}` unset) = anonymous: one config serves with and without a secret.
  if (username === '' && password === '') username = password = undefined;
  const kinds = [username !== undefined || password !== undefined, dockerConfig, googleKeyFile, token].filter(Boolean).length;
  if (kinds > 1) throw new ConfigError(`${c.path}: give one of username/password, dockerConfig, googleKeyFile or token`);
  if (username !== undefined || password !== undefined) {
    if (!username || !password) throw new ConfigError(`${c.path}: username and password go together (both set, or both empty for anonymous)`);
    return { kind: 'basic', username, password };
  }
  if (dockerConfig) return { kind: 'dockerConfig', file: dockerConfig };
  if (googleKeyFile) return { kind: 'googleKey', file: googleKeyFile };
  if (token) return { kind: 'bearer', token };
  return null;
}

function parseNamespace(n: Section, upstreams: Map<string, UpstreamConfig>): NamespaceConfig {
  const prefix = (n.string('prefix') ?? '').replace(/^\/+|\/+$/g, '');
  if (!NAME_PREFIX_RE.test(prefix)) throw new ConfigError(`${n.key('prefix')}: must be one or more repository name components`);
  const upstream = n.string('upstream', 'ns');
  if (upstream !== 'ns' && upstream !== 'local' && !upstreams.has(upstream)) {
    throw new ConfigError(`${n.key('upstream')}: "${upstream}" is not a configured upstream (or 'ns', or 'local')`);
  }
  const push = n.bool('push', upstream === 'local');
  n.done();
  return { prefix, upstream, push };
}

function parseRewrite(r: Section, upstreams: Map<string, UpstreamConfig>): RewriteConfig {
  const upstream = r.string('upstream');
  if (!upstream || !upstreams.has(upstream)) throw new ConfigError(`${r.key('upstream')}: must name a configured upstream`);
  const pattern = compileRegex(r.raw('pattern'), r.key('pattern'));
  const replace = r.string('replace');
  if (replace === undefined) throw new ConfigError(`${r.key('replace')}: is required`);
  r.done();
  return { upstream, pattern, replace };
}

function compileRegex(v: unknown, key: string): RegExp {
  if (typeof v !== 'string') throw new ConfigError(`${key}: must be a regular expression string`);
  try {
    return new RegExp(v);
  } catch (e) {
    throw new ConfigError(`${key}: invalid regular expression: ${(e as Error).message}`);
  }
}

function deepFreeze<T>(o: T): T {
  if (o instanceof RegExp || o instanceof Map) return Object.freeze(o);
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
