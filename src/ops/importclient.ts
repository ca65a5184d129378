/**
 * `regmirror import`: stream image archives (tar, tar.gz, tar.xz, bundles) from disk into
 * a running mirror's POST /api/v1/import, one request per file, never reading a file
 * whole. The answer is read as NDJSON progress (the protocol in README, POST /api/v1/import): on a terminal a one-line
 * progress bar per file and a line per image; otherwise the server's events as JSON lines,
 * each with its file name. Credentials go in a header and are never printed.
 */
import fs from 'node:fs';
import { request } from 'undici';
import type { Dispatcher } from 'undici';

export interface ImportClientOptions {
  mirror: string;
  namespace?: string;
  repository?: string;
  /** `user:password` for a mirror with Basic auth. */
  user?: string;
  /** Render for a terminal (progress bar) rather than JSON lines. */
  tty: boolean;
  out: NodeJS.WritableStream;
  dispatcher?: Dispatcher;
}

type Event = { event: string; [k: string]: unknown };

const MiB = 1024 * 1024;

function mib(n: number): string {
  return `${(n / MiB).toFixed(1)} MiB`;
}

/** The part of a server error worth showing: code and message. */
function describeError(e: Event): string {
  const err = (e.error ?? {}) as { code?: string; message?: string };
  const where = typeof e.entry === 'string' ? ` [${e.entry}]` : '';
  return `${err.code ?? 'ERROR'}${where}: ${err.message ?? 'failed'}`;
}

class Renderer {
  private started = Date.now();
  private barShown = false;
  constructor(
    private readonly opts: ImportClientOptions,
    private readonly file: string,
    private readonly size: number,
  ) {}

  private write(s: string): void {
    this.opts.out.write(s);
  }

  private clearBar(): void {
    if (this.barShown) this.write('\r\x1b[2K');
    this.barShown = false;
  }

  event(e: Event): void {
    if (!this.opts.tty) {
      this.write(`${JSON.stringify({ file: this.file, ...e })}\n`);
      return;
    }
    if (e.event === 'progress') {
      const bytes = Number(e.bytes) || 0;
      const secs = Math.max((Date.now() - this.started) / 1000, 0.001);
      const pct = this.size > 0 ? ` ${Math.min(100, Math.floor((bytes / this.size) * 100))}%` : '';
      this.clearBar();
      this.write(`${this.file}: ${mib(bytes)} / ${mib(this.size)}${pct} ${mib(bytes / secs)}/s`);
      this.barShown = true;
    } else if (e.event === 'image') {
      const blobs = (e.blobs ?? {}) as { new?: number; existing?: number };
      this.clearBar();
      this.write(`imported ${String(e.name)}:${String(e.tag ?? '')}@${String(e.digest)} (${blobs.new ?? 0} new, ${blobs.existing ?? 0} existing blobs, ${mib(Number(e.newBytes) || 0)} new)\n`);
    } else if (e.event === 'error') {
      this.clearBar();
      this.write(`FAILED ${this.file}: ${describeError(e)}\n`);
    } else if (e.event === 'done') {
      this.clearBar();
      const secs = (Date.now() - this.started) / 1000;
      this.write(`${this.file}: ${Number(e.images)} image(s), ${Number(e.failed)} failed, ${mib(this.size)} in ${secs.toFixed(1)}s\n`);
    }
  }
}

/** Import one file; true when every archive and image in it was imported. */
async function importFile(file: string, opts: ImportClientOptions): Promise<boolean> {
  let size: number;
  try {
    size = (await fs.promises.stat(file)).size;
  } catch (e) {
    new Renderer(opts, file, 0).event({ event: 'error', error: { code: 'FILE', message: (e as Error).message } });
    return false;
  }
  const r = new Renderer(opts, file, size);
  const q = new URLSearchParams(opts.repository !== undefined ? { repository: opts.repository } : { namespace: opts.namespace ?? '' });
  const headers: Record<string, string> = {
    'content-type': 'application/octet-stream',
    'content-length': String(size),
    accept: 'application/x-ndjson',
    'user-agent': 'regmirror-import',
  };
  if (opts.user) headers.authorization = `Basic ${Buffer.from(opts.user).toString('base64')}`;
  const body = fs.createReadStream(file, { highWaterMark: 256 * 1024 });
  try {
    const res = await request(`${opts.mirror.replace(/\/+$/, '')}/api/v1/import?${q}`, { method: 'POST', headers, body, dispatcher: opts.dispatcher });
    const type = String(res.headers['content-type'] ?? '');
    if (res.statusCode !== 200 || !type.startsWith('application/x-ndjson')) {
      // Refused before anything was streamed (auth, parameters): one OCI error document.
      const text = await res.body.text();
      let error: unknown = { code: 'HTTP', message: `HTTP ${res.statusCode}` };
      try {
        error = (JSON.parse(text) as { errors?: unknown[] }).errors?.[0] ?? error;
      } catch {
        /* not JSON: the status says it */
      }
      r.event({ event: 'error', status: res.statusCode, error });
      return false;
    }
    let ok = true;
    let done = false;
    let rest = '';
    const handle = (text: string) => {
      if (!text.trim()) return;
      const e = JSON.parse(text) as Event;
      if (e.event === 'error') ok = false;
      if (e.event === 'done') {
        done = true;
        if (Number(e.failed) > 0) ok = false;
      }
      r.event(e);
    };
    for await (const chunk of res.body) {
      rest += (chunk as Buffer).toString('utf8');
      let nl: number;
      while ((nl = rest.indexOf('\n')) >= 0) {
        handle(rest.slice(0, nl));
        rest = rest.slice(nl + 1);
      }
    }
    handle(rest);
    if (!done) {
      r.event({ event: 'error', error: { code: 'INCOMPLETE', message: 'the answer ended before its done line' } });
      return false;
    }
    return ok;
  } catch (e) {
    body.destroy();
    // undici's messages name no credentials (they travel in a header, not the URL we print).
    r.event({ event: 'error', error: { code: 'REQUEST', message: (e as Error).message } });
    return false;
  }
}

/** Import every file in turn; the exit code: 1 if any archive or image failed. */
export async function importFiles(files: string[], opts: ImportClientOptions): Promise<number> {
  let failed = 0;
  for (const f of files) if (!(await importFile(f, opts))) failed++;
  return failed > 0 ? 1 : 0;
}
