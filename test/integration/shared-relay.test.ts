/**
 * A non-owner that relays the owner's fill writes nothing to the object store (issue #13;
 * cache/relaystage.ts): three replicas on one real PostgreSQL and one real RADOS Gateway
 * bucket, reached through a counting proxy here, so every S3 write is seen. One cold blob
 * pulled through all three: its bytes go to the bucket once (one stage, one commit), every
 * client gets the right bytes. (The owner-dies fallback, where a relay uploads and commits
 * what it spooled, is the SIGKILL test in shared-fills.test.ts.) Never skipped under CI=true.
 */
import http from 'node:http';
import test from 'ava';
import { sha256 } from '../helpers/http.js';
import { withTimeout } from '../helpers/cli.js';
import { blobRows, replicas, sharedMissing as missing, sharedRadosgw, stopSharedServers } from '../helpers/replicas.js';
import type { TestServer } from '../helpers/server.js';
import { CI } from '../helpers/tools.js';
import { makeImage, makeLayer, randomBytes } from '../fixtures/images.js';
import { fetchStream, startFake, upstreamEntry, waitFor } from './_pullthrough.js';
import { noServerErrors } from './_support.js';

const UP = 'hub.test';
const REPO = 'library/app';
const SECRET = 'relay-secret-0123456789abcdef';
const WAIT_MS = 60_000;
const MiB = 1024 * 1024;

interface S3Write {
  method: string;
  path: string;
  query: string;
  bytes: number;
}

/** A pass-through to the gateway that records every request that writes (PUT, POST). */
async function countingProxy(target: string): Promise<{ url: string; writes: S3Write[]; close(): Promise<void> }> {
  const to = new URL(target);
  const writes: S3Write[] = [];
  const server = http.createServer((req, res) => {
    const [p = '', q = ''] = (req.url ?? '').split('?', 2);
    const w: S3Write = { method: req.method ?? '', path: decodeURIComponent(p), query: q, bytes: 0 };
    if (w.method === 'PUT' || w.method === 'POST') writes.push(w);
    // The host header is part of the signature: forwarded unchanged. `expect` is not signed
    // and this proxy already answered 100-continue (node's default).
    const headers = { ...req.headers };
    delete headers.expect;
    const up = http.request({ host: to.hostname, port: to.port, method: req.method, path: req.url, headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.on('data', (c: Buffer) => (w.bytes += c.length));
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    writes,
    close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
  };
}

/** regmirror_blob_fills_inflight of a replica: a relay's fill ends once the owner's commit is seen. */
async function fillsInFlight(s: TestServer): Promise<number> {
  const text = await (await fetch(`${s.url}/metrics`)).text();
  return Number(/^regmirror_blob_fills_inflight (\d+)$/m.exec(text)?.[1] ?? NaN);
}

if (missing && !CI) {
  test.skip(`shared relay: ${missing}`, () => undefined);
} else {
  test.afterEach(noServerErrors);
  test.after.always(stopSharedServers);

  test('one cold blob pulled through three replicas is written to the bucket once (the owner\'s stage and commit), every client\'s bytes correct', async (t) => {
    const fake = await startFake(t);
    const size = 12 * MiB + 12345; // more than two 5 MiB parts and a partial tail
    const img = makeImage({ layers: [makeLayer([{ name: 'data/0.bin', content: randomBytes(size, 'relay-once') }], { gzip: false })] });
    const layer = img.layers[0]!;
    fake.addImage(REPO, img, 'v1');
    // ~2.5 s of fill: the other replicas join mid-fill and relay the owner's stream.
    fake.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes: 256 * 1024, intervalMs: 50 } });
    const proxy = await countingProxy((await sharedRadosgw()).endpoint);
    t.teardown(() => proxy.close());
    const rs = await replicas(t, 3, { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true }) }, defaultUpstream: UP, cluster: { secret: SECRET } }, { endpoint: proxy.url });
    proxy.writes.length = 0; // start-up (bucket creation) is not the blob

    const url = `/v2/${REPO}/blobs/${layer.digest}`;
    const first = fetchStream(`${rs[0]!.url}${url}`);
    await waitFor(() => fake.find({ method: 'GET', path: url }).some((r) => r.bytes > 0), WAIT_MS, 'the owner\'s fill to start');
    const others = [fetchStream(`${rs[1]!.url}${url}`), fetchStream(`${rs[2]!.url}${url}`)];
    const got = await withTimeout(Promise.all([first, ...others]), WAIT_MS, 'three clients');
    for (const [i, r] of got.entries()) {
      t.is(r.status, 200, `client of replica ${i}`);
      t.is(sha256(r.body), layer.digest, `client of replica ${i}`);
    }
    t.is(fake.count({ method: 'GET', path: url }), 1, 'one upstream fetch');
    const relayed = rs[0]!.logs.filter((l) => l.includes('"url":"/internal/fills/')).length;
    t.is(relayed, 2, 'both other replicas relayed the owner\'s fill');
    await waitFor(async () => (await blobRows(rs.db, [layer.digest])) === 1, WAIT_MS, 'the blob committed');
    // Every fill has ended (a relay's once it saw the owner's commit): no write can come later.
    await waitFor(async () => (await Promise.all(rs.map(fillsInFlight))).every((n) => n === 0), WAIT_MS, 'every replica\'s fill to end');

    const stages = new Set(proxy.writes.flatMap((w) => /\/stages\/([^/]+)\//.exec(w.path)?.[1] ?? []));
    const toBlob = proxy.writes.filter((w) => w.path.endsWith(`/blobs/${layer.digest.replace(':', '/')}`));
    const bytes = proxy.writes.reduce((n, w) => n + w.bytes, 0);
    t.log(`S3 writes: ${proxy.writes.length} requests, ${bytes} bytes (blob ${size}); stages ${stages.size}; ` + proxy.writes.map((w) => `${w.method} ${w.path.replace(/^.*\/(stages|blobs)\//, '$1/')}${w.query ? `?${w.query.split('=')[0]}` : ''} ${w.bytes}`).join(', '));
    t.is(stages.size, 1, 'one replica staged the blob');
    // The commit: one multipart upload (create, parts copied server-side, complete) or one PUT.
    t.is(toBlob.filter((w) => (w.method === 'POST' && /(^|&)uploads(=|&|$)/.test(w.query)) || (w.method === 'PUT' && !/uploadId=/.test(w.query))).length, 1, 'one commit to the blob key');
    // Partial tails are PUT again once their part is full, so a little over the blob, never twice it.
    t.true(bytes >= size && bytes < 2 * size, `bytes written to the bucket: ${bytes} for a ${size}-byte blob`);
  });
}
