/**
 * One upstream blob fetch per digest across replicas (issue #13; cache/clusterfill.ts):
 * replicas on one real PostgreSQL and one real RADOS Gateway bucket (test/helpers/replicas.ts),
 * a fake upstream counting requests. The replica that fills holds the lease `fill:<digest>`;
 * the others stream its fill over GET /internal/fills/<digest> (bearer cluster.secret) or
 * wait for its commit; when it is SIGKILLed mid-blob another one takes the lease over.
 * Never skipped under CI=true (containerd included).
 */
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import httpNode from 'node:http';
import { http, sha256 } from '../helpers/http.js';
import { startCli, withTimeout, writeConfig } from '../helpers/cli.js';
import { startContainerd, writeHostsToml } from '../helpers/containerd.js';
import { blobRows, replicas, sharedMissing as missing, sharedQuery, sharedStorage, stopSharedServers } from '../helpers/replicas.js';
import { type TestServer, tempDir } from '../helpers/server.js';
import { CI, freePort, missingTools } from '../helpers/tools.js';
import type { FakeUpstream } from '../fixtures/fake-upstream.js';
import { type Blob, type Image, makeImage, makeLayer, randomBytes } from '../fixtures/images.js';
import { fetchStream, startFake, upstreamEntry, waitFor } from './_pullthrough.js';
import { noServerErrors, OCI_MANIFEST, serve } from './_support.js';

const UP = 'hub.test';
const REPO = 'library/app';
const SECRET = 'fills-secret-0123456789abcdef';
/**
 * Short, so a killed owner's lease frees up quickly (the heartbeat renews every third of
 * it); only where a test needs a lease to expire. The others keep the default (10s): a
 * renewal delayed past a short TTL on a loaded machine would let a second replica fetch.
 */
const LEASE_TTL = '1500ms';
const CLUSTER = { secret: SECRET };
/** Generous ceiling for fills and commits on a loaded 2-core machine (polled, never slept). */
const WAIT_MS = 60_000;
const MiB = 1024 * 1024;

const blobPath = (digest: string) => `/v2/${REPO}/blobs/${digest}`;

/** An image whose layers hold `sizes` bytes of seeded random data each (uncompressed tar). */
function layeredImage(seed: string, sizes: number[]): Image {
  return makeImage({ layers: sizes.map((n, i) => makeLayer([{ name: `data/${i}.bin`, content: randomBytes(n, `${seed}-${i}`) }], { gzip: false })) });
}

function blobsOf(img: Image): Blob[] {
  return [img.config, ...img.layers];
}

/** Upstream blob GETs per digest (what "fetched once" counts; HEADs carry no bytes). */
function blobGets(fake: FakeUpstream, digest: string): number {
  return fake.count({ method: 'GET', path: blobPath(digest) });
}

function upstreamConfig(fake: FakeUpstream): Record<string, unknown> {
  return { upstreams: { [UP]: upstreamEntry(fake, { libraryPrefix: true }) }, defaultUpstream: UP };
}

/** A slow upstream blob body, so fills overlap across replicas and a kill lands mid-blob. */
function throttleBlobs(fake: FakeUpstream, chunkBytes: number, intervalMs: number): void {
  fake.faults.push({ method: 'GET', path: /\/blobs\//, throttle: { chunkBytes, intervalMs } });
}

/** How many requests a replica answered on the internal fill endpoint (its access log). */
function peerStreams(s: TestServer): number {
  return s.logs.filter((l) => l.includes('"url":"/internal/fills/')).length;
}

/** regmirror_upstream_blob_bytes_total of a replica (all upstreams). */
async function upstreamBlobBytes(s: TestServer): Promise<number> {
  const text = (await http('GET', `${s.url}/metrics`)).body.toString();
  return [...text.matchAll(/^regmirror_upstream_blob_bytes_total\{[^}]*\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
}

/** A client pull: the manifest by tag, then every blob at once; the digests it got. */
async function pull(base: string, img: Image): Promise<string[]> {
  const m = await http('GET', `${base}/v2/${REPO}/manifests/v1`, { headers: { accept: OCI_MANIFEST } });
  if (m.status !== 200) throw new Error(`manifest: ${m.status} ${m.body.toString().slice(0, 200)}`);
  const got = await Promise.all(
    blobsOf(img).map(async (b) => {
      const r = await http('GET', `${base}${blobPath(b.digest)}`);
      if (r.status !== 200) throw new Error(`blob ${b.digest}: ${r.status} ${r.body.toString().slice(0, 200)}`);
      return sha256(r.body);
    }),
  );
  return [sha256(m.body), ...got];
}

/** A body received from a replica is a prefix of the real bytes: never a wrong byte. */
function assertPrefix(t: ExecutionContext, got: Buffer, bytes: Buffer, what: string): void {
  t.true(got.length <= bytes.length && got.equals(bytes.subarray(0, got.length)), `${what}: ${got.length} bytes, not a prefix of the blob`);
}

if (missing && !CI) {
  test.skip(`shared fills: ${missing}`, () => undefined);
} else {
  test.afterEach(noServerErrors);
  test.after.always(stopSharedServers);

  test('24 concurrent cold pulls over three replicas fetch every blob from the upstream exactly once, every digest correct', async (t) => {
    const fake = await startFake(t);
    const img = layeredImage('fills-24', [3 * MiB, 1 * MiB, 256 * 1024, 16 * 1024]);
    fake.addImage(REPO, img, 'v1');
    throttleBlobs(fake, 256 * 1024, 25);
    const rs = await replicas(t, 3, { ...upstreamConfig(fake), cluster: CLUSTER });
    const expected = [img.manifest.digest, ...blobsOf(img).map((b) => b.digest)];
    const started = Date.now();
    const results = await Promise.all(Array.from({ length: 24 }, (_, i) => pull(rs[i % 3]!.url, img)));
    t.log(`24 pulls over 3 replicas: ${Date.now() - started} ms`);
    for (const [i, got] of results.entries()) t.deepEqual(got, expected, `client ${i} (replica ${i % 3})`);
    for (const b of blobsOf(img)) t.is(blobGets(fake, b.digest), 1, `upstream GETs of ${b.digest} (${b.size} bytes)`);
    // Manifests too (registry/pullthrough/cluster.ts): the tag is looked up once across the replicas.
    t.is(fake.count({ path: /\/manifests\// }), 1, 'one upstream manifest request across 24 pulls on 3 replicas');
    t.log(`blob HEADs: ${fake.count({ method: 'HEAD', path: /\/blobs\// })}`);
    const streamed = rs.reduce((n, s) => n + peerStreams(s), 0);
    t.log(`fills streamed from their owner over /internal/fills: ${streamed}; lost leases: ${rs.reduce((n, s) => n + s.logs.filter((l) => l.includes('fill lease lost')).length, 0)}`);
    t.true(streamed > 0, 'non-owners streamed fills from the owning replica');
    t.false(rs.some((s) => s.logs.some((l) => l.includes(SECRET))), 'the cluster secret is never logged');
    await waitFor(async () => (await blobRows(rs.db, blobsOf(img).map((b) => b.digest))) === blobsOf(img).length, WAIT_MS, 'every blob committed');
    // Bytes streamed from a peer are not counted as upstream traffic: the replicas' metrics add up to the image once.
    const counted = (await Promise.all(rs.map(upstreamBlobBytes))).reduce((n, x) => n + x, 0);
    t.is(counted, blobsOf(img).reduce((n, b) => n + b.size, 0));
  });

  test('without cluster.secret a non-owner waits for the owner\'s commit and serves the blob from the object store: still one upstream fetch', async (t) => {
    const fake = await startFake(t);
    const img = layeredImage('fills-nosecret', [2 * MiB, 512 * 1024]);
    fake.addImage(REPO, img, 'v1');
    throttleBlobs(fake, 128 * 1024, 50);
    const [a, b] = (await replicas(t, 2, upstreamConfig(fake))) as unknown as [TestServer, TestServer];
    for (const layer of img.layers) {
      const url = blobPath(layer.digest);
      const first = fetchStream(`${a.url}${url}`);
      await waitFor(() => fake.find({ method: 'GET', path: url }).some((r) => r.bytes > 0), WAIT_MS, 'A\'s fill to start');
      const second = fetchStream(`${b.url}${url}`);
      const r1 = await withTimeout(first, WAIT_MS, 'the owner\'s client');
      const r2 = await withTimeout(second, WAIT_MS, 'the waiting replica\'s client');
      t.is(sha256(r1.body), layer.digest);
      t.is(sha256(r2.body), layer.digest);
      t.is(blobGets(fake, layer.digest), 1);
      t.is(await upstreamBlobBytes(b), 0, 'B read the store, not the upstream');
    }
  });

  test('a non-owner streams the owner\'s fill: its first byte comes before the fill ends (time to first byte logged)', async (t) => {
    const fake = await startFake(t);
    // Three cold layers, each a ~5 s fill (room for a loaded machine's delays before the
    // non-owner's first byte): the owner's first byte waits for the upstream, a non-owner's
    // for a lease check and one hop to the owner.
    const img = layeredImage('fills-ttfb', [1, 2, 3].map(() => 1 * MiB));
    fake.addImage(REPO, img, 'v1');
    throttleBlobs(fake, 64 * 1024, 300);
    const [a, b] = (await replicas(t, 2, { ...upstreamConfig(fake), cluster: CLUSTER })) as unknown as [TestServer, TestServer];
    const owner: number[] = [];
    const other: number[] = [];
    for (const layer of img.layers) {
      const url = blobPath(layer.digest);
      const first = fetchStream(`${a.url}${url}`);
      await waitFor(() => fake.find({ method: 'GET', path: url }).some((r) => r.bytes > 0), WAIT_MS, 'the owner\'s fill to start');
      let ownerDone = false;
      const second = fetchStream(`${b.url}${url}`, { onFirstByte: () => ownerDone });
      const r1 = await first.then((r) => ((ownerDone = true), r));
      const r2 = await second;
      for (const r of [r1, r2]) t.is(sha256(r.body), layer.digest);
      t.false(r2.atFirstByte, 'the non-owner sent its first byte while the owner was still filling');
      owner.push(r1.firstByteMs!);
      other.push(r2.firstByteMs!);
      t.is(blobGets(fake, layer.digest), 1);
    }
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
    t.log(`time to first byte, median of ${owner.length}: owner ${median(owner)} ms (${owner.join(', ')}), non-owner joining mid-fill ${median(other)} ms (${other.join(', ')})`);
    t.true(peerStreams(a) >= img.layers.length);
  });

  test('cold GETs of one blob on two replicas at once: one upstream fetch; time to first byte of the non-owner vs the owner logged', async (t) => {
    const fake = await startFake(t);
    const img = layeredImage('fills-ttfb-cold', Array.from({ length: 8 }, () => 2 * MiB));
    fake.addImage(REPO, img, 'v1');
    const [a, b] = (await replicas(t, 2, { ...upstreamConfig(fake), cluster: CLUSTER })) as unknown as [TestServer, TestServer];
    const gaps: number[] = [];
    for (const layer of img.layers) {
      const before = peerStreams(a);
      const [ra, rb] = await Promise.all([fetchStream(`${a.url}${blobPath(layer.digest)}`), fetchStream(`${b.url}${blobPath(layer.digest)}`)]);
      for (const r of [ra, rb]) t.is(sha256(r.body), layer.digest);
      t.is(blobGets(fake, layer.digest), 1);
      // The owner is the replica the other one streamed from.
      const [owner, other] = peerStreams(a) > before ? [ra, rb] : [rb, ra];
      gaps.push(other.firstByteMs! - owner.firstByteMs!);
    }
    const sorted = [...gaps].sort((x, y) => x - y);
    t.log(`non-owner minus owner time to first byte over ${gaps.length} cold 2 MiB blobs: median ${sorted[sorted.length >> 1]} ms, max ${sorted.at(-1)} ms (${gaps.join(', ')})`);
  });

  test('the internal fill endpoint: no secret 401, a wrong one 403 (no bytes either way), unknown digest 404, the right one streams', async (t) => {
    const fake = await startFake(t);
    const img = layeredImage('fills-endpoint', [2 * MiB]);
    const layer = img.layers[0]!;
    fake.addImage(REPO, img, 'v1');
    throttleBlobs(fake, 64 * 1024, 50);
    const [a] = (await replicas(t, 1, { ...upstreamConfig(fake), cluster: CLUSTER })) as unknown as [TestServer];
    const internal = `${a.url}/internal/fills/${layer.digest}`;
    const codeOf = (body: Buffer) => (JSON.parse(body.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code;

    const unknown = await http('GET', `${a.url}/internal/fills/${sha256('nothing here')}`, { headers: { authorization: `Bearer ${SECRET}` } });
    t.is(unknown.status, 404);
    t.is(codeOf(unknown.body), 'BLOB_UNKNOWN');
    const bad = await http('GET', `${a.url}/internal/fills/sha256:xyz`, { headers: { authorization: `Bearer ${SECRET}` } });
    t.is(bad.status, 400);
    t.is(codeOf(bad.body), 'DIGEST_INVALID');

    // A fill in progress on A: only the right secret gets its bytes.
    const client = fetchStream(`${a.url}${blobPath(layer.digest)}`);
    await waitFor(() => fake.find({ method: 'GET', path: blobPath(layer.digest) }).some((r) => r.bytes > 0), WAIT_MS, 'the fill to start');
    for (const [authorization, status, code] of [
      [undefined, 401, 'UNAUTHORIZED'],
      ['Basic ' + Buffer.from(`x:${SECRET}`).toString('base64'), 401, 'UNAUTHORIZED'],
      [`Bearer ${SECRET}x`, 403, 'DENIED'],
      [`Bearer ${SECRET.slice(0, -1)}`, 403, 'DENIED'],
    ] as const) {
      const r = await http('GET', internal, { headers: authorization ? { authorization } : {} });
      t.is(r.status, status, `authorization ${authorization?.split(' ')[0] ?? 'absent'}`);
      t.is(codeOf(r.body), code);
      t.is(r.headers['content-type'], 'application/json');
      t.false(r.body.includes(layer.bytes.subarray(0, 64)), 'no blob bytes in the error');
      if (status === 401) t.regex(String(r.headers['www-authenticate']), /^Bearer /);
    }
    const ok = await http('GET', internal, { headers: { authorization: `Bearer ${SECRET}` } });
    t.is(ok.status, 200);
    t.is(sha256(ok.body), layer.digest);
    const ranged = await http('GET', internal, { headers: { authorization: `Bearer ${SECRET}`, range: 'bytes=1000-' } });
    // The fill may have ended meanwhile (then nothing is in progress here: 404).
    if (ranged.status === 206) t.true(ranged.body.equals(layer.bytes.subarray(1000)));
    else t.is(ranged.status, 404);
    t.is(sha256((await client).body), layer.digest);
    t.false(a.logs.some((l) => l.includes(SECRET.slice(0, -1))), 'no secret, right or wrong, in the logs');

    // Without a secret the endpoint does not exist (non-owners wait for commits instead).
    const [plain] = (await replicas(t, 1, upstreamConfig(fake))) as unknown as [TestServer];
    t.is((await http('GET', `${plain.url}/internal/fills/${layer.digest}`, { headers: { authorization: `Bearer ${SECRET}` } })).status, 404);
  });

  test('SIGKILL of the filling replica mid-blob: another replica takes the lease over and completes the fill; nothing corrupt stored; retrying clients get correct bytes', async (t) => {
    const fake = await startFake(t, { honourRange: true });
    const img = layeredImage('fills-kill', [6 * MiB]);
    const layer = img.layers[0]!;
    fake.addImage(REPO, img, 'v1');
    throttleBlobs(fake, 64 * 1024, 40); // ~4 s for the whole blob
    const shared = await sharedStorage();
    const start = async () => {
      const dir = await tempDir(t, 'regmirror-fill-cli-');
      const lines = [
        `upstreams: ${JSON.stringify({ [UP]: { endpoints: [fake.url], libraryPrefix: true } })}`,
        `defaultUpstream: ${UP}`,
        // The secret from the environment, as in production.
        `cluster: ${JSON.stringify({ secret: '${REGMIRROR_TEST_CLUSTER_SECRET}', fillLeaseTtl: LEASE_TTL })}`,
      ];
      const { config } = await writeConfig(dir, lines, shared.config(dir));
      return startCli(t, config, { env: { REGMIRROR_TEST_CLUSTER_SECRET: SECRET } });
    };
    const [a, b] = await Promise.all([start(), start()]);
    const url = blobPath(layer.digest);

    const fromA = fetchStream(`${a.url}${url}`);
    await waitFor(() => fake.find({ method: 'GET', path: url }).some((r) => r.bytes >= 512 * 1024), WAIT_MS, 'A\'s fill to be under way');
    let bFirstByte = false;
    const fromB = fetchStream(`${b.url}${url}`, { onFirstByte: () => (bFirstByte = true) });
    await waitFor(() => bFirstByte, WAIT_MS, 'B streaming A\'s fill');
    const sentBeforeKill = fake.find({ method: 'GET', path: url })[0]!.bytes;
    await a.kill();
    t.true(sentBeforeKill < layer.size, 'the kill landed mid-blob');

    const r1 = await withTimeout(fromA, WAIT_MS, 'the client of the killed replica');
    t.truthy(r1.error, 'the client of the killed replica got an aborted transfer');
    assertPrefix(t, r1.body, layer.bytes, 'client of A');
    t.true(r1.body.length < layer.size);

    let r2 = await withTimeout(fromB, WAIT_MS, 'the client of B to finish or fail');
    assertPrefix(t, r2.body, layer.bytes, 'client of B');
    t.log(`B's client: ${r2.body.length} of ${layer.size} bytes${r2.error ? ` then ${r2.error.message}` : ''}`);
    for (let i = 0; i < 3 && (r2.error || r2.body.length !== layer.size); i++) r2 = await withTimeout(fetchStream(`${b.url}${url}`), WAIT_MS, 'a retry through B'); // a client retries
    t.is(r2.status, 200);
    t.is(sha256(r2.body), layer.digest);

    const gets = fake.find({ method: 'GET', path: url });
    t.log(`upstream blob GETs: ${gets.map((g) => `${g.headers.range ?? 'full'} (${g.bytes} bytes)`).join(', ')}`);
    t.true(gets.length >= 2 && gets.length <= 3, 'A\'s fetch, then one takeover by B (a resume, or a fresh fetch for a retry)');

    // Stored exactly once and intact: the row's size, and the object's bytes as another
    // replica serves them with the upstream gone.
    await waitFor(async () => (await blobRows(shared.db, [layer.digest])) === 1, WAIT_MS, 'the blob committed');
    const rows = await sharedQuery<{ size: string }>(shared.db, 'SELECT size FROM blobs WHERE digest = $1', [layer.digest]);
    t.is(Number(rows[0]?.size), layer.size);
    await fake.stop(); // the checker can only answer from the shared store
    const checker = await serve(t, { ...upstreamConfig(fake), storage: shared.config(await tempDir(t)), cluster: CLUSTER });
    const stored = await http('GET', `${checker.url}${url}`);
    t.is(stored.status, 200);
    t.is(sha256(stored.body), layer.digest);
  });

  test('a peer that sends wrong bytes: the non-owner verifies, aborts its client and stores nothing; after the lease expires it fetches itself', async (t) => {
    const fake = await startFake(t);
    const img = layeredImage('fills-liar', [1 * MiB]);
    const layer = img.layers[0]!;
    fake.addImage(REPO, img, 'v1');
    const rs = await replicas(t, 1, { ...upstreamConfig(fake), cluster: { secret: SECRET, fillLeaseTtl: LEASE_TTL } });
    const b = rs[0]!;
    // A "replica" that holds the fill lease and streams a flipped byte under the right length.
    const wrong = Buffer.from(layer.bytes);
    wrong[wrong.length >> 1]! ^= 0xff;
    const seen: Array<string | undefined> = [];
    const liar = httpNode.createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': wrong.length }).end(wrong);
    });
    await new Promise<void>((r) => liar.listen(0, '127.0.0.1', r));
    t.teardown(() => new Promise<void>((r) => liar.close(() => r())));
    const port = (liar.address() as { port: number }).port;
    await sharedQuery(
      rs.db,
      `INSERT INTO leases (name, owner, token, acquired_at, expires_at)
       VALUES ($1, $2, nextval('lease_tokens'), clock_timestamp(), clock_timestamp() + interval '3 seconds')`,
      [`fill:${layer.digest}`, `liar http://127.0.0.1:${port}`],
    );

    const r = await withTimeout(fetchStream(`${b.url}${blobPath(layer.digest)}`), WAIT_MS, 'the client of the non-owner');
    t.truthy(r.error, 'an aborted transfer');
    t.true(r.body.length < layer.size, 'the last byte was withheld');
    t.deepEqual(seen, [`Bearer ${SECRET}`], 'the non-owner asked the lease holder, with the secret');
    t.is(blobGets(fake, layer.digest), 0, 'no upstream fetch while another replica holds the lease');
    t.is(await blobRows(rs.db, [layer.digest]), 0, 'nothing stored');
    // What the server logged about it (error level, which noServerErrors would report).
    const integrity = b.logs.filter((l) => l.includes('cluster integrity error'));
    t.true(integrity.length > 0);
    b.logs.splice(0, b.logs.length, ...b.logs.filter((l) => !integrity.includes(l)));

    // The liar never renews: once its lease expired the replica takes it and fetches itself.
    let ok = r;
    const deadline = Date.now() + WAIT_MS;
    while (sha256(ok.body) !== layer.digest && Date.now() < deadline) ok = await withTimeout(fetchStream(`${b.url}${blobPath(layer.digest)}`), WAIT_MS, 'a retry');
    t.is(sha256(ok.body), layer.digest);
    t.is(blobGets(fake, layer.digest), 1);
    b.logs.splice(0, b.logs.length, ...b.logs.filter((l) => !l.includes('integrity error')));
  });

  const ctrMissing = missingTools(['containerd', 'ctr']);
  (ctrMissing.length === 0 || CI ? test : test.skip)('containerd pulls through one replica while curl-style clients pull through the others: every blob fetched once', async (t) => {
    const fake = await startFake(t);
    const img = layeredImage('fills-ctr', [2 * MiB, 512 * 1024, 64 * 1024]);
    fake.addImage(REPO, img, 'v1');
    throttleBlobs(fake, 128 * 1024, 25);
    const [rs, ctd] = await Promise.all([replicas(t, 3, { ...upstreamConfig(fake), cluster: CLUSTER }), startContainerd(t)]);
    const hostsDir = path.join(await tempDir(t, 'regmirror-hosts-'), 'certs.d');
    await writeHostsToml(hostsDir, UP, { server: `http://127.0.0.1:${await freePort()}`, hosts: [{ url: rs[0]!.url }] });
    const expected = [img.manifest.digest, ...blobsOf(img).map((b) => b.digest)];
    const [, ...curl] = await Promise.all([
      ctd.pull(`${UP}/${REPO}:v1`, { namespace: 'fills', hostsDir, platform: 'linux/amd64' }),
      ...Array.from({ length: 6 }, (_, i) => pull(rs[1 + (i % 2)]!.url, img)),
    ]);
    for (const got of curl) t.deepEqual(got, expected);
    const content = await ctd.content('fills');
    for (const d of expected) t.true(content.includes(d), `containerd holds ${d}`);
    for (const b of blobsOf(img)) t.is(blobGets(fake, b.digest), 1, `upstream GETs of ${b.digest}`);
    // Tags are cached per Accept set (shared.ts acceptKey): containerd's and the curl clients' differ,
    // so one upstream GET of the tag for each, across the three replicas.
    t.is(fake.count({ path: /\/manifests\// }), 2, 'one upstream manifest request per Accept set (containerd, curl) across 3 replicas');
  });
}
