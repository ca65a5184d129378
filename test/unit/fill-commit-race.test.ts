/**
 * Regression: a client joining a blob fill in the window between the temp file being
 * renamed into place and the fill being marked committed got ENOENT on the temp file,
 * which surfaced as HTTP 500 (seen with 8 concurrent containerd pulls,
 * test/e2e/pullthrough-registry.test.ts). The stub BlobStore below holds that window
 * open, so the race is deterministic here.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { FillManager } from '../../src/cache/fill.js';
import type { Digest, RepoName } from '../../src/registry/names.js';
import type { BlobStore } from '../../src/storage/blobs.js';
import { storagePaths } from '../../src/storage/paths.js';

async function setup(t: import('ava').ExecutionContext, onCommit: (src: string, final: string) => Promise<void>) {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-fill-'));
  t.teardown(() => fs.rm(root, { recursive: true, force: true }));
  const paths = storagePaths(root);
  await fs.mkdir(path.dirname(paths.tempFile()), { recursive: true });
  let windowOpen!: () => void;
  const inWindow = new Promise<void>((r) => (windowOpen = r));
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const blobs = {
    async commit(src: string, digest: Digest): Promise<void> {
      const final = paths.blob(digest);
      await fs.mkdir(path.dirname(final), { recursive: true });
      await onCommit(src, final);
      windowOpen();
      await released; // the real store fsyncs the directory and writes the DB row here
    },
  } as unknown as BlobStore;
  const fills = new FillManager(paths, blobs, pino({ level: 'silent' }), Number.MAX_SAFE_INTEGER);
  return { fills, inWindow, release };
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

test('a reader joining after the rename but before commit() gets the bytes (temp file renamed)', async (t) => {
  const { fills, inWindow, release } = await setup(t, (src, final) => fs.rename(src, final));
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

test('a reader joining while a duplicate temp file is being dropped reads the stored blob', async (t) => {
  const { fills, inWindow, release } = await setup(t, async (src, final) => {
    await fs.copyFile(src, final); // already stored: the store keeps its file and removes ours
    await fs.rm(src);
  });
  const first = fills.fill(digest, repo, 'up|library/busybox', source);
  await inWindow;
  const reading = readAll(fills.fill(digest, repo, 'up|library/busybox', source).reader(0, data.length - 1));
  await sleep(50);
  release();
  t.true((await reading).equals(data));
  await first.done;
});
