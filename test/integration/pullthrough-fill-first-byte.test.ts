/**
 * A blob fill that fails before its first byte (found by the soak, bench/soak.mjs: with the
 * upstream killed or frozen every few seconds, two clients saw "socket hang up" on cold
 * blobs). The upstream answered 200 with a Content-Length, then died before sending a
 * byte, and the resumes failed the same way; the mirror had already committed to a 200
 * and closed the connection without any response. Nothing had gone out yet, so the client
 * must get a clean 503 UNAVAILABLE instead; once bytes went out, a failure still aborts the
 * transfer (pullthrough-blobs.test.ts covers that).
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import { startServer } from '../helpers/server.js';
import { errorCode, http } from '../helpers/http.js';
import { makeBlob, randomBytes } from '../fixtures/images.js';
import type { Digest } from '../../src/registry/names.js';
import { fetchStream, startFake, upstreamEntry, waitFor } from './_pullthrough.js';

const UP = 'hub.test';
const REPO = 'library/first-byte';
const WAIT_MS = 30_000;

test('a fill whose upstream dies before the first byte answers 503 UNAVAILABLE (not a dropped connection); nothing is cached', async (t) => {
  const fake = await startFake(t);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true }) }, defaultUpstream: UP });
  const blob = makeBlob(randomBytes(256 * 1024, 'first-byte'), 'application/vnd.oci.image.layer.v1.tar');
  fake.addBlob(REPO, blob);
  const url = `${s.url}/v2/${REPO}/blobs/${blob.digest}`;

  // Every upstream GET (the first and each resume) sends 200 headers, then resets with 0 bytes.
  fake.faults.push({ method: 'GET', path: /\/blobs\//, resetAfterBytes: 0 });
  const res = await http('GET', url);
  t.is(res.status, 503, res.body.toString());
  t.is(errorCode(res), 'UNAVAILABLE');
  t.true(res.header('content-type')?.startsWith('application/json'), 'an OCI JSON error body');
  const gets = fake.find({ method: 'GET', path: /\/blobs\// });
  t.true(gets.length >= 2, `the fill tried to resume: ${gets.length} upstream GETs`);
  t.true(gets.every((r) => r.reset && r.bytes === 0));
  t.is(s.db().blobSize(blob.digest as Digest), undefined, 'nothing cached');
  await waitFor(async () => (await fs.readdir(path.join(s.dataDir, 'storage', 'tmp'))).length === 0, WAIT_MS, 'temp file removed');

  // A Range request on the same failing fill gets the same clean answer.
  const ranged = await http('GET', url, { headers: { range: 'bytes=1000-1999' } });
  t.is(ranged.status, 503);
  t.is(errorCode(ranged), 'UNAVAILABLE');

  // Upstream healthy again: served whole and cached.
  fake.faults.length = 0;
  const ok = await fetchStream(url);
  t.is(ok.status, 200);
  t.is(ok.error, null);
  t.true(ok.body.equals(blob.bytes));
  await waitFor(() => s.db().blobSize(blob.digest as Digest) === blob.size, WAIT_MS, 'blob committed');
});
