/**
 * Preloaded into a regmirror child by test/e2e/crash-fill.test.ts
 * (`node --import <this file> dist/cli.js serve`, REGMIRROR_TEST_KILL_FILE=<file>): once the
 * test writes `<label> <N>` into that file, the process SIGKILLs itself right after the N-th
 * rename into a `blobs/` directory counted from then on, that is after a blob file was
 * committed and before its database row is written. That window is far too short to hit
 * with a kill from outside, and the crash invariant (storage/README.md) promises the most
 * there: a file with no row is invisible, and the next fill of that digest replaces it.
 * An empty file disarms it; a new label restarts the count.
 *
 * Nothing in src/ knows about this: the hook wraps `fs/promises.rename`, which
 * src/storage/blobs.ts calls through the module object at call time.
 */
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';

const file = process.env.REGMIRROR_TEST_KILL_FILE;
if (file) {
  const target = fs as unknown as { rename: typeof fs.rename };
  const rename = target.rename.bind(fs);
  let armed = '';
  let count = 0;
  target.rename = async (from, to) => {
    await rename(from, to);
    if (!String(to).split(path.sep).includes('blobs')) return;
    const spec = readFileSync(file, 'utf8').trim();
    const at = Number(spec.split(' ')[1]);
    if (!spec || !Number.isSafeInteger(at) || at < 1) return;
    if (spec !== armed) {
      armed = spec;
      count = 0;
    }
    if (++count === at) process.kill(process.pid, 'SIGKILL');
  };
}
