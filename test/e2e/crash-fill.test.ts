/**
 * Crash safety of blob fills (issue 8 item 5), with the real CLI as a child process.
 *
 * An in-process fake upstream holds one image per round: an OCI index with two platforms,
 * each with a config and 3-4 layers. Per round, some blobs are already cached (a base layer
 * shared by every round, the previous round's shared layer) and six are cold. Blob bodies
 * are throttled, so fills are in flight when the kill lands. Each round:
 *   1. four clients pull the tag at once (index, child manifest, config, layers three at a
 *      time; two of them with Range requests); every response that completes must carry
 *      exactly the fixture's bytes;
 *   2. SIGKILL at a point drawn from a seeded schedule: a random delay while the upstream
 *      holds the blob responses (nothing of the round committed yet), a random delay, a
 *      random share of the round's cold bytes sent by the upstream (mid-fill), or right
 *      before or after the N-th blob file rename, before its row
 *      (test/helpers/kill-on-blob-rename.ts);
 *   3. with the server down: `regmirror fsck` exits 0 and reports no problem; every row's
 *      file and every file under blobs/ hashes to its name; no committed row was lost;
 *   4. restart: storage/tmp was wiped; a full pull returns every byte of the round's image
 *      exactly; the upstream sent no blob that had a row (committed earlier, or before the
 *      kill) and each uncommitted cold blob exactly once.
 * 20 rounds as 4 serial chains of 5: a chain's rounds share one storage directory (so
 * earlier rounds' blobs are cached, and must be neither lost nor fetched again), and each
 * chain is its own test, well inside ava's timeout on a loaded machine. Every server runs
 * with the rename hook preloaded; it does nothing until a rename round arms it. At the
 * end the kills must have covered: nothing of a round committed, fills in progress (temp
 * files left), a file without its row, and a round cut after some blobs committed.
 * CRASH_FILL_SEED=<n> repeats the schedule and the images (the seed is in the test log);
 * kill timing still depends on the machine.
 */
import test, { type ExecutionContext } from 'ava';
import Database from 'better-sqlite3';
import fs from 'node:fs/promises';
import path from 'node:path';
import { request as undiciRequest } from 'undici';
import { tempDir } from '../helpers/server.js';
import { agent, http, sha256 } from '../helpers/http.js';
import { type CliServer, assertBlobStoreIntact, assertTmpEmpty, exited, runCli, sleep, startCli, waitFor, withTimeout, writeConfig } from '../helpers/cli.js';
import { FakeUpstream, type Fault } from '../fixtures/fake-upstream.js';
import { type Blob, type Image, type ImageIndex, type Layer, MediaTypes, makeImage, makeIndex, makeLayer, randomBytes } from '../fixtures/images.js';

const CHAINS = 4;
const ROUNDS = 5;
const UP = 'fill.test';
const KiB = 1024;
const ACCEPT = [MediaTypes.ociIndex, MediaTypes.ociManifest].join(', ');
const BLOB_PATH = /\/blobs\//;
/** Cold blob bodies arrive at ~8 MB/s each: a round's fills take a few hundred ms. */
const THROTTLE: Fault = { method: 'GET', path: BLOB_PATH, throttle: { chunkBytes: 32 * KiB, intervalMs: 4 } };
const PHASE_TIMEOUT_MS = 60_000;
const PRELOAD = new URL('../helpers/kill-on-blob-rename.js', import.meta.url).href;

/** mulberry32: small, seedable, good enough to spread kill points. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

type KillKind = 'held' | 'delay' | 'bytes' | 'before-rename' | 'after-rename';
interface Plan {
  kind: KillKind;
  /** held, delay: ms after the clients start; bytes: share of the cold layer bytes; renames: N. */
  at: number;
}

/** One chain's kill points: every kind once, in a random order. */
function schedule(rand: () => number): Plan[] {
  const kinds: KillKind[] = ['held', 'before-rename', 'after-rename', 'bytes', 'delay'];
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [kinds[i], kinds[j]] = [kinds[j]!, kinds[i]!];
  }
  return kinds.map((kind) => {
    const r = rand();
    if (kind === 'held') return { kind, at: Math.floor(r * 150) };
    if (kind === 'delay') return { kind, at: Math.floor(r * 600) };
    if (kind === 'bytes') return { kind, at: 0.05 + r * 0.9 };
    return { kind, at: 1 + Math.floor(r * 6) }; // six cold blobs per round
  });
}

interface RoundImage {
  repo: string;
  tag: string;
  index: ImageIndex;
  amd: Image;
  arm: Image;
  /** Config and layer blobs of both platforms, by digest. */
  blobs: Map<string, Blob>;
  /** Blobs no earlier round had: the upstream must send each of them to this round. */
  cold: Set<string>;
  coldLayerBytes: number;
  shared: Layer;
}

function roundImage(chain: number, round: number, rand: () => number, base: Layer, prev: Layer | null): RoundImage {
  const layer = (name: string) =>
    makeLayer([{ name: `${name}.bin`, content: randomBytes(256 * KiB + Math.floor(rand() * 1280 * KiB), `crash-fill-${chain}-${round}-${name}`) }], { gzip: false });
  const shared = layer('shared');
  const [amd1, amd2, arm1] = [layer('amd1'), layer('amd2'), layer('arm1')];
  const amd = makeImage({ arch: 'amd64', layers: [base, ...(prev ? [prev] : []), shared, amd1, amd2] });
  const arm = makeImage({ arch: 'arm64', layers: [base, shared, arm1] });
  const index = makeIndex([
    { image: amd, platform: { architecture: 'amd64', os: 'linux' } },
    { image: arm, platform: { architecture: 'arm64', os: 'linux' } },
  ]);
  const blobs = new Map<string, Blob>();
  for (const img of [amd, arm]) for (const b of [img.config, ...img.layers]) blobs.set(b.digest, b);
  const coldLayers = [shared, amd1, amd2, arm1, ...(round === 1 ? [base] : [])];
  const cold = new Set([amd.config.digest, arm.config.digest, ...coldLayers.map((l) => l.digest)]);
  return { repo: `crash/chain${chain}`, tag: `r${round}`, index, amd, arm, blobs, cold, coldLayerBytes: coldLayers.reduce((n, l) => n + l.size, 0), shared };
}

// ---------------------------------------------------------------------------
// clients

interface PhaseStats {
  complete: number;
  cut: number;
  wrong: string[];
  unexpected: string[];
}

/** GET and compare whatever completes with the fixture (a 206 with its slice); throws when cut. */
async function fetchChecked(url: string, headers: Record<string, string>, expected: Buffer, stats: PhaseStats): Promise<void> {
  const res = await undiciRequest(url, { headers, dispatcher: agent });
  const parts: Buffer[] = [];
  try {
    for await (const c of res.body as AsyncIterable<Buffer>) parts.push(c);
  } catch (e) {
    stats.cut++;
    throw e;
  }
  const body = Buffer.concat(parts);
  let want: Buffer | undefined = expected;
  if (res.statusCode === 206) {
    const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(String(res.headers['content-range'] ?? ''));
    want = m && Number(m[3]) === expected.length ? expected.subarray(Number(m[1]), Number(m[2]) + 1) : undefined;
  } else if (res.statusCode !== 200) {
    stats.unexpected.push(`${res.statusCode} ${url}: ${body.subarray(0, 200).toString()}`);
    return;
  }
  if (want && body.equals(want)) stats.complete++;
  else stats.wrong.push(`${res.statusCode} ${url} ${res.headers['content-range'] ?? ''}: ${body.length} bytes`);
}

/** One client's pull (like containerd: index, child, config, layers three at a time); ends at the first cut. */
async function pull(base: string, img: RoundImage, image: Image, ranges: boolean, stats: PhaseStats): Promise<void> {
  const url = (kind: string, ref: string) => `${base}/v2/${img.repo}/${kind}/${ref}`;
  await fetchChecked(url('manifests', img.tag), { accept: ACCEPT }, img.index.index.bytes, stats);
  await fetchChecked(url('manifests', image.manifest.digest), { accept: ACCEPT }, image.manifest.bytes, stats);
  await fetchChecked(url('blobs', image.config.digest), {}, image.config.bytes, stats);
  const layers = ranges ? [...image.layers].reverse() : image.layers;
  for (let i = 0; i < layers.length; i += 3) {
    await Promise.all(
      layers.slice(i, i + 3).map((l, j) => {
        const from = Math.floor(l.size / 3);
        const range = (i + j) % 2 === 0 ? `bytes=${from}-` : `bytes=${from}-${from + Math.floor(l.size / 3)}`;
        return fetchChecked(url('blobs', l.digest), ranges ? { range } : {}, l.bytes, stats);
      }),
    );
  }
}

/** After the restart: every manifest and blob of the round, whole and by Range, exact. */
async function verifyPull(t: ExecutionContext, base: string, img: RoundImage, rand: () => number): Promise<void> {
  const idx = await http('GET', `${base}/v2/${img.repo}/manifests/${img.tag}`, { headers: { accept: ACCEPT } });
  t.is(idx.status, 200, `${img.tag}: ${idx.body.toString()}`);
  t.true(idx.body.equals(img.index.index.bytes), `${img.tag}: index bytes`);
  await Promise.all(
    [img.amd, img.arm].map(async (image) => {
      const m = await http('GET', `${base}/v2/${img.repo}/manifests/${image.manifest.digest}`, { headers: { accept: ACCEPT } });
      t.true(m.status === 200 && m.body.equals(image.manifest.bytes), `${img.tag}: child manifest ${m.status}`);
      for (const b of [image.config, ...image.layers]) {
        const get = await http('GET', `${base}/v2/${img.repo}/blobs/${b.digest}`);
        t.is(get.status, 200, `${img.tag}: GET ${b.digest}`);
        t.true(sha256(get.body) === b.digest && get.body.equals(b.bytes), `${img.tag}: blob ${b.digest} served with wrong bytes`);
        const head = await http('HEAD', `${base}/v2/${img.repo}/blobs/${b.digest}`);
        t.true(head.status === 200 && head.header('content-length') === String(b.size), `${img.tag}: HEAD ${b.digest}`);
        const from = Math.floor(rand() * b.size);
        const to = from + Math.floor(rand() * (b.size - from));
        const part = await http('GET', `${base}/v2/${img.repo}/blobs/${b.digest}`, { headers: { range: `bytes=${from}-${to}` } });
        t.true(part.status === 206 && part.body.equals(b.bytes.subarray(from, to + 1)), `${img.tag}: Range ${from}-${to} of ${b.digest}: ${part.status}`);
      }
    }),
  );
}

// ---------------------------------------------------------------------------
// storage, read with the server down

function blobRows(storage: string): Set<string> {
  const db = new Database(path.join(storage, 'regmirror.db'), { readonly: true, fileMustExist: true });
  try {
    return new Set(db.prepare<[], { digest: string }>('SELECT digest FROM blobs').all().map((r) => r.digest));
  } finally {
    db.close();
  }
}

async function fsckClean(t: ExecutionContext, config: string, what: string): Promise<number> {
  const r = await runCli(['fsck', '--config', config], path.dirname(config));
  t.is(r.code, 0, `${what}: fsck exit ${r.code}: ${r.stdout} ${r.stderr}`);
  const report = JSON.parse(r.stdout) as { checked: number; problems: unknown[] };
  t.deepEqual(report.problems, [], `${what}: fsck found damage`);
  return report.checked;
}

const subset = (a: Set<string>, b: Set<string>) => [...a].filter((d) => !b.has(d));

/** Files outside blobs/ other than the database: where a fill might have staged data and left it. */
async function strayFiles(storage: string): Promise<string[]> {
  const entries = await fs.readdir(storage, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => !e.isDirectory())
    .map((e) => path.relative(storage, path.join(e.parentPath, e.name)))
    .filter((rel) => !rel.startsWith(`blobs${path.sep}`) && !/^regmirror\.db(-wal|-shm)?$/.test(rel));
}

// ---------------------------------------------------------------------------

const SEED = Number(process.env.CRASH_FILL_SEED ?? Math.floor(Math.random() * 2 ** 31));
const covered = { nothingCommitted: 0, fillsInProgress: 0, fileWithoutRow: 0, someCommitted: 0 };
let chainsRun = 0;
let fake: FakeUpstream;

test.before(async () => {
  fake = await FakeUpstream.start();
});
test.after.always(() => fake?.close());

/** One chain: ROUNDS crash rounds on one storage directory, one fresh image per round. */
async function chain(t: ExecutionContext, n: number): Promise<void> {
  const seed = SEED + n;
  t.log(`seed ${SEED} (CRASH_FILL_SEED=${SEED} repeats the kill schedule and the images; kill timing still varies)`);
  const rand = prng(seed);
  const plans = schedule(rand);
  const dir = await tempDir(t, 'regmirror-crashfill-');
  const { config, storage } = await writeConfig(dir, ['upstreams:', `  ${UP}:`, `    endpoints: [${fake.url}]`, `defaultUpstream: ${UP}`]);
  const killFile = path.join(dir, 'kill-at-rename');
  await fs.writeFile(killFile, '');
  const start = () => startCli(t, config, { nodeArgs: ['--import', PRELOAD], env: { REGMIRROR_TEST_KILL_FILE: killFile } });

  const base = makeLayer([{ name: 'base.bin', content: randomBytes(512 * KiB, `crash-fill-${n}-base`) }], { gzip: false });
  let prev: Layer | null = null;
  let rows = new Set<string>();
  let server: CliServer = await start();

  for (let round = 1; round <= ROUNDS; round++) {
    const began = Date.now();
    const plan = plans[round - 1]!;
    const img = roundImage(n, round, rand, base, prev);
    const what = `chain ${n} round ${round} (${plan.kind} ${plan.kind === 'bytes' ? plan.at.toFixed(2) : plan.at})`;
    fake.addIndex(img.repo, img.index, img.tag);
    fake.faults = plan.kind === 'held' ? [{ ...THROTTLE, headerDelayMs: 30_000 }] : [THROTTLE];
    const renameHook = plan.kind === 'before-rename' || plan.kind === 'after-rename';
    if (renameHook) await fs.writeFile(killFile, `${img.tag} ${plan.at} ${plan.kind === 'before-rename' ? 'before' : 'after'}`);
    const roundStart = fake.requests.length;
    const rowsBefore = rows;
    const coldSent = () =>
      fake.requests.slice(roundStart).reduce((sum, r) => sum + (r.method === 'GET' && BLOB_PATH.test(r.path) && img.cold.has(r.path.slice(-71)) ? r.bytes : 0), 0);

    // 1-2: the concurrent cold pull, and the kill.
    const stats: PhaseStats = { complete: 0, cut: 0, wrong: [], unexpected: [] };
    const s = server;
    const specs: Array<[Image, boolean]> = [[img.amd, false], [img.amd, true], [img.arm, false], [img.arm, true]];
    const clients = Promise.all(specs.map(([image, ranges]) => pull(s.url, img, image, ranges, stats).catch(() => undefined)));
    let allDone = false;
    void clients.then(() => (allDone = true));
    if (plan.kind === 'held' || plan.kind === 'delay') await sleep(plan.at);
    else if (plan.kind === 'bytes') {
      await waitFor(async () => (coldSent() >= plan.at * img.coldLayerBytes || allDone ? true : undefined), PHASE_TIMEOUT_MS, `${what}: cold bytes`, 2);
    } else {
      // Every cold blob is renamed into blobs/ once the clients pulled it, so the N-th rename comes.
      await waitFor(async () => (exited(s.child) ? true : undefined), PHASE_TIMEOUT_MS, `${what}: the self-kill at the N-th blob rename`, 2);
      t.is(s.child.signalCode, 'SIGKILL');
    }
    await s.kill();
    await fs.writeFile(killFile, '');
    await withTimeout(clients, PHASE_TIMEOUT_MS, `${what}: clients to see the server gone`);
    t.deepEqual(stats.wrong, [], `${what}: wrong bytes served before the crash`);
    t.deepEqual(stats.unexpected, [], `${what}: unexpected statuses before the crash`);

    // 3: the storage as the crash left it, checked with the server down.
    const tmpLeft = await fs.readdir(path.join(storage, 'tmp'));
    const checked = await fsckClean(t, config, what);
    rows = blobRows(storage);
    t.is(checked, rows.size, `${what}: fsck checked every row`);
    const files = await assertBlobStoreIntact(t, storage);
    t.deepEqual(subset(rows, files), [], `${what}: rows without a file`);
    t.deepEqual(subset(rowsBefore, rows), [], `${what}: committed rows lost by the crash`);
    const orphans = new Set(subset(files, rows));
    // A file without its row is replaced by the next fill of that digest: only this round can leave one.
    t.deepEqual(subset(orphans, img.cold), [], `${what}: a file without a row survived a later pull`);
    if (plan.kind === 'after-rename') t.true(orphans.size > 0, `${what}: no file without its row after the kill after a rename`);
    if (plan.kind === 'before-rename') t.true(tmpLeft.length > 0, `${what}: no verified temp file left by the kill before a rename`);
    const committed = new Set([...img.cold].filter((d) => rows.has(d)));
    if (plan.kind === 'held') t.is(committed.size, 0, `${what}: committed while the upstream held every blob`);
    covered.nothingCommitted += committed.size === 0 ? 1 : 0;
    covered.fillsInProgress += tmpLeft.length > 0 ? 1 : 0;
    covered.fileWithoutRow += orphans.size > 0 ? 1 : 0;
    covered.someCommitted += committed.size > 0 && committed.size < img.cold.size ? 1 : 0;
    const crashSummary =
      `upstream sent ${coldSent()} of ${img.coldLayerBytes} cold layer bytes, ${stats.complete} responses complete, ${stats.cut} cut; ` +
      `cold committed ${committed.size}/${img.cold.size}, files without row ${orphans.size}, temp files ${tmpLeft.length}`;

    // 4: restart; tmp wiped; the pull is exact and fetches only what was not committed.
    fake.faults = [];
    server = await start();
    await assertTmpEmpty(t, storage);
    t.deepEqual(await strayFiles(storage), [], `${what}: files left outside blobs/ after the restart`);
    const verifyStart = fake.requests.length;
    await withTimeout(verifyPull(t, server.url, img, rand), PHASE_TIMEOUT_MS, `${what}: verification pull`);
    const blobGets = (from: number, d: string) => fake.requests.slice(from).filter((r) => r.method === 'GET' && r.path === `/v2/${img.repo}/blobs/${d}`).length;
    for (const d of rowsBefore) t.is(blobGets(roundStart, d), 0, `${what}: ${d} committed in an earlier round was fetched again`);
    for (const d of img.blobs.keys()) {
      if (rows.has(d)) t.is(blobGets(verifyStart, d), 0, `${what}: ${d} committed before the kill was fetched again`);
      else t.is(blobGets(verifyStart, d), 1, `${what}: ${d} not committed before the kill: one upstream fetch expected`);
    }
    // Bytes go out before the commit finishes: wait for each fill's "blob cached" line, so
    // the next round's kill cannot be what loses them.
    const pending = [...img.blobs.keys()].filter((d) => !rows.has(d));
    await waitFor(
      async () => (pending.every((d) => server.output.some((l) => l.includes('"blob cached"') && l.includes(d))) ? true : undefined),
      PHASE_TIMEOUT_MS,
      `${what}: fills of the verification pull to commit`,
    );
    for (const d of img.blobs.keys()) rows.add(d);
    prev = img.shared;
    t.log(`${what}: ${crashSummary}; round ${Date.now() - began} ms`);
    if (!t.passed) return; // later rounds would only repeat the failure
  }

  await server.kill();
  const checked = await fsckClean(t, config, `chain ${n} after the last round`);
  const final = blobRows(storage);
  t.is(checked, final.size);
  t.deepEqual(subset(rows, final), [], 'committed rows lost');
  t.deepEqual([...(await assertBlobStoreIntact(t, storage))].sort(), [...final].sort(), 'files and rows differ after the last pull');
  chainsRun++;
}

for (let n = 0; n < CHAINS; n++) {
  test.serial(`fills killed at random points, chain ${n + 1}/${CHAINS}: ${ROUNDS} rounds of 4 clients pulling a cold 2-platform image on one storage; fsck clean, tmp wiped, next pull exact, nothing committed refetched`, (t) =>
    chain(t, n),
  );
}

test.serial(`the ${CHAINS * ROUNDS} kills covered: nothing committed, fills in progress, a file without its row, some blobs committed`, (t) => {
  t.log(`seed ${SEED}; coverage ${JSON.stringify(covered)}`);
  t.is(chainsRun, CHAINS, 'a chain failed: coverage is incomplete');
  for (const [k, v] of Object.entries(covered)) t.true(v > 0, `no round covered "${k}" (seed ${SEED})`);
});
