/**
 * Regression: a client joining a blob fill in the window between the temp file being
 * renamed into place and the fill being marked committed got ENOENT on the temp file,
 * which surfaced as HTTP 500 (seen with 8 concurrent containerd pulls,
 * test/e2e/pullthrough-registry.test.ts). The local store below runs for real; the test
 * holds that window open by pausing its rename (or, for a duplicate, its removal of the
 * temp file) through the fs/promises module object, so the race is deterministic here.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { FillManager } from '../../src/cache/fill.js';
import type { Digest, RepoName } from '../../src/registry/names.js';
import { LocalBlobStore } from '../../src/storage/blobs.js';
import { MetadataStore } from '../../src/storage/db.js';
import { storagePaths } from '../../src/storage/paths.js';

type FsHooks = { rename: typeof fs.rename; rm: typeof fs.rm };

/** `hold` names the store's step to pause right after it ran: the rename into blobs/, or the removal of a temp file. */
async function setup(t: import('ava').ExecutionContext, hold: 'rename' | 'rm') {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-fill-'));
  const paths = storagePaths(root);
  const meta = new MetadataStore(paths.db);
  const blobs = new LocalBlobStore(paths, meta);
  await blobs.recover();
  let windowOpen!: () => void;
  const inWindow = new Promise<void>((r) => (windowOpen = r));
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const target = fs as unknown as FsHooks;
  const orig = { rename: target.rename, rm: target.rm };
  let armed = false;
  const pause = async () => {
    if (!armed) return;
    armed = false;
    windowOpen();
    await released; // the real store fsyncs the directory and writes the DB row after this
  };
  target.rename = async (from, to) => {
    await orig.rename(from, to);
    if (hold === 'rename' && String(to).startsWith(paths.blobsDir)) await pause();
  };
  target.rm = async (p, opts) => {
    await orig.rm(p, opts);
    if (hold === 'rm' && String(p).startsWith(paths.tmpDir)) await pause();
  };
  t.teardown(async () => {
    Object.assign(target, orig);
    meta.close();
    await fs.rm(root, { recursive: true, force: true });
  });
  const fills = new FillManager(blobs, pino({ level: 'silent' }), Number.MAX_SAFE_INTEGER);
  return { fills, blobs, inWindow, release, arm: () => (armed = true) };
}

const data = Buffer.from('regmirror '.repeat(5000));
const digest = `sha256:${createHash('sha256').update(data).digest('hex')}` as Digest;
const repo = 'library/busybox' as RepoName;
const source = {
  async open() {
    return { size: data.length, body: (async function* () { yield data; })() };
  },
};

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function readAll(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c);
  return Buffer.concat(chunks);
}

test.serial('a reader joining after the rename but before commit() gets the bytes (temp file renamed)', async (t) => {
  const { fills, inWindow, release, arm } = await setup(t, 'rename');
  arm();
  const first = fills.fill(digest, repo, 'up|library/busybox', source);
  await inWindow;
  const joined = fills.fill(digest, repo, 'up|library/busybox', source);
  t.is(joined, first, 'joins the in-flight fill');
  t.is(joined.state, 'streaming');
  const reading = readAll(joined.reader(0, data.length - 1));
  await sleep(50); // the reader has tried the (gone) temp file by now
  release();
  t.true((await reading).equals(data));
  await first.done;
});

test.serial('a reader joining while a duplicate temp file is being dropped reads the stored blob', async (t) => {
  const { fills, blobs, inWindow, release, arm } = await setup(t, 'rm');
  // Already stored: the store keeps its file, links it, and removes the fill's temp file.
  const stored = blobs.stage({ algorithm: 'sha256' });
  await stored.append(data);
  await stored.commit(digest, { repo, provenance: 'cached' });
  arm();
  const first = fills.fill(digest, repo, 'up|library/busybox', source);
  await inWindow;
  const reading = readAll(fills.fill(digest, repo, 'up|library/busybox', source).reader(0, data.length - 1));
  await sleep(50);
  release();
  t.true((await reading).equals(data));
  await first.done;
});
