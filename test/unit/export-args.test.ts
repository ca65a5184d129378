/**
 * The pure parts of export: image and platform arguments (registry/export/plan.ts) and the
 * CLI's progress output (ops/export.ts), a redrawn bar on a terminal and JSON lines otherwise.
 */
import test from 'ava';
import { isRegistryError } from '../../src/registry/errors.js';
import { parseExportImage, parsePlatform } from '../../src/registry/export/plan.js';
import { progressReporter } from '../../src/ops/export.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

test('image arguments: repository paths on the mirror with a tag, a digest or neither (latest)', (t) => {
  t.deepEqual(parseExportImage('library/busybox:1.36'), { repo: 'library/busybox', ref: { kind: 'tag', tag: '1.36' } });
  t.deepEqual(parseExportImage('gcr.io/proj/app'), { repo: 'gcr.io/proj/app', ref: { kind: 'tag', tag: 'latest' } });
  t.deepEqual(parseExportImage(`ns/app@${DIGEST}`, 'docker.io'), { repo: 'ns/app', ref: { kind: 'digest', digest: DIGEST }, ns: 'docker.io' });
  // A colon before the last slash is not a tag, and a port is no repository path component.
  t.throws(() => parseExportImage('localhost:5000/app'), { message: /name/i });
});

test('bad image and platform arguments are registry errors with the right code', (t) => {
  const code = (f: () => unknown) => {
    try {
      f();
      return 'none';
    } catch (e) {
      return isRegistryError(e) ? `${e.status} ${e.code}` : String(e);
    }
  };
  t.is(code(() => parseExportImage('UPPER/app:1')), '400 NAME_INVALID');
  t.is(code(() => parseExportImage('app@sha256:abc')), '400 DIGEST_INVALID');
  t.is(code(() => parseExportImage('app:-bad')), '400 TAG_INVALID');
  t.deepEqual(parsePlatform('linux/arm64/v8'), { os: 'linux', architecture: 'arm64', variant: 'v8' });
  t.deepEqual(parsePlatform('linux/amd64'), { os: 'linux', architecture: 'amd64' });
  for (const bad of ['linux', 'linux/', 'linux/arm64/', 'a/b/c/d', '']) t.is(code(() => parsePlatform(bad)), '400 UNSUPPORTED', bad);
});

test('progress: a bar redrawn in place on a terminal, ending with a newline; JSON lines otherwise, throttled', (t) => {
  const tty: string[] = [];
  const bar = progressReporter(true, (s) => tty.push(s), 0)!;
  bar({ bytes: 0, total: 4 * 1024 * 1024 });
  bar({ bytes: 2 * 1024 * 1024, total: 4 * 1024 * 1024 });
  bar({ bytes: 4 * 1024 * 1024, total: 4 * 1024 * 1024 });
  t.true(tty.every((l) => l.startsWith('\r')));
  t.regex(tty[1]!, /^\r\[#{15}\.{15}\]  50% 2\.0 \/ 4\.0 MiB/);
  t.regex(tty[2]!, /100% 4\.0 \/ 4\.0 MiB .*\n$/);

  const lines: string[] = [];
  const json = progressReporter(false, (s) => lines.push(s), 60_000)!;
  json({ bytes: 0, total: 100 });
  json({ bytes: 50, total: 100 }); // within the interval: dropped
  json({ bytes: 100, total: 100 }); // the end always shows
  t.deepEqual(lines.map((l) => JSON.parse(l) as unknown), [
    { event: 'progress', bytes: 0, total: 100 },
    { event: 'progress', bytes: 100, total: 100 },
  ]);
});
