/**
 * Preloaded into a regmirror child (`node --import <this file> dist/cli.js serve`) by
 * shared-leader.test.ts: with REGMIRROR_TEST_KILL_ON_SQL set, the process SIGKILLs itself
 * just before it sends the first SQL statement containing that text, e.g. an eviction
 * unit's first DELETE: the replica dies mid-pass holding the gc-leader lease, a point too
 * short to hit with a kill from outside. Nothing in src/ knows about this: the hook wraps
 * `pg.Client.prototype.query`, which the pool's clients call.
 */
import pg from 'pg';

const needle = process.env.REGMIRROR_TEST_KILL_ON_SQL;
if (needle) {
  const proto = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
  const query = proto.query;
  proto.query = function (this: unknown, ...args: unknown[]) {
    const q = args[0];
    const text = typeof q === 'string' ? q : typeof (q as { text?: unknown } | null)?.text === 'string' ? (q as { text: string }).text : '';
    if (text.includes(needle)) process.kill(process.pid, 'SIGKILL');
    return query.apply(this, args);
  };
}
