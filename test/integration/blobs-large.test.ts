/** Large local blobs take the direct double-buffered path (src/http/sendfile.ts). */
import test from 'ava';
import { request } from 'undici';
import { randomBytes } from '../fixtures/images.js';
import { agent, http, pushBlob } from '../helpers/http.js';
import { startServer } from '../helpers/server.js';

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
