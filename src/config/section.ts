/**
 * Reading one YAML mapping with clear errors: `Section` remembers which keys were used
 * (leftovers are errors naming the key), and typed getters expand `${VAR}` and parse
 * durations and sizes. Shared by load.ts and the per-area parsers beside it.
 */
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

  /** A duration where null means "no limit"; absent = `def`. Zero is refused (it would mean "immediately"). */
  optionalDurationMs(k: string, def: string | null): number | null {
    const v = this.raw(k);
    if (v === null || (v === undefined && def === null)) return null;
    const ms = this.durationMs(k, def ?? '0');
    if (ms <= 0) throw new ConfigError(`${this.key(k)}: must be greater than zero (null = no limit)`);
    return ms;
  }

  /** A size where null means "unlimited"; absent = `def`. Zero is refused (it would evict everything). */
  optionalBytes(k: string, def: string | null): number | null {
    const v = this.raw(k);
    if (v === null || (v === undefined && def === null)) return null;
    const n = this.bytes(k, def ?? 0);
    if (n <= 0) throw new ConfigError(`${this.key(k)}: must be greater than zero (null = unlimited)`);
    return n;
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

/** `${VAR}` (unset = error) and `${VAR:-default}` (unset or empty = default, as in sh). */
function expandEnv(s: string, key: string): string {
  return s.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}/g, (_, name: string, fallback: string | undefined) => {
    const v = process.env[name];
    if (fallback !== undefined) return v ? v : fallback.slice(2);
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

export function positiveInt(v: unknown, key: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new ConfigError(`${key}: must be a positive integer`);
  return v;
}
