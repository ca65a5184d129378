/**
 * Streaming xz decompression for imports (`.tar.xz`, what `bmctl` ships), with
 * `xz-decompress`: xz-embedded compiled to WebAssembly. Chosen over the native bindings
 * because it has no install script and no per-platform binary (node-liblzma 5 needs node
 * 22 and its 4.x compiles at install; lzma-native is unmaintained since 2021;
 * @napi-rs/lzma decodes whole buffers only), and because xz-embedded refuses a stream whose
 * dictionary is over its 64 MiB cap (what `xz -9` uses) instead of allocating whatever a
 * hostile header asks for: each decoder costs at most that dictionary plus its 64 KiB
 * buffers, pulled chunk by chunk.
 *
 * The library serialises every decoder of the process behind one mutex held for the
 * whole stream, which would deadlock an xz archive inside an xz bundle and lets one slow
 * upload stall every other xz import. Its decoder contexts are independent (each has its
 * own buffers in the shared WebAssembly memory), so the mutex is replaced by a cap of our
 * own that fails fast with a 503 instead of queueing. The shared memory grows to the peak
 * number of live decoders and stays: MAX_DECODERS x 65 MiB at worst.
 */
import { Readable } from 'node:stream';
import { ReadableStream } from 'node:stream/web';
import xz from 'xz-decompress';
import { RegistryError } from '../errors.js';

/** Live xz decoders at once: an xz bundle holding xz archives needs two. */
export const MAX_DECODERS = 3;
let live = 0;

type XzClass = (typeof import('xz-decompress'))['XzReadableStream'];
const XzReadableStream = (xz as unknown as { XzReadableStream: XzClass }).XzReadableStream;
// The library's static, process-wide mutex; a no-op, live decoders are counted here instead.
(XzReadableStream as unknown as { _contextMutex: unknown })._contextMutex = { acquire: async () => undefined, release: () => undefined };

/** xz-embedded's xz_ret codes, as the library reports them ("failed with error code N"). */
const XZ_ERRORS: Record<string, string> = {
  '2': 'unsupported integrity check',
  '3': 'out of memory',
  '4': 'its dictionary is larger than the 64 MiB this server decodes (xz -9 is the most accepted)',
  '5': 'not an xz stream',
  '6': 'unsupported xz options',
  '7': 'corrupt data',
  '8': 'truncated',
};

function describe(e: unknown): Error {
  const m = /error code (\d+)/.exec((e as Error)?.message ?? '');
  if (m) return new Error(XZ_ERRORS[m[1]!] ?? `decoder error ${m[1]}`);
  if (e instanceof TypeError) return new Error('truncated'); // the library reads past an ended input
  return e as Error;
}

/**
 * The decompressed bytes of the xz stream `src`. The decoder pulls one input chunk at a
 * time, so nothing is buffered beyond a chunk on either side; destroying the result
 * releases the decoder and destroys `src`.
 */
export function unxz(src: Readable): Readable {
  if (live >= MAX_DECODERS) {
    throw new RegistryError('UNAVAILABLE', `${MAX_DECODERS} xz archives are already being decompressed; retry shortly`, { status: 503, headers: { 'retry-after': '5' } });
  }
  live++;
  const it = src[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const compressed = new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const r = await it.next();
        if (r.done) controller.close();
        else controller.enqueue(r.value);
      },
      async cancel() {
        await it.return?.();
      },
    },
    { highWaterMark: 0 },
  );
  const decoded = Readable.fromWeb(new XzReadableStream(compressed));
  async function* mapped() {
    try {
      for await (const chunk of decoded) yield chunk as Buffer;
    } catch (e) {
      throw describe(e);
    }
  }
  const out = Readable.from(mapped(), { objectMode: false });
  out.once('close', () => {
    live--;
    if (!decoded.destroyed) decoded.destroy();
  });
  return out;
}
