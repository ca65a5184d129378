/**
 * `regmirror prefetch`: images pulled through a running mirror over a real socket, so a
 * later pull finds them cached (even with the upstream gone). Counts upstream GETs.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import test, { type ExecutionContext } from 'ava';
import { startServer, type TestServer } from '../helpers/server.js';
import { http } from '../helpers/http.js';
import { makeIndex } from '../fixtures/images.js';
import type { FakeUpstream } from '../fixtures/fake-upstream.js';
import type { Digest } from '../../src/registry/names.js';
import { parseImageRef, prefetchImage } from '../../src/ops/prefetch.js';
import { sampleImage } from './_support.js';
import { startFake, upstreamEntry, waitFor } from './_pullthrough.js';

const execFileP = promisify(execFile);
const UP = 'hub.test';
const REPO = 'team/app';

const amd = sampleImage('prefetch-amd64', { arch: 'amd64' });
const arm = sampleImage('prefetch-arm64', { arch: 'arm64' });
const INDEX = makeIndex([
  { image: amd, platform: { architecture: 'amd64', os: 'linux' } },
  { image: arm, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
]);

async function setup(t: ExecutionContext): Promise<{ fake: FakeUpstream; s: TestServer }> {
  const fake = await startFake(t);
  fake.addIndex(REPO, INDEX, '1.0');
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(fake) }, defaultUpstream: null });
  return { fake, s };
}

const stored = (s: TestServer, d: string) => s.db().blobSize(d as Digest) !== undefined;

test('prefetch pulls every platform of an index through the mirror once; later pulls need no upstream', async (t) => {
  const { fake, s } = await setup(t);
  const r = await prefetchImage(`${UP}/${REPO}:1.0`, { mirror: s.url });
  t.is(r.error, null);
  t.is(r.digest, INDEX.index.digest);
  t.is(r.manifests, 3);
  const blobs = [amd.config, ...amd.layers, arm.config, ...arm.layers];
  t.is(r.blobs, blobs.length);
  t.is(r.bytes, blobs.reduce((n, b) => n + b.size, 0));
  for (const b of blobs) {
    t.is(fake.blobGets(b.digest), 1, `${b.digest} fetched upstream once`);
    // The last byte goes out once the digest matched; the commit (fsync, rename, row) follows.
    await waitFor(() => stored(s, b.digest), 10_000, `${b.digest} committed`);
  }

  await fake.stop();
  for (const b of blobs) {
    const res = await http('GET', `${s.url}/v2/${REPO}/blobs/${b.digest}?ns=${UP}`);
    t.is(res.status, 200);
    t.true(res.body.equals(b.bytes));
  }
});

test('--platform limits an index to the matching children', async (t) => {
  const { fake, s } = await setup(t);
  const r = await prefetchImage(`${UP}/${REPO}:1.0`, { mirror: s.url, platforms: ['linux/arm64/v8'] });
  t.is(r.error, null);
  t.is(r.manifests, 2);
  for (const b of [arm.config, ...arm.layers]) await waitFor(() => stored(s, b.digest), 10_000, `${b.digest} committed`);
  for (const b of [amd.config, ...amd.layers]) {
    t.false(stored(s, b.digest), 'other platform not fetched');
    t.is(fake.blobGets(b.digest), 0);
  }
});

test('the CLI prints one JSON line per image and exits 1 when one failed', async (t) => {
  const { s } = await setup(t);
  const err = await t.throwsAsync(execFileP(process.execPath, ['dist/cli.js', 'prefetch', '--mirror', s.url, `${UP}/${REPO}:1.0`, `${UP}/${REPO}:missing`]));
  const e = err as Error & { code?: number; stdout?: string };
  t.is(e.code, 1);
  const lines = String(e.stdout).trim().split('\n').map((l) => JSON.parse(l) as { image: string; error: string | null; manifests: number });
  t.is(lines.length, 2);
  t.is(lines[0]!.error, null);
  t.is(lines[0]!.manifests, 3);
  t.regex(lines[1]!.error ?? '', /HTTP 404/);
});

test('image references normalize like docker', (t) => {
  t.deepEqual(parseImageRef('alpine'), { registry: 'docker.io', repository: 'library/alpine', reference: 'latest' });
  t.deepEqual(parseImageRef('bitnami/redis:7.2'), { registry: 'docker.io', repository: 'bitnami/redis', reference: '7.2' });
  t.deepEqual(parseImageRef('localhost:5000/x/y:1'), { registry: 'localhost:5000', repository: 'x/y', reference: '1' });
  const d = `sha256:${'a'.repeat(64)}`;
  t.deepEqual(parseImageRef(`gcr.io/proj/img@${d}`), { registry: 'gcr.io', repository: 'proj/img', reference: d });
  for (const bad of ['UPPER/case', 'a@sha256:zz', 'x/y:bad tag', '']) t.throws(() => parseImageRef(bad), undefined, bad);
});
