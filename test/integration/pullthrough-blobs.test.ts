/**
 * Blob fills from the upstream (protocol.md 6.4, 6.7): single-flight, readers following a
 * growing file, Range on a filling blob, client aborts, upstream resets resumed with
 * Range, digest verification with the last byte held back. Every test counts the
 * upstream's GETs and the bytes it sent.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { startServer, type TestServer } from '../helpers/server.js';
import { errorCode, http } from '../helpers/http.js';
import { type Blob, makeBlob, randomBytes } from '../fixtures/images.js';
import type { FakeUpstream, FakeUpstreamOptions } from '../fixtures/fake-upstream.js';
import type { Digest } from '../../src/registry/names.js';
import { fetchStream, sleep, startFake, upstreamEntry, waitFor } from './_pullthrough.js';

const UP = 'hub.test';
const REPO = 'library/big';
const KiB = 1024;
/** Upper bound for background progress (fills, commits); generous because CI load varies. */
const WAIT_MS = 90_000; // generous: a loaded 2-core machine has stalled a 1 s upstream wait past 30 s

async function setup(t: ExecutionContext, fakeOpts: FakeUpstreamOptions = {}, upstream: Record<string, unknown> = {}): Promise<{ fake: FakeUpstream; s: TestServer }> {
  const fake = await startFake(t, fakeOpts);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true, ...upstream }) }, defaultUpstream: UP });
  return { fake, s };
}

function bigBlob(size: number, seed: string): Blob {
  return makeBlob(randomBytes(size, seed), 'application/vnd.oci.image.layer.v1.tar');
}

const blobUrl = (s: TestServer, b: Blob, repo = REPO) => `${s.url}/v2/${repo}/blobs/${b.digest}`;

function storedSize(s: TestServer, b: Blob): number | undefined {
  return s.db().blobSize(b.digest as Digest);
}

function blobFile(s: TestServer, b: Blob): string {
  const hex = b.digest.slice('sha256:'.length);
  return path.join(s.dataDir, 'storage', 'blobs', 'sha256', hex.slice(0, 2), hex);
}

async function exists(p: string): Promise<boolean> {
  return fs.stat(p).then(
    () => true,
    () => false,
  );
}

async function tmpFiles(s: TestServer): Promise<string[]> {
  return fs.readdir(path.join(s.dataDir, 'storage', 'tmp')).catch(() => []);
}

test('single-flight: 8 concurrent GETs of a cold blob cost exactly 1 upstream GET; a client leaving does not hurt the others', async (t) => {
  const { fake, s } = await setup(t);
  const blob = bigBlob(1024 * KiB, 'sf');
  fake.addBlob(REPO, blob);
  fake.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes: 64 * KiB, intervalMs: 25 } });

  const clients = Array.from({ length: 8 }, (_, i) => fetchStream(blobUrl(s, blob), i === 3 ? { abortAfterBytes: 200 * KiB } : {}));
  const results = await Promise.all(clients);
  results.forEach((r, i) => {
    t.is(r.status, 200, `client ${i}`);
    if (i === 3) return;
    t.is(r.error, null, `client ${i}`);
    t.is(r.body.length, blob.size, `client ${i}`);
    t.true(r.body.equals(blob.bytes), `client ${i} got the right bytes`);
  });
  t.true(results[3]!.body.length >= 200 * KiB && results[3]!.body.length < blob.size);
  t.is(fake.blobGets(blob.digest), 1, 'one upstream GET');
  t.is(fake.count({ method: 'HEAD' }), 0);
  t.is(fake.blobBytes(), blob.size, 'the blob crossed the upstream link once');
  t.is(fake.bytesSent, blob.size);
  await waitFor(() => storedSize(s, blob) === blob.size, WAIT_MS, 'blob committed');
  t.deepEqual(await fs.readFile(blobFile(s, blob)), blob.bytes);
});

test('clients joining a fill after the in-memory window moved on read the earlier bytes from the growing file', async (t) => {
  const { fake, s } = await setup(t);
  const MiB = 1024 * KiB;
  // Larger than the fill's in-memory window (4 MiB), so late joiners start on disk.
  const blob = bigBlob(24 * MiB, 'late-joiners');
  fake.addBlob(REPO, blob);
  fake.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes: 256 * KiB, intervalMs: 20 } });
  const upstreamProgress = () => {
    const up = fake.find({ method: 'GET', path: /\/blobs\// })[0];
    return { finished: up?.finished ?? false, bytes: up?.bytes ?? 0 };
  };

  const first = fetchStream(blobUrl(s, blob));
  await waitFor(() => upstreamProgress().bytes >= 12 * MiB, WAIT_MS, 'upstream past 12 MiB');
  t.false(upstreamProgress().finished, 'the fill is still running when the late clients arrive');
  const [a, whole, early, late] = await Promise.all([
    first,
    fetchStream(blobUrl(s, blob), { onFirstByte: upstreamProgress }),
    fetchStream(blobUrl(s, blob), { headers: { range: `bytes=${MiB}-${2 * MiB - 1}` }, onFirstByte: upstreamProgress }),
    fetchStream(blobUrl(s, blob), { headers: { range: `bytes=${20 * MiB}-` } }),
  ]);
  t.is(a.status, 200);
  t.true(a.body.equals(blob.bytes), 'first client');
  t.is(whole.status, 200);
  t.is(whole.error, null);
  t.true(whole.body.equals(blob.bytes), 'late whole-blob client');
  t.false((whole.atFirstByte as { finished: boolean }).finished, 'served from the fill, not the committed file');
  t.is(early.status, 206);
  t.true(early.body.equals(blob.bytes.subarray(MiB, 2 * MiB)), 'range behind the window');
  t.false((early.atFirstByte as { finished: boolean }).finished);
  t.is(late.status, 206);
  t.true(late.body.equals(blob.bytes.subarray(20 * MiB)), 'range ahead of the fill');
  t.is(fake.blobGets(blob.digest), 1, 'one upstream GET');
  t.is(fake.bytesSent, blob.size);
  await waitFor(() => storedSize(s, blob) === blob.size, WAIT_MS, 'blob committed');
});

test('a slow and a fast reader of one unthrottled fill both get exact bytes: the slow one from the file through reused buffers, long after the upstream finished', async (t) => {
  const { fake, s } = await setup(t);
  const MiB = 1024 * KiB;
  // Three times the fill's in-memory window: the slow reader ends up far behind it.
  const blob = bigBlob(24 * MiB, 'slow-and-fast');
  fake.addBlob(REPO, blob);
  const upstreamDone = () => fake.find({ method: 'GET', path: /\/blobs\// })[0]?.finished ?? false;
  let slowWaited = false;
  let slowAtUpstreamEnd = -1;
  const [slow, fast] = await Promise.all([
    // Reads 1 MiB, then stops reading until the upstream sent everything (its socket and the
    // server's buffers fill up meanwhile), then reads the rest slowly, so the server's writes
    // of file bytes queue up behind the socket while it reads on.
    fetchStream(blobUrl(s, blob), {
      afterChunk: async (n) => {
        if (n < MiB) return;
        if (slowWaited) return sleep(1);
        slowWaited = true;
        // 24 MiB through the fill on a loaded 2-core machine: a longer ceiling than WAIT_MS.
        await waitFor(upstreamDone, 4 * WAIT_MS, 'the upstream to finish sending');
        slowAtUpstreamEnd = n;
      },
    }),
    fetchStream(blobUrl(s, blob)),
  ]);
  t.is(fast.status, 200);
  t.is(fast.error, null);
  t.true(fast.body.equals(blob.bytes), 'fast reader: exact bytes');
  t.is(slow.status, 200);
  t.is(slow.error, null);
  t.true(slow.body.equals(blob.bytes), 'slow reader: exact bytes');
  t.true(slowAtUpstreamEnd > 0 && slowAtUpstreamEnd < 4 * MiB, `slow reader had ${slowAtUpstreamEnd} bytes when the upstream finished`);
  t.is(fake.blobGets(blob.digest), 1, 'one upstream GET');
  t.is(fake.bytesSent, blob.size);
  await waitFor(() => storedSize(s, blob) === blob.size, WAIT_MS, 'blob committed');
  t.true((await fs.readFile(blobFile(s, blob))).equals(blob.bytes), 'stored bytes');
});

test('the first byte reaches the client while the upstream is still sending', async (t) => {
  const { fake, s } = await setup(t);
  const blob = bigBlob(512 * KiB, 'first-byte');
  fake.addBlob(REPO, blob);
  // ~32 chunks, 50 ms apart: about 1.6 s upstream.
  fake.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes: 16 * KiB, intervalMs: 50 } });

  const r = await fetchStream(blobUrl(s, blob), {
    onFirstByte: () => {
      const up = fake.find({ method: 'GET', path: /\/blobs\// })[0];
      return { finished: up?.finished ?? null, bytes: up?.bytes ?? -1 };
    },
  });
  t.is(r.status, 200);
  t.true(r.body.equals(blob.bytes));
  // Judged by the fake's own progress, not by wall-clock time (CI load varies).
  const at = r.atFirstByte as { finished: boolean; bytes: number };
  t.false(at.finished, 'upstream response still in progress at the first client byte');
  t.true(at.bytes > 0 && at.bytes < blob.size, `upstream had sent ${at.bytes} of ${blob.size} bytes when the client got its first`);
  t.is(fake.blobGets(blob.digest), 1);
  t.is(fake.bytesSent, blob.size);
});

test('Range requests on a blob that is still filling get exact slices, from the one fill', async (t) => {
  const { fake, s } = await setup(t);
  const size = 768 * KiB;
  const blob = bigBlob(size, 'ranges');
  fake.addBlob(REPO, blob);
  fake.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes: 32 * KiB, intervalMs: 30 } });

  // The very first request is itself a Range request: it starts the fill.
  const first = fetchStream(blobUrl(s, blob), { headers: { range: 'bytes=100-199' } });
  await sleep(60);
  const cases: Array<[string, number, number]> = [
    ['bytes=0-0', 0, 0],
    ['bytes=1000-65535', 1000, 65535],
    [`bytes=${size - 4096}-`, size - 4096, size - 1],
    ['bytes=-10', size - 10, size - 1],
    [`bytes=${300 * KiB}-${600 * KiB}`, 300 * KiB, 600 * KiB],
  ];
  const results = await Promise.all(cases.map(([h]) => fetchStream(blobUrl(s, blob), { headers: { range: h } })));
  const f = await first;
  t.is(f.status, 206);
  t.true(f.body.equals(blob.bytes.subarray(100, 200)));
  t.is(f.headers['content-range'], `bytes 100-199/${size}`);
  results.forEach((r, i) => {
    const [h, start, end] = cases[i]!;
    t.is(r.status, 206, h);
    t.is(r.error, null, h);
    t.is(r.headers['content-range'], `bytes ${start}-${end}/${size}`, h);
    t.true(r.body.equals(blob.bytes.subarray(start, end + 1)), `${h}: exact slice`);
  });
  t.is(fake.blobGets(blob.digest), 1, 'ranges never went upstream on their own');
  t.is(fake.bytesSent, size);
  await waitFor(() => storedSize(s, blob) === size, WAIT_MS, 'blob committed after ranged reads');
});

test('a client aborting mid-body does not cancel the fill: the blob is cached afterwards', async (t) => {
  const { fake, s } = await setup(t);
  const blob = bigBlob(640 * KiB, 'abort');
  fake.addBlob(REPO, blob);
  fake.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes: 32 * KiB, intervalMs: 30 } });

  const r = await fetchStream(blobUrl(s, blob), { abortAfterBytes: 64 * KiB });
  t.true(r.body.length < blob.size, 'the client left early');
  await waitFor(() => storedSize(s, blob) === blob.size, WAIT_MS, 'fill completes without its client');
  const up = fake.find({ method: 'GET', path: /\/blobs\// });
  t.is(up.length, 1);
  t.true(up[0]!.finished, 'upstream response was read to the end');
  t.false(up[0]!.aborted);
  t.is(fake.bytesSent, blob.size);

  fake.resetCounters();
  const again = await http('GET', blobUrl(s, blob));
  t.is(again.status, 200);
  t.true(again.body.equals(blob.bytes));
  t.is(fake.totalRequests, 0, 'served from the cache');
  t.deepEqual(await tmpFiles(s), [], 'no temp file left');
});

test('an upstream connection reset mid-blob is resumed with a Range request', async (t) => {
  const { fake, s } = await setup(t);
  const blob = bigBlob(1024 * KiB, 'resume');
  fake.addBlob(REPO, blob);
  const cut = 300 * KiB;
  fake.faults.push({ method: 'GET', path: /\/blobs\//, times: 1, resetAfterBytes: cut, throttle: { chunkBytes: 50 * KiB, intervalMs: 10 } });

  const r = await fetchStream(blobUrl(s, blob));
  t.is(r.status, 200);
  t.is(r.error, null);
  t.true(r.body.equals(blob.bytes), 'the client never noticed');
  const gets = fake.find({ method: 'GET', path: /\/blobs\// });
  t.is(gets.length, 2, 'the original GET and one resume');
  t.true(gets[0]!.reset);
  t.is(gets[0]!.headers.range, undefined);
  const m = /^bytes=(\d+)-$/.exec(String(gets[1]!.headers.range));
  t.truthy(m, `resume asks for the rest: ${String(gets[1]!.headers.range)}`);
  const from = Number(m![1]);
  t.true(from > 0 && from <= cut, `resumed at ${from}`);
  t.is(gets[1]!.status, 206);
  t.is(fake.bytesSent, cut + (blob.size - from));
  t.true(s.logs.some((l) => l.includes('resuming with Range')));
  await waitFor(() => storedSize(s, blob) === blob.size, WAIT_MS, 'blob committed');
  t.deepEqual(await fs.readFile(blobFile(s, blob)), blob.bytes);
});

test('a reset on a CDN-redirected blob is resumed through the redirect, with Range and without Authorization', async (t) => {
  const { fake, s } = await setup(t, { blobRedirect: 'cdn' });
  const blob = bigBlob(512 * KiB, 'resume-cdn');
  fake.addBlob(REPO, blob);
  fake.faults.push({ server: 'cdn', method: 'GET', times: 1, resetAfterBytes: 128 * KiB, throttle: { chunkBytes: 32 * KiB, intervalMs: 10 } });

  const r = await fetchStream(blobUrl(s, blob));
  t.is(r.error, null);
  t.true(r.body.equals(blob.bytes));
  t.is(fake.blobGets(blob.digest), 2, 'registry asked twice (each answered 307)');
  const cdn = fake.find({ server: 'cdn' });
  t.is(cdn.length, 2);
  t.regex(String(cdn[1]!.headers.range), /^bytes=\d+-$/);
  t.is(cdn[1]!.status, 206);
  t.true(cdn.every((c) => c.headers.authorization === undefined));
});

for (const where of ['middle', 'last'] as const) {
  test(`wrong bytes (one byte flipped at the ${where}, right length): the client is cut off before the end, nothing is cached, the next request refetches`, async (t) => {
    const { fake, s } = await setup(t);
    const blob = bigBlob(256 * KiB, `flip-${where}`);
    fake.addBlob(REPO, blob);
    const at = where === 'middle' ? 100 * KiB : blob.size - 1;
    fake.faults.push({ method: 'GET', path: /\/blobs\//, times: 1, flipByteAt: at });

    const bad = await fetchStream(blobUrl(s, blob));
    t.is(bad.status, 200, 'headers went out before the mismatch was known');
    t.truthy(bad.error, 'the body ends with an error');
    t.true(bad.body.length < blob.size, `client received ${bad.body.length} of ${blob.size} bytes`);
    await waitFor(() => s.logs.some((l) => l.includes('digest mismatch')), WAIT_MS, 'integrity error logged');
    t.is(storedSize(s, blob), undefined, 'no blob row');
    t.false(await exists(blobFile(s, blob)), 'no blob file');
    // The temp file is removed right after the error is logged.
    await waitFor(async () => (await tmpFiles(s)).length === 0, WAIT_MS, 'temp file removed');
    t.is(fake.blobGets(blob.digest), 1);

    const good = await fetchStream(blobUrl(s, blob));
    t.is(good.status, 200);
    t.is(good.error, null);
    t.true(good.body.equals(blob.bytes));
    t.is(fake.blobGets(blob.digest), 2, 'refetched from upstream');
    t.is(fake.bytesSent, 2 * blob.size);
    await waitFor(() => storedSize(s, blob) === blob.size, WAIT_MS, 'good copy committed');
  });
}

test('a concurrent reader of a corrupted fill is cut off too, never served the final byte', async (t) => {
  const { fake, s } = await setup(t);
  const blob = bigBlob(256 * KiB, 'flip-concurrent');
  fake.addBlob(REPO, blob);
  fake.faults.push({ method: 'GET', path: /\/blobs\//, times: 1, flipByteAt: blob.size - 1, throttle: { chunkBytes: 16 * KiB, intervalMs: 20 } });
  const [a, b, c] = await Promise.all([
    fetchStream(blobUrl(s, blob)),
    sleep(50).then(() => fetchStream(blobUrl(s, blob))),
    sleep(100).then(() => fetchStream(blobUrl(s, blob), { headers: { range: `bytes=${blob.size - 10}-` } })),
  ]);
  for (const r of [a, b]) {
    t.truthy(r.error);
    t.true(r.body.length <= blob.size - 1);
  }
  t.truthy(c.error ?? (c.status >= 500 ? new Error('status') : null), `ranged reader: status ${c.status}`);
  t.true(c.body.length < 10);
  t.is(fake.blobGets(blob.digest), 1);
  t.is(storedSize(s, blob), undefined);
});

test('upstream blob errors: 404 -> BLOB_UNKNOWN, 429 -> 429 with Retry-After, upstream down -> 503; nothing cached', async (t) => {
  const { fake, s } = await setup(t, {}, { timeouts: { offline: '0s' } });
  const blob = bigBlob(8 * KiB, 'blob-errors');
  fake.addBlob(REPO, blob);

  const unknown = await http('GET', `${s.url}/v2/${REPO}/blobs/${bigBlob(10, 'x').digest}`);
  t.is(unknown.status, 404);
  t.is(errorCode(unknown), 'BLOB_UNKNOWN');

  fake.faults.push({ method: 'GET', path: /\/blobs\//, times: 1, status: 429, headers: { 'retry-after': '7' } });
  const limited = await http('GET', blobUrl(s, blob));
  t.is(limited.status, 429);
  t.is(errorCode(limited), 'TOOMANYREQUESTS');
  t.is(limited.header('retry-after'), '7');

  fake.faults.push({ method: 'GET', path: /\/blobs\//, times: 1, status: 500 });
  const broken = await http('GET', blobUrl(s, blob));
  t.true(broken.status === 502 || broken.status === 503, `5xx upstream -> ${broken.status}`);

  await fake.stop();
  const down = await http('GET', blobUrl(s, blob));
  t.is(down.status, 503);
  t.is(errorCode(down), 'UNAVAILABLE');
  t.is(storedSize(s, blob), undefined);
  t.is(fake.blobGets(blob.digest), 2);
  t.is(fake.blobBytes(), 0);

  await fake.start();
  const ok = await http('GET', blobUrl(s, blob));
  t.is(ok.status, 200);
  t.true(ok.body.equals(blob.bytes));
  t.is(fake.blobGets(blob.digest), 3);
  t.is(fake.blobBytes(), blob.size);
});

test('a slow first byte within the headers timeout is waited for; beyond it the client gets 503 and nothing is cached', async (t) => {
  const { fake, s } = await setup(t, {}, { timeouts: { headers: '1s', offline: '0s' } });
  const blob = bigBlob(32 * KiB, 'slow-first-byte');
  fake.addBlob(REPO, blob);

  // The upstream would answer after a minute: the mirror must give up at its headers
  // timeout. No wall-clock bound (CI load varies); the proof is that the mirror dropped
  // the upstream request before any answer.
  fake.faults.push({ method: 'GET', path: /\/blobs\//, times: 1, headerDelayMs: 60_000 });
  const slow = await http('GET', blobUrl(s, blob));
  t.is(slow.status, 503, slow.body.toString());
  t.is(errorCode(slow), 'UNAVAILABLE');
  const first = fake.find({ method: 'GET', path: /\/blobs\// })[0]!;
  await waitFor(() => first.aborted, WAIT_MS, 'the mirror closed the hung upstream request');
  t.is(first.status, 0, 'the upstream never answered');
  t.is(storedSize(s, blob), undefined);

  fake.faults.push({ method: 'GET', path: /\/blobs\//, times: 1, headerDelayMs: 300 });
  const ok = await http('GET', blobUrl(s, blob));
  t.is(ok.status, 200);
  t.true(ok.body.equals(blob.bytes));
  t.is(fake.blobGets(blob.digest), 2);
  t.is(fake.blobBytes(), blob.size, 'the timed-out request moved no bytes');
});

test('an upstream that ignores Range cannot be resumed: the client is cut off (never given wrong bytes), the next request succeeds', async (t) => {
  const { fake, s } = await setup(t, { honourRange: false });
  const blob = bigBlob(512 * KiB, 'no-range');
  fake.addBlob(REPO, blob);
  const cut = 100 * KiB;
  fake.faults.push({ method: 'GET', path: /\/blobs\//, times: 1, resetAfterBytes: cut });

  const first = await fetchStream(blobUrl(s, blob));
  if (first.error === null) {
    // A fill that restarts from zero would be fine too, as long as the bytes are right.
    t.true(first.body.equals(blob.bytes));
  } else {
    t.true(first.body.length < blob.size);
    t.true(first.body.equals(blob.bytes.subarray(0, first.body.length)), 'what was sent was right');
  }
  await waitFor(() => fake.find({ method: 'GET' }).every((r) => r.finished || r.reset || r.aborted), WAIT_MS, 'upstream requests settled');
  const gets = fake.find({ method: 'GET', path: /\/blobs\// });
  t.true(gets.length >= 2 && gets.length <= 5, `bounded retries: ${gets.length} upstream GETs`);
  t.log(`first client: ${first.error ? 'cut off' : 'complete'}; upstream GETs before the retry: ${gets.length}`);
  t.true(gets.slice(1).every((r) => r.headers.range !== undefined || first.error === null));

  const second = await fetchStream(blobUrl(s, blob));
  t.is(second.error, null);
  t.true(second.body.equals(blob.bytes));
  await waitFor(() => storedSize(s, blob) === blob.size, WAIT_MS, 'blob committed');
  t.true(fake.bytesSent >= blob.size + cut);
});
