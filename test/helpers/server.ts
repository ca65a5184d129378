/** Start a real regmirror on 127.0.0.1:<random port> with a temp data dir, for tests. */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { ExecutionContext } from 'ava';
import { buildApp, type App } from '../../src/app.js';
import { configFromObject } from '../../src/config/load.js';
import { createLogger } from '../../src/ops/logger.js';

export interface TestServer {
  app: App;
  /** http://127.0.0.1:<port> */
  url: string;
  /** 127.0.0.1:<port>, for skopeo/containerd references */
  hostPort: string;
  dataDir: string;
  /** Every log line the server wrote (JSON strings), for redaction tests. */
  logs: string[];
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
  return { app, url: addr.url, hostPort: `127.0.0.1:${addr.port}`, dataDir, logs };
}
