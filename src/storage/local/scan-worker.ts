/**
 * Worker thread of scan.ts: runs the whole-store read queries of eviction on its own
 * connection to the same database (WAL: it reads the last committed state and never
 * blocks the main connection's writers), so the server's event loop keeps serving.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { MetadataDb } from '../db.js';
import { packCandidates, transferList, type PackedCandidates } from './candidates.js';
import type { ScanOp, ScanReply, ScanRequest } from './scan.js';

const db = new MetadataDb((workerData as { file: string }).file); // already migrated: a no-op
const ops: { [K in ScanOp]: (...args: never[]) => unknown } = {
  cachedImages: () => db.cachedImages(),
  looseBlobs: (before: number) => db.looseBlobs(before),
  // Both scans, merged and ordered here, answered as transferred columns (candidates.ts).
  evictionCandidates: (before: number) => packCandidates(db.cachedImages(), db.looseBlobs(before)),
  // The main connection's WAL checkpoints (checkpoint.ts): the copy and fsync happen here.
  checkpoint: () => db.db.pragma('wal_checkpoint(PASSIVE)'),
};

parentPort!.on('message', ({ id, op, args }: ScanRequest) => {
  let reply: ScanReply;
  let transfer: ArrayBuffer[] = [];
  try {
    const value = (ops[op] as (...a: unknown[]) => unknown)(...args);
    if (op === 'evictionCandidates') transfer = transferList(value as PackedCandidates);
    reply = { id, value };
  } catch (e) {
    reply = { id, error: (e as Error).message };
  }
  parentPort!.postMessage(reply, transfer);
});
