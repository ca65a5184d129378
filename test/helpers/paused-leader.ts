/**
 * A gc-leader in a process of its own, for the fencing test (shared-fencing.test.ts):
 * `node paused-leader.js <storage JSON> <gate file>`. It runs one eviction pass with
 * cache.maxBytes 1 (everything cached is a candidate) under the `gc-leader` lease (TTL
 * 1.5 s), and right after the lease is granted, before the pass's first change, prints
 * `leased <token>` and blocks synchronously (no timer runs: no renewal, as in a real
 * pause) until the gate file exists. The test SIGSTOPs it there, lets the lease expire,
 * takes it over, creates the gate and SIGCONTs it: the pass then tries its first change
 * with the old token. The gate only pins where the pause falls (the worst point); the
 * refusal is PostgreSQL's. Prints the pass's result as JSON on its last line.
 */
import { existsSync } from 'node:fs';
import { Evictor } from '../../src/cache/eviction.js';
import { configFromObject } from '../../src/config/load.js';
import { openStorage, stderrLog } from '../../src/storage/open.js';
import { storagePaths } from '../../src/storage/paths.js';

const [storageJson, gate] = process.argv.slice(2);
if (!storageJson || !gate) throw new Error('usage: paused-leader.js <storage JSON> <gate file>');
const config = configFromObject({ storage: JSON.parse(storageJson) as Record<string, unknown>, cache: { maxBytes: 1, deleteGrace: '0s' } });
const storage = await openStorage(config.store, storagePaths(config.storage), stderrLog);
const owner = `paused-leader:${process.pid}`;
const sleeper = new Int32Array(new SharedArrayBuffer(4));
const evictor = new Evictor(storage.metadata, storage.blobs, config.cache, {
  leader: { coordination: storage.coordination, owner, ttlMs: 1500 },
  ...(storage.deferredDeletes ? { deferred: { deletes: storage.deferredDeletes, graceMs: 0 } } : {}),
  // Called by the pass once it holds the lease, before anything is read or changed.
  flush: async () => {
    const held = await storage.coordination.leaseHolder('gc-leader');
    process.stdout.write(`leased ${held?.owner === owner ? held.token : 'not-held'}\n`);
    // Bounded: at most 2 minutes, then the pass goes on (the test will have failed by then).
    for (let i = 0; i < 2400 && !existsSync(gate); i++) Atomics.wait(sleeper, 0, 0, 50);
  },
});
try {
  const result = await evictor.run();
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  await storage.close();
}
