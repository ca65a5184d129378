/**
 * The minimum-rate guard read through `pump` (blob fills): every chunk in order, backpressure
 * through the consumer's promise, time the consumer holds the body not counted against the
 * upstream, a trickle given up with the body destroyed. The `for await` side is covered by the
 * manifest tests in test/integration/pullthrough-hostile.test.ts.
 */
import test from 'ava';
import { Readable } from 'node:stream';
import { MIN_BODY_BYTES_PER_SEC, minimumRate } from '../../src/upstream/client.js';

const WINDOW_MS = 200;
/** Fewer bytes than this in WINDOW_MS of waiting is too slow. */
const MIN_BYTES = Math.floor((MIN_BODY_BYTES_PER_SEC * WINDOW_MS) / 1000);
const tooSlow = () => new Error('too slow');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

test('pump: all chunks in order; a consumer holding the body paused longer than the window is not the upstream being slow', async (t) => {
  // Tiny chunks, all available at once: only consumer time could add up to a window.
  const chunks = Array.from({ length: 20 }, (_, i) => Buffer.from(`chunk-${String(i).padStart(2, '0')}`));
  t.true(chunks.reduce((n, c) => n + c.length, 0) < MIN_BYTES, 'fewer bytes than a window needs');
  const body = Readable.from(chunks, { objectMode: false });
  const got: Buffer[] = [];
  let held = 0;
  await minimumRate(body, WINDOW_MS, tooSlow).pump((c) => {
    got.push(c);
    // Disk backpressure on the first chunks: longer than the whole window.
    if (got.length <= 2) {
      held++;
      return sleep(WINDOW_MS + 50);
    }
    return undefined;
  });
  t.is(held, 2);
  t.deepEqual(Buffer.concat(got), Buffer.concat(chunks));
});

test('pump: a body trickling under the minimum rate is given up with the error, and destroyed', async (t) => {
  let sent = 0;
  let timer: NodeJS.Timeout | null = null;
  const body = new Readable({
    read() {
      // One byte every 20 ms, at most 2000 (bounded even if the guard never fired).
      timer ??= setInterval(() => {
        if (sent++ < 2000) this.push(Buffer.from('x'));
        else this.push(null);
      }, 20);
    },
    destroy(err, cb) {
      if (timer) clearInterval(timer);
      cb(err);
    },
  });
  const err = await t.throwsAsync(minimumRate(body, WINDOW_MS, tooSlow).pump(() => undefined));
  t.is(err?.message, 'too slow');
  t.true(body.destroyed, 'the body is released');
  t.true(sent < MIN_BYTES, `given up after ${sent} bytes, within the first windows`);
});

test('pump: a body error rejects the pump; a body already ended resolves at once', async (t) => {
  const failing = new Readable({
    read() {
      this.destroy(new Error('connection reset'));
    },
  });
  const err = await t.throwsAsync(minimumRate(failing, WINDOW_MS, tooSlow).pump(() => undefined));
  t.is(err?.message, 'connection reset');

  const ended = Readable.from([Buffer.from('a')]);
  for await (const _ of ended) void _;
  await t.notThrowsAsync(minimumRate(ended, WINDOW_MS, tooSlow).pump(() => t.fail('no chunk expected')));
});

test('pump: an error thrown by the consumer rejects the pump and destroys the body', async (t) => {
  const body = Readable.from([Buffer.from('one'), Buffer.from('two')], { objectMode: false });
  // A window no stall of a busy machine reaches: only the consumer's error may end this pump.
  const err = await t.throwsAsync(
    minimumRate(body, 60_000, tooSlow).pump(() => {
      throw new Error('disk full');
    }),
  );
  t.is(err?.message, 'disk full');
  t.true(body.destroyed);
});
