/**
 * `regmirror export`: fetch an OCI image layout tar of images from a running mirror
 * (POST /api/v1/export, which pulls through whatever the mirror does not hold yet) into
 * a file, for carrying to an air-gapped site. The archive is written to a temp file next
 * to the target, checked complete (the byte count the mirror announced), fsynced and only
 * then renamed: a failed export never leaves a partial FILE. `--gzip` compresses here, so
 * the progress bar can use the mirror's exact length and the mirror's CPU stays free.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { type Dispatcher, request } from 'undici';

export interface ExportOptions {
  /** The mirror's base URL (`http://127.0.0.1:5000`). */
  mirror: string;
  /** The archive to write. */
  output: string;
  images: readonly string[];
  /** Only these platforms of an index (`linux/amd64`, `linux/arm64/v8`); all when empty. */
  platforms?: readonly string[];
  gzip?: boolean;
  /** `user:password` for a mirror with Basic auth. */
  user?: string;
  dispatcher?: Dispatcher;
  signal?: AbortSignal;
  /** Progress: a bar on a terminal (stderr), else JSON lines (stdout). */
  progress?: (p: { bytes: number; total: number | null }) => void;
}

export interface ExportResult {
  file: string;
  images: Array<{ name: string; digest: string; mediaType: string }>;
  /** Bytes of the tar received from the mirror (before local compression). */
  bytes: number;
  ms: number;
}

/** One image per line, `#` comments (the format of prefetch's --file). */
export async function readImageList(file: string): Promise<string[]> {
  const text = await fs.readFile(file, 'utf8');
  return text
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim())
    .filter(Boolean);
}

async function errorText(body: Readable, status: number): Promise<string> {
  let text = '';
  for await (const c of body as AsyncIterable<Buffer>) if (text.length < 2000) text += c.toString('utf8');
  try {
    const e = (JSON.parse(text) as { errors?: Array<{ code?: string; message?: string }> }).errors?.[0];
    if (e) return `HTTP ${status} ${e.code}: ${e.message}`;
  } catch {
    // not an OCI error body
  }
  return `HTTP ${status} ${text.slice(0, 200)}`;
}

/** Count bytes going through, for progress and the completeness check. */
function counter(onBytes: (n: number) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      onBytes(chunk.length);
      cb(null, chunk);
    },
  });
}

/** The index.json entries of the written archive (the second entry; read no further). */
async function indexOf(file: string, gzip: boolean): Promise<ExportResult['images']> {
  const ex = tar.extract();
  const src = createReadStream(file);
  const input: Readable = gzip ? src.pipe(createGunzip()) : src;
  input.pipe(ex as unknown as Writable);
  try {
    for await (const entry of ex) {
      if (entry.header.name !== 'index.json') {
        entry.resume();
        continue;
      }
      const parts: Buffer[] = [];
      for await (const c of entry as AsyncIterable<Buffer>) parts.push(c);
      const doc = JSON.parse(Buffer.concat(parts).toString('utf8')) as {
        manifests: Array<{ digest: string; mediaType: string; annotations?: Record<string, string> }>;
      };
      return doc.manifests.map((m) => ({ name: m.annotations?.['io.containerd.image.name'] ?? '', digest: m.digest, mediaType: m.mediaType }));
    }
    throw new Error('the archive has no index.json');
  } finally {
    src.destroy();
  }
}

/** Export `opts.images` into `opts.output`; throws with the mirror's error on failure. */
export async function exportImages(opts: ExportOptions): Promise<ExportResult> {
  const started = Date.now();
  const output = path.resolve(opts.output);
  const tmp = path.join(path.dirname(output), `.${path.basename(output)}.${randomBytes(6).toString('hex')}.tmp`);
  const headers: Record<string, string> = { 'content-type': 'application/json', 'user-agent': 'regmirror-export' };
  if (opts.user) headers.authorization = `Basic ${Buffer.from(opts.user).toString('base64')}`;
  const res = await request(`${opts.mirror.replace(/\/+$/, '')}/api/v1/export`, {
    method: 'POST',
    headers,
    body: JSON.stringify({ images: opts.images, platforms: opts.platforms ?? [] }),
    dispatcher: opts.dispatcher,
    signal: opts.signal,
  });
  if (res.statusCode !== 200) throw new Error(await errorText(res.body, res.statusCode));
  const len = res.headers['content-length'];
  const total = len === undefined ? null : Number(len);
  let bytes = 0;
  opts.progress?.({ bytes, total });
  try {
    const count = counter((n) => {
      bytes += n;
      opts.progress?.({ bytes, total });
    });
    const sink = createWriteStream(tmp, { flags: 'wx' });
    if (opts.gzip) await pipeline(res.body, count, createGzip(), sink, { signal: opts.signal });
    else await pipeline(res.body, count, sink, { signal: opts.signal });
    if (total !== null && bytes !== total) throw new Error(`the mirror sent ${bytes} of ${total} bytes`);
    const fh = await fs.open(tmp, 'r');
    await fh.sync().finally(() => fh.close());
    const images = await indexOf(tmp, opts.gzip === true);
    await fs.rename(tmp, output);
    const dir = await fs.open(path.dirname(output), 'r');
    await dir.sync().finally(() => dir.close());
    return { file: output, images, bytes, ms: Date.now() - started };
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

const MiB = 1024 * 1024;

/** A progress reporter: a redrawn bar on a terminal, else a JSON line every few seconds. */
export function progressReporter(tty: boolean, write: (s: string) => void, everyMs = tty ? 200 : 5000): ExportOptions['progress'] {
  let last = 0;
  const started = Date.now();
  return ({ bytes, total }) => {
    const now = Date.now();
    const done = total !== null && bytes >= total;
    if (now - last < everyMs && !done && bytes > 0) return;
    last = now;
    const rate = bytes / MiB / Math.max(0.001, (now - started) / 1000);
    if (!tty) {
      write(`${JSON.stringify({ event: 'progress', bytes, total })}\n`);
      return;
    }
    const frac = total ? Math.min(1, bytes / total) : 0;
    const width = 30;
    const bar = total ? `[${'#'.repeat(Math.round(frac * width)).padEnd(width, '.')}] ${(frac * 100).toFixed(0).padStart(3)}% ` : '';
    const of = total ? ` / ${(total / MiB).toFixed(1)}` : '';
    write(`\r${bar}${(bytes / MiB).toFixed(1)}${of} MiB  ${rate.toFixed(1)} MiB/s${done ? '\n' : ''}`);
  };
}

/** The `export` command: exit code 0, 1 (failed) or 2 (usage). */
export async function exportCommand(
  values: { mirror?: string; output?: string; file?: string; platform?: string[]; gzip?: boolean; user?: string },
  positionals: string[],
): Promise<number> {
  if (!values.mirror || !values.output) {
    process.stderr.write('regmirror: export needs --mirror URL and -o FILE\n');
    return 2;
  }
  const images = [...positionals, ...(values.file ? await readImageList(values.file) : [])];
  if (images.length === 0) {
    process.stderr.write('regmirror: export needs images (arguments or --file)\n');
    return 2;
  }
  // Until a result is printed: a run that ends any other way (the event loop drained) is a failure.
  process.exitCode = 1;
  const tty = process.stderr.isTTY === true;
  const write = tty ? (s: string) => process.stderr.write(s) : (s: string) => process.stdout.write(s);
  try {
    const r = await exportImages({
      mirror: values.mirror,
      output: values.output,
      images,
      platforms: values.platform ?? [],
      gzip: values.gzip === true,
      user: values.user,
      progress: progressReporter(tty, write),
    });
    process.stdout.write(`${JSON.stringify({ event: 'done', ...r })}\n`);
    return 0;
  } catch (e) {
    if (tty) process.stderr.write('\n');
    process.stdout.write(`${JSON.stringify({ event: 'error', error: e instanceof Error ? e.message : String(e) })}\n`);
    return 1;
  }
}
