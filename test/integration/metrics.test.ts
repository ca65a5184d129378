import test from 'ava';
import { http, pushBlob } from '../helpers/http.js';
import { startServer } from '../helpers/server.js';
import { pushImage, sampleImage } from './_support.js';
import { ACCEPT_ALL, startFake, upstreamEntry, waitFor } from './_pullthrough.js';
import type { Digest } from '../../src/registry/names.js';

const UP = 'metrics.test';

function metric(text: string, name: string, labels: Record<string, string>): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (want.every((w) => line.includes(w))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

test('/metrics counts upstream requests, cache hits and misses, and blob bytes', async (t) => {
  const fake = await startFake(t);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true }) }, defaultUpstream: UP });
  const img = sampleImage('metrics');
  fake.addImage('library/app', img, 'v1');
  const accept = { accept: ACCEPT_ALL };
  t.is((await http('GET', `${s.url}/v2/library/app/manifests/v1`, { headers: accept })).status, 200);
  t.is((await http('GET', `${s.url}/v2/library/app/manifests/v1`, { headers: accept })).status, 200);
  const layer = img.layers[0]!;
  t.is((await http('GET', `${s.url}/v2/library/app/blobs/${layer.digest}`)).status, 200);
  t.is((await http('GET', `${s.url}/v2/library/app/blobs/${layer.digest}`)).status, 200);

  const res = await http('GET', `${s.url}/metrics`);
  t.is(res.status, 200);
  const text = res.body.toString();
  t.is(metric(text, 'regmirror_cache_requests_total', { kind: 'manifest', result: 'miss', upstream: UP }), 1);
  t.is(metric(text, 'regmirror_cache_requests_total', { kind: 'manifest', result: 'hit', upstream: UP }), 1);
  t.is(metric(text, 'regmirror_cache_requests_total', { kind: 'blob', result: 'miss', upstream: UP }), 1);
  // The second GET may find the fill still committing (joined) or the blob stored (hit).
  t.is(
    metric(text, 'regmirror_cache_requests_total', { kind: 'blob', result: 'hit', upstream: UP }) +
      metric(text, 'regmirror_cache_requests_total', { kind: 'blob', result: 'joined', upstream: UP }),
    1,
  );
  t.is(metric(text, 'regmirror_upstream_requests_total', { upstream: UP, method: 'GET', status: '200' }), 2);
  t.is(metric(text, 'regmirror_upstream_blob_bytes_total', { upstream: UP }), layer.size);
  // Served: the first GET from the fill, the second from disk (or the fill, if still committing).
  const fromFill = metric(text, 'regmirror_blob_bytes_served_total', { source: 'fill', upstream: UP });
  t.true(fromFill >= layer.size);
  t.is(fromFill + metric(text, 'regmirror_blob_bytes_served_total', { source: 'disk', upstream: UP }), 2 * layer.size);
  t.true(metric(text, 'regmirror_http_requests_total', { area: 'manifest', method: 'GET', status: '2xx' }) >= 2);
  t.true(text.includes('regmirror_blob_fills_inflight'));
  t.false(/authorization|password|token/i.test(text.replace(/regmirror_[a-z_]+/g, '')), 'no secrets or auth data in metrics');

  t.is((await http('GET', `${s.url}/healthz`)).status, 200);
});

test('blob bytes served: from the fill, then from disk; a range by its length; HEAD adds nothing', async (t) => {
  const fake = await startFake(t);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true }) }, defaultUpstream: UP });
  const img = sampleImage('served');
  fake.addImage('library/app', img, 'v1');
  const layer = img.layers[1]!;
  const url = `${s.url}/v2/library/app/blobs/${layer.digest}`;
  t.is((await http('GET', url)).status, 200);
  await waitFor(async () => (await http('HEAD', url)).status === 200 && s.db().blobSize(layer.digest as Digest) !== undefined, 10_000, 'blob committed');
  t.is((await http('GET', url, { headers: { range: 'bytes=10-109' } })).status, 206);
  t.is((await http('HEAD', url)).status, 200);
  const text = (await http('GET', `${s.url}/metrics`)).body.toString();
  t.is(metric(text, 'regmirror_blob_bytes_served_total', { source: 'fill', upstream: UP }), layer.size);
  t.is(metric(text, 'regmirror_blob_bytes_served_total', { source: 'disk', upstream: UP }), 100, 'the range only; HEAD sends no body');
});

test('cache and served-bytes metrics carry the upstream label: each configured upstream apart, `local` for paths with none', async (t) => {
  const fakeA = await startFake(t);
  const fakeB = await startFake(t);
  const s = await startServer(t, {
    upstreams: { [UP]: upstreamEntry(fakeA), 'other.test': upstreamEntry(fakeB) },
    namespaces: [
      { prefix: 'a', upstream: UP },
      { prefix: 'b', upstream: 'other.test' },
      { prefix: 'mine', upstream: 'local' },
    ],
  });
  const imgA = sampleImage('label-a');
  const imgB = sampleImage('label-b');
  fakeA.addImage('app', imgA, 'v1');
  fakeB.addImage('app', imgB, 'v1');
  const accept = { accept: ACCEPT_ALL };
  t.is((await http('GET', `${s.url}/v2/a/app/manifests/v1`, { headers: accept })).status, 200);
  t.is((await http('GET', `${s.url}/v2/b/app/manifests/v1`, { headers: accept })).status, 200);
  t.is((await http('GET', `${s.url}/v2/b/app/manifests/v1`, { headers: accept })).status, 200);
  const layerB = imgB.layers[0]!;
  t.is((await http('GET', `${s.url}/v2/b/app/blobs/${layerB.digest}`)).status, 200);
  // Local content: pushed under a `local` namespace, then pulled.
  t.is((await pushImage(s.url, 'mine/app', imgA, 'v1')).status, 201);
  t.is((await http('GET', `${s.url}/v2/mine/app/manifests/v1`, { headers: accept })).status, 200);
  const layerA = imgA.layers[0]!;
  t.is((await http('GET', `${s.url}/v2/mine/app/blobs/${layerA.digest}`)).status, 200);

  const text = (await http('GET', `${s.url}/metrics`)).body.toString();
  const cache = (labels: Record<string, string>) => metric(text, 'regmirror_cache_requests_total', labels);
  t.is(cache({ kind: 'manifest', result: 'miss', upstream: UP }), 1);
  t.is(cache({ kind: 'manifest', result: 'hit', upstream: UP }), 0);
  t.is(cache({ kind: 'manifest', result: 'miss', upstream: 'other.test' }), 1);
  t.is(cache({ kind: 'manifest', result: 'hit', upstream: 'other.test' }), 1);
  t.is(cache({ kind: 'blob', result: 'miss', upstream: 'other.test' }), 1);
  t.is(cache({ kind: 'manifest', result: 'hit', upstream: 'local' }), 1);
  t.is(cache({ kind: 'blob', result: 'hit', upstream: 'local' }), 1);
  t.is(metric(text, 'regmirror_blob_bytes_served_total', { source: 'fill', upstream: 'other.test' }), layerB.size);
  t.is(metric(text, 'regmirror_blob_bytes_served_total', { source: 'disk', upstream: 'local' }), layerA.size);
  t.is(metric(text, 'regmirror_blob_bytes_served_total', { upstream: UP }), 0, 'nothing served for the first upstream');
  t.is(metric(text, 'regmirror_upstream_blob_bytes_total', { upstream: 'other.test' }), layerB.size);
  // Bounded: the label takes configured upstream names and `local`, never repository names.
  const values = new Set([...text.matchAll(/upstream="([^"]*)"/g)].map((m) => m[1]));
  t.deepEqual([...values].sort(), ['local', 'other.test', UP].sort());
});

test('a warm small blob answered by the hot path (http/hotblobs.ts) counts exactly as one answered by fastify', async (t) => {
  const s = await startServer(t);
  const bytes = Buffer.from('{"architecture":"amd64","os":"linux","hot":"path"}');
  const digest = await pushBlob(s.url, 'metrics/hot', bytes);
  const url = `${s.url}/v2/metrics/hot/blobs/${digest}`;
  t.true((await http('GET', url)).body.equals(bytes), 'first GET (loads the bytes into memory)');
  const counts = async () => {
    const text = (await http('GET', `${s.url}/metrics`)).body.toString();
    return {
      requests: metric(text, 'regmirror_http_requests_total', { area: 'blob', method: 'GET', status: '2xx' }),
      heads: metric(text, 'regmirror_http_requests_total', { area: 'blob', method: 'HEAD', status: '2xx' }),
      bytes: metric(text, 'regmirror_blob_bytes_served_total', { source: 'disk', upstream: 'local' }),
      hits: metric(text, 'regmirror_cache_requests_total', { kind: 'blob', result: 'hit', upstream: 'local' }),
      durations: metric(text, 'regmirror_http_request_duration_seconds_count', { area: 'blob' }),
    };
  };
  const hotLines = () => s.logs.filter((l) => l.includes('"hot":true') && l.includes(digest)).length;
  // The same requests twice: by the hot path, then by fastify (a query string keeps it there).
  const deltas = [];
  for (const suffix of ['', '?via=fastify']) {
    const before = await counts();
    const lines = hotLines();
    for (let i = 0; i < 3; i++) t.true((await http('GET', url + suffix)).body.equals(bytes));
    t.is((await http('HEAD', url + suffix)).status, 200);
    // Counted once each response finished: wait for the last one (bounded).
    await waitFor(async () => (await counts()).heads - before.heads === 1, 10_000, 'HEAD counted');
    const after = await counts();
    deltas.push({
      requests: after.requests - before.requests,
      heads: after.heads - before.heads,
      bytes: after.bytes - before.bytes,
      hits: after.hits - before.hits,
      durations: after.durations - before.durations,
      hotLogLines: hotLines() - lines,
    });
  }
  t.deepEqual(deltas[0], { requests: 3, heads: 1, bytes: 3 * bytes.length, hits: 4, durations: 4, hotLogLines: 4 }, 'hot path');
  t.deepEqual(deltas[1], { ...deltas[0], hotLogLines: 0 }, 'fastify path');
});
