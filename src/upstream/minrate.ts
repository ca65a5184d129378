/**
 * The minimum-rate guard on upstream bodies (see minimumRate in ./client.ts): the
 * accounting, and a body readable with `for await` or pumped from its events (blob fills:
 * no promise per chunk).
 */
import type { Readable } from 'node:stream';

/** The slowest body an upstream may send, averaged over `timeouts.body` spent waiting for it. */
export const MIN_BODY_BYTES_PER_SEC = 1024;

/** The minimum-rate accounting shared by both ways of reading (see minimumRate). */
class RateWindow {
  private readonly minBytes: number;
  private waited = 0;
  private bytes = 0;

  constructor(
    private readonly windowMs: number,
    private readonly tooSlow: () => Error,
  ) {
    this.minBytes = Math.max(1, Math.floor((MIN_BODY_BYTES_PER_SEC * windowMs) / 1000));
  }

  /** `bytes` arrived after waiting `ms` for them; throws once the window is too slow. */
  got(bytes: number, ms: number): void {
    this.waited += ms;
    this.bytes += bytes;
    if (this.waited >= this.windowMs) {
      if (this.bytes < this.minBytes) throw this.tooSlow();
      this.waited = 0;
      this.bytes = 0;
    }
  }
}

export class RateGuardedBody implements AsyncIterable<Buffer> {
  constructor(
    private readonly body: Readable,
    private readonly windowMs: number,
    private readonly tooSlow: () => Error,
  ) {}

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    const rate = new RateWindow(this.windowMs, this.tooSlow);
    const it = (this.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    let finished = false;
    try {
      for (;;) {
        const started = Date.now();
        const r = await it.next();
        if (r.done) {
          finished = true;
          return;
        }
        rate.got(r.value.length, Date.now() - started);
        yield r.value;
      }
    } finally {
      // The stream's own iterator destroys it on return (and handles its error event).
      if (!finished) await Promise.resolve(it.return?.()).catch(() => undefined);
    }
  }

  /**
   * Hand every chunk to `onChunk` from the body's 'data' events; a promise it returns
   * pauses the body until it settles (that time is the consumer's, not the upstream's).
   * Resolves at the end of the body; rejects with the body's error, the too-slow error or
   * `onChunk`'s, and then destroys the body.
   */
  pump(onChunk: (chunk: Buffer) => void | Promise<void>): Promise<void> {
    const body = this.body;
    const rate = new RateWindow(this.windowMs, this.tooSlow);
    return new Promise<void>((resolve, reject) => {
      let since = Date.now();
      let settled = false;
      const finish = (err?: unknown) => {
        if (settled) return;
        settled = true;
        body.off('data', onData).off('end', onEnd).off('error', finish).off('close', onClose);
        if (err === undefined) return resolve();
        body.on('error', () => undefined); // destroy() may report it again
        body.destroy();
        reject(err);
      };
      const resumed = () => {
        if (settled) return;
        since = Date.now();
        body.resume();
      };
      const onData = (chunk: Buffer) => {
        const now = Date.now();
        let wait: void | Promise<void>;
        try {
          rate.got(chunk.length, now - since);
          wait = onChunk(chunk);
        } catch (e) {
          return finish(e);
        }
        since = now;
        if (wait) {
          body.pause();
          wait.then(resumed, finish);
        }
      };
      const onEnd = () => finish();
      const onClose = () => finish(new Error('upstream body closed before its end'));
      if (body.readableEnded) return resolve();
      if (body.destroyed) return finish(body.errored ?? new Error('upstream body closed before its end'));
      body.on('data', onData).on('end', onEnd).on('error', finish).on('close', onClose);
    });
  }
}
