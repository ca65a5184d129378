/**
 * The gc-leader with real processes on one real PostgreSQL and one real Ceph RADOS Gateway
 * bucket (issue #13): fencing is enforced by the database (a leader paused with SIGSTOP
 * past its lease, which another holder took over, changes nothing when SIGCONTed), and a
 * replica SIGKILLed mid-pass while holding the lease is replaced after the TTL by another
 * replica's next pass, which meets the budget. Never skipped under CI=true.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { http } from '../helpers/http.js';
import { exited, killHard, startCli, withTimeout, writeConfig } from '../helpers/cli.js';
import { blobRows, pullImageVerified, sharedMissing as missing, sharedQuery, sharedStorage, stopSharedServers } from '../helpers/replicas.js';
import { tempDir } from '../helpers/server.js';
import { CI } from '../helpers/tools.js';
import type { Image } from '../fixtures/images.js';
import type { FakeUpstream } from '../fixtures/fake-upstream.js';
import { startFake, upstreamEntry, waitFor } from './_pullthrough.js';
import { noServerErrors, sampleImage, serve } from './_support.js';

/** Generous ceilings for a loaded machine (polled, not slept). */
const WAIT_MS = 60_000;
/** cache/eviction.ts LEADER_TTL_MS: a dead replica's gc-leader lease lasts this long after its last renewal. */
const LEADER_TTL_MS = 30_000;
const here = path.dirname(fileURLToPath(import.meta.url));
const PAUSED_LEADER = path.join(here, '../helpers/paused-leader.js');
const KILL_ON_SQL = new URL('../helpers/kill-on-sql.js', import.meta.url).href;

const blobsOf = (img: Image) => [img.config, ...img.layers];
const imageBytes = (img: Image) => blobsOf(img).reduce((n, b) => n + b.bytes.length, 0);
const count = async (db: string, sql: string) => Number((await sharedQuery<{ n: string }>(db, sql))[0]!.n);
const storedBytes = (db: string) => count(db, 'SELECT COALESCE(SUM(size), 0) AS n FROM blobs');

function upstreamConfig(fake: FakeUpstream, cache: Record<string, unknown>): Record<string, unknown> {
  return { upstreams: { 'hub.test': upstreamEntry(fake) }, defaultUpstream: 'hub.test', cache: { evictInterval: '1h', ...cache } };
}

/** Lines a child writes to stdout and stderr. */
function collect(child: ChildProcess): string[] {
  const lines: string[] = [];
  let partial = '';
  const on = (c: Buffer) => {
    const parts = (partial + c.toString('utf8')).split('\n');
    partial = parts.pop() ?? '';
    if (lines.length < 2000) lines.push(...parts);
  };
  child.stdout!.on('data', on);
  child.stderr!.on('data', on);
  return lines;
}

if (missing && !CI) {
  test.skip(`shared gc-leader: ${missing}`, () => undefined);
} else {
  test.afterEach(noServerErrors);
  test.after.always(stopSharedServers);

  test('fencing: a leader SIGSTOPped after taking gc-leader, whose lease expired and was taken over, deletes and marks nothing when SIGCONTed', async (t) => {
    const fake = await startFake(t);
    const imgs = [0, 1].map((i) => sampleImage(`shared-fence-${i}`));
    imgs.forEach((img, i) => fake.addImage(`team/fence${i}`, img, 'latest'));
    const shared = await sharedStorage();
    const server = await serve(t, { ...upstreamConfig(fake, {}), storage: shared.config(await tempDir(t, 'regmirror-replica-')) });
    for (const [i, img] of imgs.entries()) await pullImageVerified(t, server.url, `team/fence${i}`, img);
    const digests = imgs.flatMap((img) => blobsOf(img).map((b) => b.digest));
    await waitFor(async () => (await blobRows(shared.db, digests)) === digests.length, WAIT_MS, 'every fill committed');
    const manifests = await count(shared.db, 'SELECT count(*) AS n FROM manifests');

    const dir = await tempDir(t, 'regmirror-paused-leader-');
    const gate = path.join(dir, 'go');
    const child = spawn(process.execPath, [PAUSED_LEADER, JSON.stringify(shared.config(dir)), gate], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } });
    t.teardown(() => killHard(child));
    const lines = collect(child);
    const exit = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await waitFor(() => lines.some((l) => l.startsWith('leased ')) || exited(child), WAIT_MS, 'the leader to take gc-leader');
    const oldToken = Number(lines.find((l) => l.startsWith('leased '))?.split(' ')[1]);
    t.true(Number.isSafeInteger(oldToken), lines.join('\n'));
    child.kill('SIGSTOP');
    await waitFor(async () => (await count(shared.db, "SELECT count(*) AS n FROM leases WHERE name = 'gc-leader' AND expires_at > clock_timestamp()")) === 0, WAIT_MS, 'the paused leader\'s lease to expire');
    // Another holder takes it over (as a replica's acquire does: a new token).
    const [taken] = await sharedQuery<{ token: string }>(
      shared.db,
      `UPDATE leases SET owner = 'new-leader', token = nextval('lease_tokens'), acquired_at = clock_timestamp(), expires_at = clock_timestamp() + interval '5 minutes'
       WHERE name = 'gc-leader' AND expires_at <= clock_timestamp() RETURNING token`,
    );
    t.true(Number(taken?.token) > oldToken, 'taken over with a newer token');
    await fs.writeFile(gate, '');
    child.kill('SIGCONT');
    await withTimeout(exit, WAIT_MS, 'the resumed leader to finish its pass');
    const result = JSON.parse(lines.filter((l) => l.startsWith('{')).at(-1) ?? '{}') as { skipped?: string; blobs?: number };
    t.is(result.skipped, 'fenced', `the database refused the pass's change: ${lines.join('\n')}`);
    t.is(await blobRows(shared.db, digests), digests.length, 'no blob row deleted');
    t.is(await count(shared.db, 'SELECT count(*) AS n FROM manifests'), manifests, 'no manifest unlinked');
    t.is(await count(shared.db, "SELECT count(*) AS n FROM leases WHERE name LIKE 'delete:%'"), 0, 'no content marked for deletion');
    t.deepEqual(
      await sharedQuery(shared.db, "SELECT owner FROM leases WHERE name = 'gc-leader'"),
      [{ owner: 'new-leader' }],
      'the new holder keeps the lease',
    );
    // The replica still serves every image whole.
    for (const [i, img] of imgs.entries()) await pullImageVerified(t, server.url, `team/fence${i}`, img);
  });

  test('takeover of a SIGKILLed leader: a replica killed mid-pass holding gc-leader is replaced after the TTL by another replica\'s pass, and the budget is met', async (t) => {
    const fake = await startFake(t);
    const imgs = [0, 1, 2, 3].map((i) => sampleImage(`shared-kill-leader-${i}`));
    imgs.forEach((img, i) => fake.addImage(`team/kill${i}`, img, 'latest'));
    const total = imgs.reduce((n, img) => n + imageBytes(img), 0);
    const maxBytes = Math.floor(total / 2);
    const shared = await sharedStorage();
    // The content arrives through a replica that does not evict during the test (interval 1h).
    const feeder = await serve(t, { ...upstreamConfig(fake, { maxBytes }), storage: shared.config(await tempDir(t, 'regmirror-replica-')) });
    for (const [i, img] of imgs.entries()) await pullImageVerified(t, feeder.url, `team/kill${i}`, img);
    const digests = imgs.flatMap((img) => blobsOf(img).map((b) => b.digest));
    await waitFor(async () => (await blobRows(shared.db, digests)) === digests.length, WAIT_MS, 'every fill committed');
    t.is(await storedBytes(shared.db), total);

    const start = async (extraEnv: Record<string, string>) => {
      const dir = await tempDir(t, 'regmirror-leader-cli-');
      const lines = [
        `upstreams: ${JSON.stringify({ 'hub.test': { endpoints: [fake.url], libraryPrefix: true } })}`,
        'defaultUpstream: hub.test',
        `cache: ${JSON.stringify({ maxBytes, evictInterval: '1s', deleteGrace: '0s' })}`,
      ];
      const { config } = await writeConfig(dir, lines, shared.config(dir));
      return startCli(t, config, { env: extraEnv, nodeArgs: ['--import', KILL_ON_SQL] });
    };
    // A: dies by SIGKILL just before its first eviction unit's first DELETE, holding the lease.
    const a = await start({ REGMIRROR_TEST_KILL_ON_SQL: 'DELETE FROM manifests WHERE' });
    await withTimeout(new Promise<void>((resolve) => (exited(a.child) ? resolve() : a.child.once('exit', () => resolve()))), WAIT_MS, 'A to die mid-pass');
    t.is(a.child.signalCode, 'SIGKILL');
    const [dead] = await sharedQuery<{ owner: string; token: string; left: number }>(
      shared.db,
      "SELECT owner, token, extract(epoch from expires_at - clock_timestamp()) * 1000 AS left FROM leases WHERE name = 'gc-leader' AND expires_at > clock_timestamp()",
    );
    t.truthy(dead, 'A died holding a live gc-leader lease');
    t.true(dead!.owner.includes(`:${a.child.pid}:`), `the lease is A's: ${dead?.owner}`);
    t.is(await blobRows(shared.db, digests), digests.length, 'A\'s unit was rolled back with its connection');

    // B: a normal replica, passes every second; skipped while A's lease lives, then takes over.
    const expiresAt = Date.now() + Number(dead!.left);
    const b = await start({});
    let firstDrop: number | undefined;
    await waitFor(
      async () => {
        const bytes = await storedBytes(shared.db);
        if (bytes < total) firstDrop ??= Date.now();
        return bytes <= maxBytes;
      },
      LEADER_TTL_MS + 2 * WAIT_MS,
      'B to take over and meet the budget',
    );
    const leaderPasses = () =>
      b.output
        .map((l) => {
          try {
            return JSON.parse(l) as { msg?: string; fencingToken?: number; leader?: string; blobs?: number };
          } catch {
            return {};
          }
        })
        .filter((l) => l.msg === 'cache eviction' && l.fencingToken !== undefined);
    // The budget is met at a unit's commit; the pass logs when it ends.
    await waitFor(() => leaderPasses().some((p) => (p.blobs ?? 0) > 0), WAIT_MS, 'B\'s pass to end and log');
    const passes = leaderPasses();
    t.true(passes.every((p) => p.fencingToken! > Number(dead!.token)), 'B\'s passes carry newer fencing tokens');
    t.true(passes.some((p) => (p.blobs ?? 0) > 0), 'B evicted');
    // Our clock against the database's: a second of slack for the queries' round trips.
    t.true(firstDrop! >= expiresAt - 1000, `nothing evicted before A's lease expired (${expiresAt - firstDrop!} ms early)`);
    const metrics = (await http('GET', `${b.url}/metrics`)).body.toString();
    t.regex(metrics, /regmirror_cache_eviction_passes_total\{result="skipped"\} [1-9]/, 'B skipped while A\'s lease lived');
    t.true((await storedBytes(shared.db)) <= maxBytes);
    // Evicted images pull again through B, exact bytes.
    for (const [i, img] of imgs.entries()) await pullImageVerified(t, b.url, `team/kill${i}`, img);
  });
}
