/** Large local blobs take the direct double-buffered path (src/http/sendfile.ts). */
import test from 'ava';
import { createHash } from 'node:crypto';
import { Agent, type IncomingMessage, get } from 'node:http';
import { request } from 'undici';
import { sendBuffersInUse } from '../../src/http/sendfile.js';
import { randomBytes } from '../fixtures/images.js';
import { agent, http, pushBlob } from '../helpers/http.js';
import { startServer } from '../helpers/server.js';
import { waitFor } from '../helpers/tools.js';

const SIZE = 9 * 1024 * 1024 + 12345; // several 1 MiB chunks plus a partial one

test('large blob: full GET, ranges across chunk boundaries, and a client abort mid-body', async (t) => {
  const s = await startServer(t);
  const bytes = randomBytes(SIZE, 'large-blob');
  const digest = await pushBlob(s.url, 'big/blob', bytes);
  const url = `${s.url}/v2/big/blob/blobs/${digest}`;

  const full = await http('GET', url);
  t.is(full.status, 200);
  t.is(full.header('content-length'), String(SIZE));
  t.is(full.header('docker-content-digest'), digest);
  t.is(full.header('docker-distribution-api-version'), 'registry/2.0');
  t.true(full.body.equals(bytes));

  for (const [a, b] of [
    [1024 * 1024 - 1, 6 * 1024 * 1024 + 1],
    [0, 4 * 1024 * 1024],
    [SIZE - 5 * 1024 * 1024, SIZE - 1],
  ] as const) {
    const r = await http('GET', url, { headers: { range: `bytes=${a}-${b}` } });
    t.is(r.status, 206);
    t.is(r.header('content-range'), `bytes ${a}-${b}/${SIZE}`);
    t.true(r.body.equals(bytes.subarray(a, b + 1)), `range ${a}-${b}`);
  }

  // Abort after the first chunk: the server must stay healthy and keep serving.
  const ac = new AbortController();
  const res = await request(url, { dispatcher: agent, signal: ac.signal });
  let got = 0;
  let aborted = false;
  try {
    for await (const c of res.body) {
      got += (c as Buffer).length;
      if (got > 1024 * 1024) ac.abort();
    }
  } catch {
    aborted = true;
  }
  t.true(aborted && got < SIZE, 'the client stopped reading mid-body');
  const again = await http('GET', url);
  t.true(again.body.equals(bytes));
  t.true(s.logs.some((l) => l.includes('"status":206')), 'direct responses are in the access log');
});

test.serial('many large blob streams at once share a bounded number of send buffers, and every body is whole', async (t) => {
  const s = await startServer(t);
  // Serial: the buffer count is per process, so no other test may stream at the same time.
  // Larger than loopback's socket buffers, so a client that does not read stalls the server's writes.
  const bytes = randomBytes(48 * 1024 * 1024, 'many-streams');
  const digest = await pushBlob(s.url, 'big/many', bytes);
  const expected = createHash('sha256').update(bytes).digest('hex');
  t.is(sendBuffersInUse(), 0, 'no response holds a buffer before the test');
  const STREAMS = 20;
  const pool = new Agent({ keepAlive: false, maxSockets: STREAMS });
  t.teardown(() => pool.destroy());
  const responses = await Promise.all(
    Array.from({ length: STREAMS }, () => {
      return new Promise<IncomingMessage>((resolve, reject) => {
        const req = get(`${s.url}/v2/big/many/blobs/${digest}`, { agent: pool }, (res) => {
          res.pause(); // read nothing yet: the server's writes back up
          resolve(res);
        });
        req.on('error', reject);
      });
    }),
  );
  // Every stream has taken its first buffer once the count reaches STREAMS; from then on none can
  // take a second. Each second buffer was taken with fewer than 16 in use, so at most 16 plus the
  // streams that had none yet (at least 8 had one): 28. Two per stream would be 40.
  const held = await waitFor(() => (sendBuffersInUse() >= STREAMS ? sendBuffersInUse() : undefined), 60_000, `${STREAMS} streams holding a send buffer`);
  t.true(held <= STREAMS + 8, `${held} send buffers in use by ${STREAMS} stalled streams`);
  const digests = await Promise.all(
    responses.map(async (res) => {
      t.is(res.statusCode, 200);
      const h = createHash('sha256');
      for await (const c of res) h.update(c as Buffer);
      return h.digest('hex');
    }),
  );
  t.deepEqual(new Set(digests), new Set([expected]), 'every stream got the whole blob');
  await waitFor(() => (sendBuffersInUse() === 0 ? true : undefined), 30_000, 'every send buffer given back');
});
