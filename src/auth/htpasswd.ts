/**
 * htpasswd users (bcrypt entries as `htpasswd -B` writes them: $2y$/$2a$/$2b$). The file
 * is re-read when it changes, so adding or rotating a user needs no restart. Successful
 * checks are cached briefly (Basic auth repeats credentials on every request, and bcrypt
 * is deliberately slow); unknown users still cost one bcrypt compare so response time
 * does not reveal which user names exist.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import bcrypt from 'bcryptjs';
import { LRUCache } from 'lru-cache';
import { countBounded } from '../lru.js';

const dummyHashes = new Map<number, string>();
/**
 * A real bcrypt hash to compare against for unknown users. Its cost must match the file's
 * entries (htpasswd -B defaults to 5, other tools to 10 or more): a different cost makes
 * unknown users measurably slower or faster than known ones.
 */
function dummy(cost: number): string {
  let h = dummyHashes.get(cost);
  if (!h) {
    h = bcrypt.hashSync('regmirror-dummy-password', cost);
    dummyHashes.set(cost, h);
  }
  return h;
}

/** The most common bcrypt cost among the entries (10 for an empty file). */
function typicalCost(hashes: Iterable<string>): number {
  const counts = new Map<number, number>();
  for (const h of hashes) {
    const c = Number(h.slice(4, 6));
    counts.set(c, (counts.get(c) ?? 0) + 1);
  }
  let best = 10;
  let n = 0;
  for (const [c, k] of counts) if (k > n || (k === n && c > best)) [best, n] = [c, k];
  return Math.min(Math.max(best, 4), 31);
}

export class Htpasswd {
  private users = new Map<string, string>();
  private dummyCost = 10;
  private mtimeMs = -1;
  private readonly okCache = new LRUCache<string, Buffer>({ ...countBounded(10_000), ttl: 5 * 60_000 });

  constructor(private readonly file: string) {
    this.reload();
  }

  private reload(): void {
    const st = fs.statSync(this.file);
    if (st.mtimeMs === this.mtimeMs) return;
    const users = new Map<string, string>();
    for (const line of fs.readFileSync(this.file, 'utf8').split(/\r?\n/)) {
      const t = line.trim();
      if (!t || t.startsWith('#')) continue;
      const i = t.indexOf(':');
      if (i <= 0) continue;
      const hash = t.slice(i + 1);
      if (/^\$2[aby]\$\d\d\$/.test(hash)) users.set(t.slice(0, i), hash.replace(/^\$2y\$/, '$2b$'));
    }
    this.users = users;
    this.dummyCost = typicalCost(users.values());
    dummy(this.dummyCost); // made now, so the first unknown user is not slower than later ones
    this.mtimeMs = st.mtimeMs;
    this.okCache.clear();
  }

  async verify(user: string, password: string): Promise<boolean> {
    try {
      this.reload();
    } catch {
      // Keep the last good user list if the file is briefly missing during a rotation.
    }
    const hash = this.users.get(user);
    const key = `${user}\0${hash ?? ''}`;
    const fingerprint = createHash('sha256').update(`${key}\0${password}`).digest();
    const cached = this.okCache.get(key);
    if (cached && timingSafeEqual(cached, fingerprint)) return true;
    const ok = await bcrypt.compare(password, hash ?? dummy(this.dummyCost));
    if (ok && hash) {
      this.okCache.set(key, fingerprint);
      return true;
    }
    return false;
  }
}
