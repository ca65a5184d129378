/**
 * The relay stage (cache/relaystage.ts) on the real local blob store: a relaying replica
 * spools locally and never stages in the store while the owner commits; its readers read
 * the spool back, then the committed blob; when the owner did not commit, it uploads the
 * spooled copy; wrong bytes are refused with nothing stored. The cluster side (leases,
 * peers, RGW) is covered by test/integration/shared-relay.test.ts and shared-fills.test.ts.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ClusterStage } from '../../src/cache/relaystage.js';
import type { Digest, RepoName } from '../../src/registry/names.js';
import { tempLocalStore } from '../helpers/localstore.js';
import type { PositionalReader } from '../../src/storage/ports.js';

const LINK = { repo: 'library/app' as RepoName, provenance: 'cached' as const };
const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

async function setup(t: ExecutionContext) {
  const { root, blobs } = await tempLocalStore(t, 'relay');
  let stages = 0;
  const stage = blobs.stage.bind(blobs);
  blobs.stage = (opts) => (stages++, stage(opts));
  const spoolDir = path.join(root, 'relay');
  return { blobs, spoolDir, stages: () => stages };
}

async function readAll(r: PositionalReader, size: number): Promise<Buffer> {
  const buf = Buffer.alloc(size);
  let pos = 0;
  while (pos < size) {
    const n = await r.read(buf.subarray(pos), size - pos, pos);
    if (n === 0) break;
    pos += n;
  }
  await r.close();
  return buf.subarray(0, pos);
}

test('a relay spools without a store stage, serves its readers from the spool, and after the owner\'s commit from the store', async (t) => {
  const { blobs, spoolDir, stages } = await setup(t);
  const bytes = randomBytes(3 * 1024 * 1024 + 17);
  const digest = digestOf(bytes);
  const s = new ClusterStage(blobs, { algorithm: 'sha256' }, spoolDir, {
    // The owner commits while the relay waits for it.
    awaitOwnerCommit: async (d) => {
      const w = blobs.stage({ algorithm: 'sha256' });
      await w.append(bytes);
      await w.commit(d, LINK);
      return 'stored';
    },
  });
  s.useRelay();
  let written = 0;
  s.onWritten = (n) => (written += n);
  for (let off = 0; off < bytes.length; off += 256 * 1024) await s.append(bytes.subarray(off, off + 256 * 1024));
  await s.flush();
  t.is(written, bytes.length);
  t.is(s.digest(), digest);
  t.true((await readAll(await s.reader(), bytes.length)).equals(bytes), 'a slow reader reads the spool');
  t.is(stages(), 0, 'nothing staged in the store while relaying');
  await s.commit(digest, LINK);
  t.is(stages(), 1, 'only the owner\'s stage');
  t.deepEqual(await fs.readdir(spoolDir), [], 'the spool is removed');
  t.true((await readAll(await s.reader(), bytes.length)).equals(bytes), 'a reader after the commit reads the committed blob');
});

test('when the owner did not commit, the relay uploads its spooled copy and commits it', async (t) => {
  const { blobs, spoolDir, stages } = await setup(t);
  const bytes = randomBytes(1024 * 1024 + 5);
  const digest = digestOf(bytes);
  const s = new ClusterStage(blobs, { algorithm: 'sha256' }, spoolDir, { awaitOwnerCommit: async () => 'store' });
  s.useRelay();
  await s.append(bytes);
  await s.commit(digest, LINK);
  t.is(stages(), 1);
  t.deepEqual(await blobs.stat(digest), { size: bytes.length });
  const body = (await blobs.open(digest))!;
  t.true((await readAll(body.positional()!, bytes.length)).equals(bytes));
  await body.close();
  t.deepEqual(await fs.readdir(spoolDir), []);
});

test('relayed bytes that do not match the digest: DIGEST_INVALID, nothing stored, the spool removed', async (t) => {
  const { blobs, spoolDir, stages } = await setup(t);
  const bytes = randomBytes(64 * 1024);
  const digest = digestOf(bytes);
  let asked = false;
  const s = new ClusterStage(blobs, { algorithm: 'sha256' }, spoolDir, { awaitOwnerCommit: async () => ((asked = true), 'store') });
  s.useRelay();
  const wrong = Buffer.from(bytes);
  wrong[100]! ^= 1;
  await s.append(wrong);
  await t.throwsAsync(s.commit(digest, LINK), { message: /does not match/ });
  t.false(asked, 'never waits for or takes over a commit of wrong bytes');
  t.is(stages(), 0);
  t.is(await blobs.stat(digest), null);
  t.deepEqual(await fs.readdir(spoolDir), []);
});
