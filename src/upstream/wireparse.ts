/**
 * HTTP/1.1 response framing for the upstream wire client (./wire.ts): the response head,
 * and which bytes after it are the body (RFC 9112 section 6.3). Body bytes are handed on
 * as views of the buffers they arrived in, never copied.
 */
import type { IncomingHttpHeaders } from 'node:http';

/** Larger response heads are refused (undici's and node's default limits are of this order). */
export const MAX_HEAD_BYTES = 64 * 1024;
const MAX_CHUNK_LINE = 4096;

export class WireProtocolError extends Error {
  override name = 'WireProtocolError';
  readonly code = 'UPSTREAM_BAD_RESPONSE';
}

export interface ResponseHead {
  statusCode: number;
  headers: IncomingHttpHeaders;
  /** The server keeps the connection open after this response. */
  keepAlive: boolean;
  /** Seconds from `Keep-Alive: timeout=N`, when the server says. */
  keepAliveHint: number | null;
}

/** Collects head bytes across reads; `push` answers the head and the bytes after it once complete. */
export class HeadReader {
  private parts: Buffer[] = [];
  private bytes = 0;

  push(chunk: Buffer): { head: ResponseHead; rest: Buffer } | null {
    const joined = this.parts.length === 0 ? chunk : Buffer.concat([...this.parts, chunk]);
    // Search only where the terminator can start: the last 3 bytes already held plus the new chunk.
    const end = joined.indexOf('\r\n\r\n', Math.max(0, this.bytes - 3), 'latin1');
    if (end < 0) {
      if (joined.length > MAX_HEAD_BYTES) throw new WireProtocolError('upstream response head too large');
      // Kept as a copy: the slab the chunk lives in must not be pinned by a slow head.
      this.parts = [Buffer.from(joined)];
      this.bytes = joined.length;
      return null;
    }
    if (end > MAX_HEAD_BYTES) throw new WireProtocolError('upstream response head too large');
    this.parts = [];
    this.bytes = 0;
    return { head: parseHead(joined.toString('latin1', 0, end)), rest: joined.subarray(end + 4) };
  }
}

export function parseHead(text: string): ResponseHead {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(lines[0]!);
  if (!m) throw new WireProtocolError('upstream sent a malformed status line');
  const headers: IncomingHttpHeaders = {};
  const raw = headers as Record<string, string | string[]>;
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(':');
    // Obsolete line folding and names with spaces are refused (request smuggling vectors).
    if (colon <= 0 || /[\s]/.test(line.slice(0, colon))) throw new WireProtocolError('upstream sent a malformed header line');
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    const prev = raw[name];
    // Repeated headers become arrays, as undici gives them (WWW-Authenticate may repeat).
    if (prev === undefined) raw[name] = value;
    else raw[name] = Array.isArray(prev) ? [...prev, value] : [prev, value];
  }
  const connection = String(headers.connection ?? '').toLowerCase();
  const http10 = m[1] === '0';
  const keepAlive = http10 ? /\bkeep-alive\b/.test(connection) : !/\bclose\b/.test(connection);
  const hint = /\btimeout=(\d+)/i.exec(String(headers['keep-alive'] ?? ''));
  return { statusCode: Number(m[2]), headers, keepAlive, keepAliveHint: hint ? Number(hint[1]) : null };
}

/** How the body of a response is delimited. */
export type Framing = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'close' };

export function framingOf(method: string, head: ResponseHead): Framing {
  const s = head.statusCode;
  if (method === 'HEAD' || s === 204 || s === 304 || (s >= 100 && s < 200)) return { kind: 'none' };
  const te = head.headers['transfer-encoding'];
  if (te !== undefined) {
    const codings = (Array.isArray(te) ? te.join(',') : te).toLowerCase().split(',').map((c) => c.trim());
    // Only plain chunked is understood (we ask for identity); anything else cannot be framed.
    if (codings.length !== 1 || codings[0] !== 'chunked') throw new WireProtocolError('upstream sent an unsupported transfer-encoding');
    if (head.headers['content-length'] !== undefined) head.keepAlive = false; // both: chunked wins, the connection is not trusted after
    return { kind: 'chunked' };
  }
  const cl = head.headers['content-length'];
  if (cl !== undefined) {
    const values = new Set((Array.isArray(cl) ? cl : [cl]).flatMap((v) => v.split(',')).map((v) => v.trim()));
    const [only] = values;
    if (values.size !== 1 || !/^\d{1,15}$/.test(only!)) throw new WireProtocolError('upstream sent an invalid content-length');
    // Repeated identical values are folded to one (the callers read it as a string).
    head.headers['content-length'] = only;
    return { kind: 'length', length: Number(only) };
  }
  head.keepAlive = false;
  return { kind: 'close' };
}

/**
 * Splits the bytes after a head into body bytes (views) and the end of the body.
 * `feed` returns the body's pieces of `chunk` and whether the body ended in it; bytes after
 * the end are reported as `extra` (a server that sends them cannot be reused).
 */
export class BodyFramer {
  private remaining: number;
  private state: 'size' | 'data' | 'data-end' | 'trailers' | 'done';
  private line = '';

  constructor(readonly framing: Framing) {
    this.remaining = framing.kind === 'length' ? framing.length : 0;
    this.state = framing.kind === 'none' || (framing.kind === 'length' && framing.length === 0) ? 'done' : framing.kind === 'chunked' ? 'size' : 'data';
  }

  get done(): boolean {
    return this.state === 'done';
  }

  feed(chunk: Buffer, out: Buffer[]): { ended: boolean; extra: number } {
    let i = 0;
    const n = chunk.length;
    const kind = this.framing.kind;
    while (i < n && this.state !== 'done') {
      if (kind === 'close') {
        out.push(i === 0 ? chunk : chunk.subarray(i));
        return { ended: false, extra: 0 };
      }
      if (this.state === 'data') {
        const take = Math.min(this.remaining, n - i);
        out.push(take === n && i === 0 ? chunk : chunk.subarray(i, i + take));
        i += take;
        this.remaining -= take;
        if (this.remaining === 0) this.state = kind === 'length' ? 'done' : 'data-end';
        continue;
      }
      // A line: a chunk size, the CRLF after a chunk's data, or a trailer.
      const nl = chunk.indexOf(10, i);
      const stop = nl < 0 ? n : nl;
      this.line += chunk.toString('latin1', i, stop);
      if (this.line.length > MAX_CHUNK_LINE) throw new WireProtocolError('upstream sent an overlong chunk line');
      i = nl < 0 ? n : nl + 1;
      if (nl < 0) break;
      const line = this.line.endsWith('\r') ? this.line.slice(0, -1) : this.line;
      this.line = '';
      if (this.state === 'data-end') {
        if (line !== '') throw new WireProtocolError('upstream chunk data is longer than its size');
        this.state = 'size';
      } else if (this.state === 'size') {
        const size = /^([0-9a-fA-F]{1,12})[ \t]*(?:;.*)?$/.exec(line);
        if (!size) throw new WireProtocolError('upstream sent a malformed chunk size');
        this.remaining = parseInt(size[1]!, 16);
        this.state = this.remaining === 0 ? 'trailers' : 'data';
      } else if (line === '') this.state = 'done'; // end of the trailers
    }
    return { ended: this.state === 'done', extra: n - i };
  }
}
