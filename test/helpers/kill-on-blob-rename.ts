/**
 * Preloaded into a regmirror child by test/e2e/crash-fill.test.ts
 * (`node --import <this file> dist/cli.js serve`, REGMIRROR_TEST_KILL_FILE=<file>): once the
 * test writes `<label> <N> <before|after>` into that file, the process SIGKILLs itself at
 * the N-th rename into a `blobs/` directory counted from then on:
 *  - after: the blob file is committed and its database row not yet written. That window is
 *    far too short to hit with a kill from outside, and the crash invariant
 *    (storage/README.md) promises the most there: a file with no row is invisible, and the
 *    next fill of that digest replaces it;
 *  - before: the verified, fsynced temp file is about to be renamed (a design that wrote the
 *    row first would leave a row without its file here).
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
    if (String(to).split(path.sep).includes('blobs')) {
      const spec = readFileSync(file, 'utf8').trim();
      const [, n, when] = spec.split(' ');
      if (spec && Number(n) >= 1) {
        if (spec !== armed) {
          armed = spec;
          count = 0;
        }
        if (++count === Number(n)) {
          if (when === 'after') await rename(from, to);
          process.kill(process.pid, 'SIGKILL');
        }
      }
    }
    return rename(from, to);
  };
}
