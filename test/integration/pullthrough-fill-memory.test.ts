/**
 * A client keeping up with a cold fill is served from the fill's memory (sendFillRange):
 * it takes no 1 MiB send buffer, which only a reader that fell behind the window needs
 * (issue #14 item 3: the pull-through high-water mark). Real sockets, in-process server
 * (the send-buffer count is this process's).
 */
import test from 'ava';
import { sendBuffersInUse } from '../../src/http/sendfile.js';
import { makeBlob, randomBytes } from '../fixtures/images.js';
import { startServer } from '../helpers/server.js';
import { fetchStream, startFake, upstreamEntry } from './_pullthrough.js';

const UP = 'hub.test';
const REPO = 'library/mem';
const KiB = 1024;

test('a client keeping up with a cold fill is served from memory without a send buffer', async (t) => {
  const fake = await startFake(t);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true }) }, defaultUpstream: UP });
  // 6 MiB (above the direct path's 4 MiB), paced so the client is always near the newest bytes.
  const blob = makeBlob(randomBytes(6 * 1024 * KiB, 'fill-memory'), 'application/vnd.oci.image.layer.v1.tar');
  fake.addBlob(REPO, blob);
  fake.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes: 256 * KiB, intervalMs: 20 } });
  t.is(sendBuffersInUse(), 0, 'no response holds a buffer before the test');
  let most = 0;
  let samples = 0;
  const r = await fetchStream(`${s.url}/v2/${REPO}/blobs/${blob.digest}`, {
    afterChunk: () => {
      samples++;
      most = Math.max(most, sendBuffersInUse());
    },
  });
  t.is(r.status, 200);
  t.true(r.body.equals(blob.bytes), 'exact bytes');
  t.true(samples > 10, `sampled during the transfer (${samples} chunks)`);
  t.is(most, 0, 'no send buffer taken by a reader served from the fill');
  t.is(fake.blobGets(blob.digest), 1);
});
