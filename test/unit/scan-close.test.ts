/**
 * Closing the local store while a whole-store scan runs in the scan worker (scan.ts): the
 * scan is abandoned, not awaited and not rerun inline, so shutdown right after an
 * eviction pass does not wait a minute for a candidate scan at a million blobs. The slow scan is
 * injected (test/fixtures/slow-scan-worker.ts): seconds inside native SQLite.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import type { Digest, RepoName } from '../../src/registry/names.js';
import { MetadataDb } from '../../src/storage/db.js';
import { LocalMetadataStore } from '../../src/storage/local/metadata.js';
import { waitFor } from '../helpers/tools.js';

test('close does not wait for a scan in progress in the scan worker, and abandons it', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-scan-close-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'regmirror.db');
  const db = new MetadataDb(file);
  const store = new LocalMetadataStore(db, new URL('../fixtures/slow-scan-worker.js', import.meta.url));

  const counting = store.cachedImages();
  counting.catch(() => undefined); // asserted below, after close
  // The worker starts on first use and then enters the slow query; generous on a busy machine.
  await waitFor(() => (fs.existsSync(`${file}.scan-started`) ? true : undefined), 60_000, 'the slow scan to start');

  const started = performance.now();
  await store.close();
  const ms = performance.now() - started;
  t.false(fs.existsSync(`${file}.scan-done`), 'close returned while the count was still running');
  t.true(ms < 2000, `close took ${ms.toFixed(0)} ms`);
  t.false(db.db.open, 'the main connection is closed');
  await t.throwsAsync(counting, { message: /closed/ }, 'the abandoned count fails; it is not rerun inline');
});

test('the whole-store scans call scan_alive per row, where the scan worker can be terminated', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-scan-alive-'));
  const db = new MetadataDb(path.join(dir, 'regmirror.db'));
  t.teardown(() => {
    db.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const repo = 'library/app' as RepoName;
  const d = (s: string) => `sha256:${createHash('sha256').update(s).digest('hex')}` as Digest;
  const body = Buffer.from('m');
  const refs = ['l1', 'l2', 'l3'].map((b) => ({ digest: d(b), kind: 'blob' as const }));
  db.putCachedManifest(repo, { digest: d('m'), mediaType: 'application/vnd.oci.image.manifest.v1+json', size: 1, artifactType: null, subject: null, annotations: null, body, refs }, null);
  for (const r of refs) db.recordBlob(repo, r.digest, 100, 'cached');
  db.recordBlob(repo, d('loose'), 100, 'cached');
  let calls = 0;
  db.db.function('scan_alive', { deterministic: false }, () => {
    calls++;
    return 1;
  });
  t.is(db.cachedBytesScan(), 400);
  t.true(calls >= 4, `cachedBytesScan: ${calls} calls`);
  calls = 0;
  t.is(db.cachedImages().length, 1);
  t.true(calls >= 1, `cachedImages: ${calls} calls`);
  calls = 0;
  t.is(db.looseBlobs(Date.now() + 1000).length, 1);
  t.true(calls >= 1, `looseBlobs: ${calls} calls`);
});
