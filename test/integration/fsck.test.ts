/**
 * `regmirror fsck`: damaged blobs on disk are found; --repair drops damaged cached blobs
 * (the next pull refetches them from the upstream) and only reports damaged pushed ones.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import Database from 'better-sqlite3';
import { startServer, type TestServer } from '../helpers/server.js';
import { http } from '../helpers/http.js';
import type { Digest } from '../../src/registry/names.js';
import { fsck } from '../../src/ops/fsck.js';
import { pushImage, sampleImage } from './_support.js';
import { startFake, upstreamEntry, waitFor } from './_pullthrough.js';

const execFileP = promisify(execFile);
const UP = 'hub.test';

function blobFile(storage: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return path.join(storage, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

const stored = (s: TestServer, d: string) => s.db().blobSize(d as Digest) !== undefined;

test('fsck finds flipped, truncated and missing blobs; --repair drops the cached ones, which the next pull refetches', async (t) => {
  const fake = await startFake(t);
  const cachedImg = sampleImage('fsck-cached');
  fake.addImage('team/app', cachedImg, 'v1');
  const config = { upstreams: { [UP]: upstreamEntry(fake) }, defaultUpstream: UP };
  const s = await startServer(t, config);
  const storage = path.join(s.dataDir, 'storage');
  const [flipped, truncated] = cachedImg.layers;
  for (const b of [flipped!, truncated!]) {
    t.is((await http('GET', `${s.url}/v2/team/app/blobs/${b.digest}`)).status, 200);
    await waitFor(() => stored(s, b.digest), 10_000, 'cached blob committed');
  }
  const pushedImg = sampleImage('fsck-pushed');
  t.is((await pushImage(s.url, 'team/local', pushedImg)).status, 201);
  await s.app.close();

  // Damage: one flipped byte, one truncated file, one pushed blob deleted.
  const f1 = blobFile(storage, flipped!.digest);
  const bytes = await fs.readFile(f1);
  bytes[10] = bytes[10]! ^ 0xff;
  await fs.writeFile(f1, bytes);
  await fs.truncate(blobFile(storage, truncated!.digest), 5);
  const lost = pushedImg.layers[0]!;
  await fs.rm(blobFile(storage, lost.digest));

  const report = await fsck({ storage }, { repair: false });
  t.is(report.checked, 2 + pushedImg.layers.length + 1);
  const byDigest = new Map(report.problems.map((p) => [p.digest, p]));
  t.is(report.problems.length, 3);
  t.like(byDigest.get(flipped!.digest as Digest), { problem: 'digest', pushed: false, repaired: false });
  t.like(byDigest.get(truncated!.digest as Digest), { problem: 'size', pushed: false, repaired: false });
  t.like(byDigest.get(lost.digest as Digest), { problem: 'missing', pushed: true, repaired: false });
  t.true((await fs.stat(f1)).isFile(), 'a check without --repair changes nothing');

  // The CLI: exit 1 while damage remains (the pushed blob can never be repaired here).
  const configFile = path.join(s.dataDir, 'regmirror.json');
  await fs.writeFile(configFile, JSON.stringify({ storage, ...config }));
  const err = (await t.throwsAsync(execFileP(process.execPath, ['dist/cli.js', 'fsck', '--repair', '--config', configFile]))) as Error & { code?: number; stdout?: string };
  t.is(err.code, 1);
  const repaired = JSON.parse(String(err.stdout)) as { problems: Array<{ digest: string; repaired: boolean }> };
  t.deepEqual(repaired.problems.filter((p) => p.repaired).map((p) => p.digest).sort(), [flipped!.digest, truncated!.digest].sort());
  await t.throwsAsync(fs.stat(f1), undefined, 'damaged cached file removed');

  // A server on the same storage pulls the repaired blobs again, byte-identical.
  const s2 = await startServer(t, { ...config, storage });
  for (const b of [flipped!, truncated!]) {
    t.false(stored(s2, b.digest));
    const r = await http('GET', `${s2.url}/v2/team/app/blobs/${b.digest}`);
    t.is(r.status, 200);
    t.true(r.body.equals(b.bytes));
    t.is(fake.blobGets(b.digest), 2, 'fetched again from the upstream');
  }
});

test('fsck on healthy storage: every blob checked, no problems', async (t) => {
  const s = await startServer(t);
  const img = sampleImage('fsck-ok');
  t.is((await pushImage(s.url, 'team/ok', img)).status, 201);
  await s.app.close();
  const storage = path.join(s.dataDir, 'storage');
  const r = await fsck({ storage }, { repair: true });
  t.is(r.problems.length, 0);
  t.is(r.counters, undefined, 'the maintained counters agree with the rows');
  t.is(r.checked, img.layers.length + 1);
  t.is(r.bytes, [...img.layers, img.config].reduce((n, b) => n + b.size, 0));
});

test('fsck checks the maintained counters (cached bytes, blob count) against the rows; --repair sets them right', async (t) => {
  const fake = await startFake(t);
  const img = sampleImage('fsck-counters');
  fake.addImage('team/app', img, 'v1');
  const config = { upstreams: { [UP]: upstreamEntry(fake) }, defaultUpstream: UP };
  const s = await startServer(t, config);
  for (const b of img.layers) {
    t.is((await http('GET', `${s.url}/v2/team/app/blobs/${b.digest}`)).status, 200);
    await waitFor(() => stored(s, b.digest), 10_000, 'cached blob committed');
  }
  const cachedBytes = img.layers.reduce((n, b) => n + b.size, 0);
  t.is(s.db().cachedBytes(), cachedBytes);
  await s.app.close();
  const storage = path.join(s.dataDir, 'storage');
  t.is((await fsck({ storage }, { repair: false })).counters, undefined, 'consistent after real pulls');

  // Drift, as a bug or a hand edit could leave it.
  const raw = new Database(path.join(storage, 'regmirror.db'));
  raw.prepare("UPDATE counters SET value = value + 1000 WHERE name IN ('cached_bytes', 'blobs')").run();
  raw.close();
  const found = await fsck({ storage }, { repair: false });
  t.deepEqual(found.counters, {
    wrongFlags: 0,
    counters: [
      { name: 'blobs', stored: img.layers.length + 1000, actual: img.layers.length },
      { name: 'cached_bytes', stored: cachedBytes + 1000, actual: cachedBytes },
    ],
    repaired: false,
  });
  const configFile = path.join(s.dataDir, 'regmirror.json');
  await fs.writeFile(configFile, JSON.stringify({ storage, ...config }));
  const err = (await t.throwsAsync(execFileP(process.execPath, ['dist/cli.js', 'fsck', '--config', configFile]))) as Error & { code?: number };
  t.is(err.code, 1, 'the CLI exits 1 while a counter is wrong');
  const fixed = JSON.parse((await execFileP(process.execPath, ['dist/cli.js', 'fsck', '--repair', '--config', configFile])).stdout) as { counters?: { repaired: boolean } };
  t.is(fixed.counters?.repaired, true);
  t.is((await fsck({ storage }, { repair: false })).counters, undefined, 'right after the repair');
});
