/**
 * Start-up memory budget (issue #14 item 3: RSS at most 80 MiB after start). RSS depends on
 * the machine, the Node build and coverage instrumentation, so the guard is on what a
 * just-started `regmirror serve` with the embedded default config (local driver) has
 * loaded: the shared driver's modules (pg, the AWS SDK: ~8 MiB of RSS) must not be among
 * them. The census comes from the real CLI as a child process, with a preload that lists
 * the loaded modules on request (test/helpers/module-census.ts). Measured RSS figures are
 * logged (the preload and its loader thread add to them; bench/results/memory/ has the measurements against the aim).
 */
import test from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import { DEFAULT_CONFIG_YAML } from '../../src/config/schema.js';
import { FakeUpstream } from '../fixtures/fake-upstream.js';
import { makeBlob, randomBytes } from '../fixtures/images.js';
import { startCli, waitFor } from '../helpers/cli.js';
import { tempDir } from '../helpers/server.js';

const CENSUS = new URL('../helpers/module-census.js', import.meta.url).href;
const CENSUS_TIMEOUT_MS = 30_000;

interface Census {
  modules: string[];
  vmRssKiB: number;
  vmHwmKiB: number;
  memoryUsage: NodeJS.MemoryUsage;
}

/** Loaded only for `storage.driver: shared` (src/storage/open.ts imports them on demand). */
const SHARED_DRIVER_ONLY: Array<[string, RegExp]> = [
  ['pg', /\/node_modules\/pg(-[a-z-]+)?\//],
  ['the AWS SDK', /\/node_modules\/@aws-sdk\//],
  ['the AWS SDK (smithy)', /\/node_modules\/@smithy\//],
  ['storage/pg', /\/dist\/storage\/pg\//],
  ['storage/s3', /\/dist\/storage\/s3\//],
];

/**
 * Loaded on first use, not at start: undici by the first request of an upstream behind a
 * proxy (upstream/client.ts; the default config has upstreams, so this also checks that
 * building their clients does not load it; without a proxy never: the last test) and by the shared driver's cluster fills (app.ts); fastify's schema compilers
 * (ajv, fast-json-stringify's compiler) by the first route with a schema, of which there is none.
 */
const ON_FIRST_USE: Array<[string, RegExp]> = [
  ['undici', /\/node_modules\/undici\//],
  ['cache/clusterfill', /\/dist\/cache\/clusterfill\.js$/],
  ['ajv', /\/node_modules\/(ajv|@fastify\/ajv-compiler)\//],
  ['the serializer compiler', /\/node_modules\/@fastify\/fast-json-stringify-compiler\//],
];

async function census(server: Awaited<ReturnType<typeof startCli>>, file: string): Promise<Census> {
  server.child.kill('SIGUSR2');
  const text = await waitFor(() => fs.readFile(file, 'utf8').catch(() => undefined), CENSUS_TIMEOUT_MS, 'the module census file', 50);
  await server.kill();
  return JSON.parse(text) as Census;
}

async function censusOfDefaultServe(t: import('ava').ExecutionContext): Promise<Census> {
  const dir = await tempDir(t, 'regmirror-startup-');
  // The embedded default, as `regmirror serve` runs it without --config, on a loopback port.
  const yaml = DEFAULT_CONFIG_YAML.replace(/^listen: .*$/m, 'listen: 127.0.0.1:0');
  t.not(yaml, DEFAULT_CONFIG_YAML, 'the default config has a listen line to replace');
  const config = path.join(dir, 'config.yml');
  await fs.writeFile(config, yaml);
  const file = path.join(dir, 'census.json');
  const server = await startCli(t, config, {
    nodeArgs: ['--import', CENSUS],
    env: { REGMIRROR_TEST_CENSUS_FILE: file },
    // Anonymous pull goes through the token endpoint: /v2/ answers 401 with a challenge.
    readyStatuses: [401],
  });
  return census(server, file);
}

test('a just-started serve with the default (local) config loads neither pg, the AWS SDK, undici nor ajv', async (t) => {
  const census = await censusOfDefaultServe(t);
  const mib = (b: number) => (b / 1048576).toFixed(1);
  t.log(
    `${census.modules.length} modules; VmRSS ${mib(census.vmRssKiB * 1024)} MiB, VmHWM ${mib(census.vmHwmKiB * 1024)} MiB, ` +
      `heap used ${mib(census.memoryUsage.heapUsed)} MiB of ${mib(census.memoryUsage.heapTotal)} MiB`,
  );
  // The census sees both module systems (otherwise an absent module proves nothing).
  t.true(census.modules.some((m) => m.includes('/node_modules/better-sqlite3/')), 'CommonJS modules are listed');
  t.true(census.modules.some((m) => m.startsWith('file://') && m.endsWith('/dist/storage/open.js')), 'ES modules are listed');
  for (const [what, re] of [...SHARED_DRIVER_ONLY, ...ON_FIRST_USE]) {
    const hits = census.modules.filter((m) => re.test(m));
    t.deepEqual(hits.slice(0, 5), [], `${what} is loaded at start-up with the local driver`);
  }
});

test('a pull-through without a proxy goes through the built-in HTTP client: undici is never loaded', async (t) => {
  const fake = await FakeUpstream.start();
  t.teardown(() => fake.close());
  const blob = makeBlob(randomBytes(3 * 1024 * 1024 + 17, 'census-blob'), 'application/vnd.oci.image.layer.v1.tar');
  fake.addBlob('library/app', blob);
  const dir = await tempDir(t, 'regmirror-census-pull-');
  const config = path.join(dir, 'config.yml');
  // JSON is YAML: one upstream (the fake, with its token service), the default for every path.
  await fs.writeFile(config, JSON.stringify({ listen: '127.0.0.1:0', storage: path.join(dir, 'storage'), upstreams: { 'hub.test': { endpoints: [fake.url] } }, defaultUpstream: 'hub.test' }));
  const file = path.join(dir, 'census.json');
  const server = await startCli(t, config, { nodeArgs: ['--import', CENSUS], env: { REGMIRROR_TEST_CENSUS_FILE: file }, readyStatuses: [200, 401] });
  const res = await fetch(`${server.url}/v2/library/app/blobs/${blob.digest}`);
  const got = Buffer.from(await res.arrayBuffer());
  t.is(res.status, 200);
  t.true(got.equals(blob.bytes), 'the blob arrived byte for byte');
  t.true(fake.blobGets(blob.digest) >= 1, 'it came from the upstream');
  const c = await census(server, file);
  t.true(c.modules.some((m) => m.endsWith('/dist/upstream/wire.js')), 'the built-in client served the miss');
  t.deepEqual(c.modules.filter((m) => /\/node_modules\/undici\//.test(m)).slice(0, 5), [], 'undici is not loaded');
});
