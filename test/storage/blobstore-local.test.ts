/**
 * The blob store conformance suite against the local driver (files + SQLite rows), plus
 * what only the local driver can show: where its leftovers live, and a stage reader
 * arriving in the window between the rename into blobs/ and the row.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { RepoName } from '../../src/registry/names.js';
import { LocalBlobStore } from '../../src/storage/blobs.js';
import { MetadataStore } from '../../src/storage/db.js';
import { storagePaths } from '../../src/storage/paths.js';
import { LocalUploadStore } from '../../src/storage/uploads.js';
import { type DriverFactory, blobStoreConformance, sha256 } from './blobstore-conformance.js';
import { uploadStoreConformance } from './uploadstore-conformance.js';

const local: DriverFactory = async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-blobstore-'));
  const paths = storagePaths(root);
  const metas: MetadataStore[] = [];
  const open = async () => {
    const meta = new MetadataStore(paths.db);
    metas.push(meta);
    const store = new LocalBlobStore(paths, meta);
    return { meta, store, uploads: new LocalUploadStore(paths, meta, store) };
  };
  let current = await open();
  await current.store.recover();
  t.teardown(async () => {
    for (const m of metas) m.close();
    await fs.rm(root, { recursive: true, force: true });
  });
  return {
    store: current.store,
    forget: async (d) => current.meta.deleteBlobRow(d),
    restart: async () => {
      current = await open(); // the old handles stay open, as after a SIGKILL nobody closes them
      return current.store;
    },
    leftovers: async () => fs.readdir(paths.tmpDir),
    uploads: current.uploads,
    replica: async () => {
      const other = await open(); // SQLite (WAL) and the files, shared as by two processes
      return { store: other.store, uploads: other.uploads };
    },
    uploadLeftovers: async () => fs.readdir(paths.uploadsDir),
  };
};

blobStoreConformance(test, 'local', local);
uploadStoreConformance(test, 'local', local);

test.serial('local: a stage reader arriving between the rename and the row waits and reads the committed blob', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-blobstore-'));
  const paths = storagePaths(root);
  const meta = new MetadataStore(paths.db);
  const store = new LocalBlobStore(paths, meta);
  await store.recover();
  const target = fs as unknown as { rename: typeof fs.rename };
  const rename = target.rename;
  let inWindow!: () => void;
  const windowOpen = new Promise<void>((r) => (inWindow = r));
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  target.rename = async (from, to) => {
    await rename(from, to);
    if (String(to).startsWith(paths.blobsDir)) {
      inWindow();
      await released;
    }
  };
  t.teardown(async () => {
    target.rename = rename;
    meta.close();
    await fs.rm(root, { recursive: true, force: true });
  });
  const data = randomBytes(200_000);
  const w = store.stage({ algorithm: 'sha256' });
  await w.append(data);
  const committing = w.commit(sha256(data), { repo: 'a/b' as RepoName, provenance: 'cached' });
  await windowOpen;
  t.deepEqual(await fs.readdir(paths.tmpDir), [], 'the temp file is gone: renamed into place');
  t.is(await store.stat(sha256(data)), null, 'no row yet: not visible');
  let got = false;
  const reading = w.reader().then(async (r) => {
    got = true;
    const buf = Buffer.alloc(data.length);
    let pos = 0;
    while (pos < data.length) pos += await r.read(buf.subarray(pos), data.length - pos, pos);
    await r.close();
    return buf;
  });
  await new Promise((r) => setImmediate(r));
  t.false(got, 'the reader waits for the outcome instead of failing');
  release();
  await committing;
  t.true((await reading).equals(data));
});

test('local: files sit at blobs/<alg>/<xx>/<hex>; list() reports stray names as null and removes them; a file without its row is no blob', async (t) => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-blobstore-'));
  const paths = storagePaths(root);
  const meta = new MetadataStore(paths.db);
  t.teardown(async () => {
    meta.close();
    await fs.rm(root, { recursive: true, force: true });
  });
  const store = new LocalBlobStore(paths, meta);
  await store.recover();
  const data = randomBytes(1000);
  const w = store.stage({ algorithm: 'sha256' });
  await w.append(data);
  await w.commit(sha256(data), { repo: 'a/b' as RepoName, provenance: 'pushed' });
  t.true((await fs.readFile(paths.blob(sha256(data)))).equals(data));
  await fs.mkdir(path.join(paths.blobsDir, 'sha256', 'zz'), { recursive: true });
  await fs.writeFile(path.join(paths.blobsDir, 'sha256', 'zz', 'not-a-digest'), 'x');
  const entries = [];
  for await (const e of store.list()) entries.push(e);
  const stray = entries.filter((e) => e.digest === null);
  t.is(stray.length, 1);
  t.deepEqual(entries.filter((e) => e.digest !== null).map((e) => e.digest), [sha256(data)]);
  await stray[0]!.remove();
  await t.throwsAsync(fs.access(path.join(paths.blobsDir, 'sha256', 'zz', 'not-a-digest')));
  // A complete file without its row (a crash between rename and row) is no blob: stat()
  // (the lookup callers do before open) says so, and list() hands it to GC.
  const orphan = randomBytes(500);
  await fs.mkdir(path.dirname(paths.blob(sha256(orphan))), { recursive: true });
  await fs.writeFile(paths.blob(sha256(orphan)), orphan);
  t.is(await store.stat(sha256(orphan)), null);
  const all = [];
  for await (const e of store.list()) all.push(e.digest);
  t.true(all.includes(sha256(orphan)), 'listed for GC');
});

/**
 * Wrap fs/promises (the store calls it through the module object): once armed, an unlink
 * under `dir` waits until a rename into `dir` completed, or 3 s.
 */
function holdUnlinksUntilRename(dir: string): { arm(): void; restore(): void } {
  const target = fs as unknown as { rename: typeof fs.rename; rm: typeof fs.rm };
  const orig = { rename: target.rename, rm: target.rm };
  let armed = false;
  let renamed!: () => void;
  const renamedInto = new Promise<void>((r) => (renamed = r));
  target.rename = async (from, to) => {
    await orig.rename(from, to);
    if (armed && String(to).startsWith(dir)) renamed();
  };
  target.rm = async (p, opts) => {
    if (armed && String(p).startsWith(dir)) await Promise.race([renamedInto, new Promise((r) => setTimeout(r, 3000))]);
    return orig.rm(p, opts);
  };
  return { arm: () => void (armed = true), restore: () => void Object.assign(target, orig) };
}

/**
 * A local store whose unlinks in blobs/ are held (once armed) until a rename into blobs/
 * happens or 3 s pass (longer than a commit's fsync on a busy machine, so a store that did
 * not wait would rename within it): the worst order for a delete racing a commit.
 */
async function storeWithHeldUnlinks(t: ExecutionContext) {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'regmirror-blobstore-'));
  const paths = storagePaths(root);
  const meta = new MetadataStore(paths.db);
  const store = new LocalBlobStore(paths, meta);
  await store.recover();
  const hold = holdUnlinksUntilRename(paths.blobsDir);
  t.teardown(async () => {
    hold.restore();
    meta.close();
    await fs.rm(root, { recursive: true, force: true });
  });
  return { paths, meta, store, hold };
}

test.serial('local: a commit of a digest whose file is being unlinked waits for the unlink (the new file is kept)', async (t) => {
  const { paths, meta, store, hold } = await storeWithHeldUnlinks(t);
  const data = randomBytes(100_000);
  const d = sha256(data);
  const link = { repo: 'a/b' as RepoName, provenance: 'cached' as const };
  const first = store.stage({ algorithm: 'sha256' });
  await first.append(data);
  await first.commit(d, link);
  const second = store.stage({ algorithm: 'sha256' });
  await second.append(data);
  await second.flush();
  hold.arm();
  meta.deleteBlobRow(d); // eviction: row first, then the file
  const deleting = store.delete(d);
  await second.commit(d, link);
  await deleting;
  t.deepEqual(await store.stat(d), { size: data.length });
  t.true((await fs.readFile(paths.blob(d))).equals(data), 'the committed file is there');
});

test.serial('local: a commit that checked after an eviction dropped the row but before it registered the file delete keeps its file', async (t) => {
  const { paths, meta, store, hold } = await storeWithHeldUnlinks(t);
  const data = randomBytes(100_000);
  const d = sha256(data);
  const first = store.stage({ algorithm: 'sha256' });
  await first.append(data);
  await first.commit(d, { repo: 'a/b' as RepoName, provenance: 'cached' });
  const copy = path.join(paths.tmpDir, 'second-copy');
  await fs.writeFile(copy, data);
  hold.arm();
  // The eviction's metadata change (async through the port) drops the row; a commit of the
  // same digest runs its check before the eviction gets to register the file delete.
  meta.deleteBlobRow(d);
  const committing = store.commit(copy, d, data.length, 'a/c' as RepoName, 'cached');
  const deleting = store.delete(d);
  await Promise.all([committing, deleting]);
  t.deepEqual(await store.stat(d), { size: data.length });
  t.true((await fs.readFile(paths.blob(d))).equals(data), 'the committed file is there');
});
