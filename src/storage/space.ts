/**
 * Free space, and recognising "disk full". A file write fails with ENOSPC (EDQUOT under a
 * quota), a database write with SQLITE_FULL; to a client all of them mean "the mirror
 * cannot store this now" (507, see insufficientStorage). Writes whose size is known up
 * front (blob fills, uploads with a Content-Length) are refused before the first byte when
 * they cannot fit: a doomed write would otherwise take the last free blocks from the
 * database and from smaller writes that still fit, and a fill refused before its response
 * headers gives the client a clear error instead of an aborted transfer.
 */
import fs from 'node:fs/promises';
import { INSUFFICIENT_STORAGE, RegistryError, insufficientStorage } from '../registry/errors.js';

const FULL_CODES = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL']);

/** Whether `e` says the storage is full (a raw fs/SQLite error, or our own 507). */
export function isStorageFull(e: unknown): boolean {
  if (e instanceof RegistryError) return e.status === INSUFFICIENT_STORAGE;
  const code = (e as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' && FULL_CODES.has(code);
}

/** Bytes this process may still write on the file system holding `dir` (Infinity if unknown). */
export async function freeBytes(dir: string): Promise<number> {
  try {
    const s = await fs.statfs(dir);
    // root may also use the blocks reserved for it (ext4 keeps 5% by default).
    const blocks = process.getuid?.() === 0 ? s.bfree : s.bavail;
    return blocks * s.bsize;
  } catch {
    return Number.POSITIVE_INFINITY; // no statfs here: let the write itself find out
  }
}

/** Throw 507 unless `bytes` more fit on the file system holding `dir`. */
export async function ensureFree(dir: string, bytes: number, headers?: Record<string, string>): Promise<void> {
  if (bytes > 0 && (await freeBytes(dir)) < bytes) throw insufficientStorage(headers);
}
