/**
 * Preloaded into a regmirror child by test/integration/startup-memory.test.ts
 * (`node --import <this file> dist/cli.js serve`, REGMIRROR_TEST_CENSUS_FILE=<file>): on
 * SIGUSR2 the process writes to that file, as JSON, every module it has loaded so far
 * (CommonJS: the require cache; ES modules: each URL the loader loaded, reported by the
 * hooks in module-census-hooks.ts) and its memory (VmRSS, process.memoryUsage()).
 *
 * Nothing in src/ knows about this. The census is taken when the test asks, so it covers
 * exactly start-up up to that moment.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire, register } from 'node:module';
import { MessageChannel } from 'node:worker_threads';

const file = process.env.REGMIRROR_TEST_CENSUS_FILE;
if (file) {
  const esm = new Set<string>();
  const { port1, port2 } = new MessageChannel();
  port1.on('message', (url: string) => esm.add(url));
  port1.unref();
  register(new URL('./module-census-hooks.js', import.meta.url), { data: { port: port2 }, transferList: [port2] });
  const cjs = createRequire(import.meta.url).cache;
  process.on('SIGUSR2', () => {
    const status = readFileSync('/proc/self/status', 'utf8');
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
    const census = {
      modules: [...Object.keys(cjs), ...esm],
      vmRssKiB: kib('VmRSS'),
      vmHwmKiB: kib('VmHWM'),
      memoryUsage: process.memoryUsage(),
    };
    // Renamed into place, so the test never reads half a file.
    writeFileSync(`${file}.tmp`, JSON.stringify(census));
    renameSync(`${file}.tmp`, file);
  });
}
