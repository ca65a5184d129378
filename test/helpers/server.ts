/** Start a real regmirror on 127.0.0.1:<random port> with a temp data dir, for tests. */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { ExecutionContext } from 'ava';
import { buildApp, type App } from '../../src/app.js';
import { configFromObject } from '../../src/config/load.js';
import { createLogger } from '../../src/ops/logger.js';
import { MetadataDb } from '../../src/storage/db.js';

export interface TestServer {
  app: App;
  /** http://127.0.0.1:<port> */
  url: string;
  /** 127.0.0.1:<port>, for skopeo/containerd references */
  hostPort: string;
  dataDir: string;
  /** Every log line the server wrote (JSON strings), for redaction tests. */
  logs: string[];
  /**
   * A second connection to the server's database, for assertions on committed rows (the
   * SQL layer is internal to storage/; the app itself only has the async port). Opened on
   * first use, closed at teardown.
   */
  db(): MetadataDb;
}

/** A connection to the database of a storage directory (see TestServer.db); closed at teardown. */
export function openDb(t: ExecutionContext, storageDir: string): MetadataDb {
  const db = new MetadataDb(path.join(storageDir, 'regmirror.db'));
  t.teardown(() => db.close());
  return db;
}

export async function tempDir(t: ExecutionContext, prefix = 'regmirror-test-'): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** `config` is merged over a minimal test config (YAML-shaped object, as in a file). */
export async function startServer(t: ExecutionContext, config: Record<string, unknown> = {}): Promise<TestServer> {
  const dataDir = await tempDir(t);
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      logs.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      cb();
    },
  });
  const cfg = configFromObject({ listen: '127.0.0.1:0', storage: path.join(dataDir, 'storage'), log: { level: 'debug' }, ...config });
  const app = await buildApp(cfg, { logger: createLogger(cfg, sink) });
  const addr = await app.listen(0, '127.0.0.1');
  t.teardown(() => app.close());
  let db: MetadataDb | null = null;
  return { app, url: addr.url, hostPort: `127.0.0.1:${addr.port}`, dataDir, logs, db: () => (db ??= openDb(t, cfg.storage)) };
}
