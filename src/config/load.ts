/**
 * Parse, validate and freeze the configuration, once. Unknown keys and bad values are
 * rejected with a message naming the key, so a typo never silently falls back to a
 * default. `${VAR}` in string values is replaced from the environment here and nowhere else.
 */
import fs from 'node:fs';
import YAML from 'yaml';
import { type Config, DEFAULT_CONFIG_YAML, type LogLevel } from './schema.js';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Reads one YAML mapping, remembering which keys were used so leftovers are errors. */
export class Section {
  private readonly used = new Set<string>();
  constructor(
    readonly path: string,
    private readonly obj: Obj,
  ) {}

  static of(path: string, v: unknown): Section {
    if (v === undefined || v === null) return new Section(path, {});
    if (!isObj(v)) throw new ConfigError(`${path || 'config'}: must be a mapping`);
    return new Section(path, v);
  }

  key(k: string): string {
    return this.path ? `${this.path}.${k}` : k;
  }

  raw(k: string): unknown {
    this.used.add(k);
    return this.obj[k];
  }

  section(k: string): Section {
    return Section.of(this.key(k), this.raw(k));
  }

  string(k: string, def: string): string;
  string(k: string, def?: string): string | undefined;
  string(k: string, def?: string): string | undefined {
    const v = this.raw(k);
    if (v === undefined || v === null) return def;
    if (typeof v !== 'string' && typeof v !== 'number') throw new ConfigError(`${this.key(k)}: must be a string`);
    return expandEnv(String(v), this.key(k));
  }

  bool(k: string, def: boolean): boolean {
    const v = this.raw(k);
    if (v === undefined || v === null) return def;
    if (typeof v !== 'boolean') throw new ConfigError(`${this.key(k)}: must be true or false`);
    return v;
  }

  durationMs(k: string, def: string): number {
    const v = this.raw(k) ?? def;
    const ms = parseDurationMs(v);
    if (ms === undefined) throw new ConfigError(`${this.key(k)}: "${String(v)}" is not a duration (e.g. 30s, 5m, 24h)`);
    return ms;
  }

  bytes(k: string, def: string | number): number {
    const v = this.raw(k) ?? def;
    const n = parseBytes(v);
    if (n === undefined) throw new ConfigError(`${this.key(k)}: "${String(v)}" is not a size (e.g. 4MiB, 10GiB, 1048576)`);
    return n;
  }

  list(k: string): unknown[] {
    const v = this.raw(k);
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) throw new ConfigError(`${this.key(k)}: must be a list`);
    return v;
  }

  entries(): Array<[string, unknown]> {
    for (const k of Object.keys(this.obj)) this.used.add(k);
    return Object.entries(this.obj);
  }

  /** Fail on any key nobody asked for. */
  done(): void {
    for (const k of Object.keys(this.obj)) {
      if (!this.used.has(k)) throw new ConfigError(`${this.key(k)}: unknown key`);
    }
  }
}

function expandEnv(s: string, key: string): string {
  return s.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => {
    const v = process.env[name];
    if (v === undefined) throw new ConfigError(`${key}: environment variable ${name} is not set`);
    return v;
  });
}

export function parseDurationMs(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return v * 1000;
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(v.trim());
  if (!m) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? 's']!;
  return Math.round(Number(m[1]) * unit);
}

export function parseBytes(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$/.exec(v.trim());
  if (!m) return undefined;
  const mult: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 };
  return Math.round(Number(m[1]) * mult[m[2] ?? 'B']!);
}

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
  const storage = root.string('storage', './storage');
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
  root.done();
  return deepFreeze({ listen, storage, log, limits, http });
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
  return parseConfigYaml(text, file);
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}
