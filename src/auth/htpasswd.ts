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

let dummyHash: string | null = null;
/** A real bcrypt hash to compare against for unknown users (same cost as htpasswd -B). */
function dummy(): string {
  dummyHash ??= bcrypt.hashSync('regmirror-dummy-password', 10);
  return dummyHash;
}

export class Htpasswd {
  private users = new Map<string, string>();
  private mtimeMs = -1;
  private readonly okCache = new LRUCache<string, Buffer>({ max: 10_000, ttl: 5 * 60_000 });

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
    const ok = await bcrypt.compare(password, hash ?? dummy());
    if (ok && hash) {
      this.okCache.set(key, fingerprint);
      return true;
    }
    return false;
  }
}
