/**
 * The upstream HTTP/1.1 client (issue #14 items 1 and 3). Socket reads land directly in
 * 1 MiB slabs (net/tls `onread`) and body chunks are views of them: a cold fill costs no
 * 64 KiB allocation per read, no copy into a parser's memory and none out of it (undici
 * does all three; bench/results/fill-cpu.md), and undici itself (~18 MiB RSS) is loaded
 * only for an upstream behind a proxy (client.ts).
 *
 * Slabs are safe to hand out without copying because a slab is only ever filled forward:
 * each read gets the unused rest of its connection's slab, a full slab is replaced by a new
 * one, and nothing is ever written twice; a slab is freed by the GC once the fill's memory
 * window, its stage and the client sockets let go of its views.
 *
 * Scope: GET and HEAD over http and https (the upstream's CA and verification settings,
 * SNI), bodies framed by Content-Length, chunked or connection close (wireparse.ts), a
 * keep-alive pool per origin bounded by `maxConnections`, connect/headers/body timeouts,
 * abort signals, and one retry on a fresh connection when a reused one turns out closed.
 */
import type { IncomingHttpHeaders } from 'node:http';
import net from 'node:net';
import { Readable } from 'node:stream';
import tls from 'node:tls';
import { BodyFramer, type Framing, HeadReader, type ResponseHead, WireProtocolError, framingOf } from './wireparse.js';

export interface WireOptions {
  connectTimeoutMs: number;
  headersTimeoutMs: number;
  /** Silence while the body is being read (not while the reader holds it paused). */
  bodyTimeoutMs: number;
  keepAliveMs: number;
  maxConnections: number;
  ca?: Buffer;
  rejectUnauthorized: boolean;
}

export interface WireRequest {
  method: 'GET' | 'HEAD';
  headers: Record<string, string>;
  signal?: AbortSignal;
}

export interface WireResponse {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: WireBody;
}

/** Transport failures carry a code, like node's and undici's errors (errorSummary prints it). */
export class WireError extends Error {
  override name = 'WireError';
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

const SLAB = 1024 * 1024;
/** A read gets at least this much room; the rest of a fuller slab is left unused. */
const MIN_READ = 64 * 1024;
/** Idle connections kept per origin (each may hold the unused rest of one slab). */
const MAX_IDLE = 4;
/** A body with at most this much left is read to its end by dump() so the connection is reused. */
const DUMP_MAX = 256 * 1024;

/** One connection; one request at a time. */
class Conn {
  readonly socket: net.Socket;
  private slab = Buffer.allocUnsafeSlow(SLAB);
  private used = 0;
  /** Who gets the bytes of the current exchange (null: idle; bytes then mean the server misbehaves). */
  sink: ((data: Buffer) => boolean) | null = null;
  /** Called once when the socket closes or fails (the current exchange fails with it). */
  onGone: ((err: Error) => void) | null = null;
  /** The socket's inactivity timer fired (armed only while a body is read). */
  onTimeout: (() => void) | null = null;
  gone = false;
  reused = false;
  idleTimer: NodeJS.Timeout | null = null;

  constructor(url: URL, opts: WireOptions, onClose: () => void) {
    const onread = { buffer: () => this.nextBuffer(), callback: (n: number, buf: Uint8Array) => this.read(n, buf) };
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const port = Number(url.port) || (url.protocol === 'https:' ? 443 : 80);
    this.socket =
      url.protocol === 'https:'
        ? // `onread` works for TLS sockets too (they are net.Sockets), but @types/node lists it for net only.
          tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, ca: opts.ca, rejectUnauthorized: opts.rejectUnauthorized, ALPNProtocols: ['http/1.1'], ...({ onread } as object) })
        : net.connect({ host, port, onread });
    this.socket.setNoDelay(true);
    const fail = (err: Error) => {
      if (this.gone) return;
      this.gone = true;
      if (this.idleTimer) clearTimeout(this.idleTimer);
      onClose();
      this.onGone?.(err);
    };
    this.socket.on('error', fail);
    this.socket.on('timeout', () => this.onTimeout?.());
    this.socket.on('close', () => fail(new WireError('upstream closed the connection', 'UND_ERR_SOCKET')));
    this.socket.on('end', () => {
      // The server half-closed: a body framed by the close ends here; anything else fails.
      this.sink?.(EOF);
      this.socket.destroy();
    });
  }

  private nextBuffer(): Buffer {
    if (SLAB - this.used < MIN_READ) {
      this.slab = Buffer.allocUnsafeSlow(SLAB);
      this.used = 0;
    }
    return this.slab.subarray(this.used);
  }

  private read(n: number, buf: Uint8Array): boolean {
    this.used += n; // these bytes are handed out: the next read starts after them
    const data = Buffer.from(buf.buffer, buf.byteOffset, n);
    if (!this.sink) {
      // Bytes while idle: the server is out of step with us; never reuse this connection.
      this.socket.destroy();
      return false;
    }
    return this.sink(data);
  }

  connected(timeoutMs: number): Promise<void> {
    const s = this.socket;
    const event = s instanceof tls.TLSSocket ? 'secureConnect' : 'connect';
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        s.destroy();
        reject(new WireError(`connect timed out after ${timeoutMs} ms`, 'UND_ERR_CONNECT_TIMEOUT'));
      }, timeoutMs);
      this.onGone = (err) => {
        clearTimeout(timer);
        reject(err);
      };
      s.once(event, () => {
        clearTimeout(timer);
        this.onGone = null;
        resolve();
      });
    });
  }
}

/** Marks the end of the stream for a sink (a server that closed its side). */
const EOF = Buffer.alloc(0);

class OriginPool {
  idle: Conn[] = [];
  open = 0;
  waiters: Array<() => void> = [];
}

export class Wire {
  private readonly pools = new Map<string, OriginPool>();
  private closed = false;

  constructor(private readonly opts: WireOptions) {}

  async close(): Promise<void> {
    this.closed = true;
    for (const pool of this.pools.values()) for (const c of pool.idle.splice(0)) c.socket.destroy();
  }

  async request(url: URL, req: WireRequest): Promise<WireResponse> {
    for (const [k, v] of Object.entries(req.headers)) {
      if (/[\r\n\0]/.test(v) || !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(k)) throw new WireError('invalid request header', 'UND_ERR_INVALID_ARG');
    }
    req.signal?.throwIfAborted();
    const conn = await this.acquire(url, req.signal);
    try {
      return await this.exchange(url, req, conn);
    } catch (e) {
      // A kept-alive connection the server closed meanwhile (EOF, ECONNRESET, EPIPE before any answer):
      // once more on a new one (GET and HEAD are idempotent). Not after a timeout or a bad answer.
      const code = (e as { code?: string }).code;
      if (!conn.reused || req.signal?.aborted || code === 'UND_ERR_HEADERS_TIMEOUT' || e instanceof WireProtocolError) throw e;
      return this.exchange(url, req, await this.acquire(url, req.signal, true));
    }
  }

  private pool(url: URL): OriginPool {
    let p = this.pools.get(url.origin);
    if (!p) this.pools.set(url.origin, (p = new OriginPool()));
    return p;
  }

  private async acquire(url: URL, signal: AbortSignal | undefined, fresh = false): Promise<Conn> {
    const pool = this.pool(url);
    for (;;) {
      if (this.closed) throw new WireError('client closed', 'UND_ERR_DESTROYED');
      const idle = fresh ? undefined : pool.idle.pop();
      if (idle) {
        if (idle.gone) continue;
        if (idle.idleTimer) clearTimeout(idle.idleTimer);
        idle.reused = true;
        return idle;
      }
      if (pool.open < this.opts.maxConnections) break;
      await new Promise<void>((resolve, reject) => {
        const wake = () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = () => {
          pool.waiters = pool.waiters.filter((w) => w !== wake);
          reject(signal!.reason);
        };
        signal?.addEventListener('abort', onAbort, { once: true });
        pool.waiters.push(wake);
      });
    }
    pool.open++;
    const conn = new Conn(url, this.opts, () => {
      pool.open--;
      pool.idle = pool.idle.filter((c) => c !== conn);
      pool.waiters.shift()?.();
    });
    const onAbort = () => conn.socket.destroy(signal!.reason as Error);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await conn.connected(this.opts.connectTimeoutMs);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    return conn;
  }

  private release(url: URL, conn: Conn, head: ResponseHead): void {
    conn.sink = null;
    conn.onGone = null;
    if (conn.gone) return;
    const pool = this.pool(url);
    if (!head.keepAlive || this.closed || pool.idle.length >= MAX_IDLE) {
      conn.socket.destroy();
      return;
    }
    const waiter = pool.waiters.shift();
    const ms = Math.min(this.opts.keepAliveMs, head.keepAliveHint !== null ? Math.max(0, head.keepAliveHint * 1000 - 1000) : Infinity);
    conn.idleTimer = setTimeout(() => conn.socket.destroy(), ms);
    conn.idleTimer.unref();
    pool.idle.push(conn);
    waiter?.();
  }

  private exchange(url: URL, req: WireRequest, conn: Conn): Promise<WireResponse> {
    const lines = [`${req.method} ${url.pathname}${url.search} HTTP/1.1`, `host: ${url.host}`];
    for (const [k, v] of Object.entries(req.headers)) lines.push(`${k}: ${v}`);
    return new Promise<WireResponse>((resolve, reject) => {
      const signal = req.signal;
      const heads = new HeadReader();
      let body: WireBody | null = null;
      // After a blocked event loop, timers run before pending socket reads: look once more
      // after the poll phase (setImmediate), so an answer that did arrive is not timed out.
      const timer = setTimeout(
        () => setImmediate(() => body || fail(new WireError(`no response headers within ${this.opts.headersTimeoutMs} ms`, 'UND_ERR_HEADERS_TIMEOUT'))),
        this.opts.headersTimeoutMs,
      );
      const onAbort = () => fail(signal!.reason instanceof Error ? signal!.reason : new WireError('request aborted', 'ABORT_ERR'));
      signal?.addEventListener('abort', onAbort, { once: true });
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      function fail(err: Error): void {
        cleanup();
        conn.sink = null;
        conn.socket.destroy();
        if (body) body.destroy(err);
        else reject(err);
      }
      conn.onGone = fail;
      conn.sink = (data) => {
        try {
          if (body) return body.feed(data);
          if (data === EOF) throw new WireError('upstream closed the connection before answering', 'UND_ERR_SOCKET');
          const got = heads.push(data);
          if (!got) return true;
          if (got.head.statusCode < 200) return conn.sink!(got.rest); // 100 Continue, 103 Early Hints: the answer follows
          const head = got.head;
          const framing = framingOf(req.method, head);
          clearTimeout(timer);
          body = new WireBody(conn, framing, this.opts.bodyTimeoutMs, () => {
            cleanup();
            this.release(url, conn, head);
          }, cleanup);
          resolve({ statusCode: head.statusCode, headers: head.headers, body });
          return body.feed(got.rest);
        } catch (e) {
          fail(e instanceof Error ? e : new Error(String(e)));
          return false;
        }
      };
      conn.socket.write(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
    });
  }
}

/**
 * A response body: a Readable of views into the connection's slabs. Pausing it (backpressure)
 * stops reading the socket and the body timeout; `dump()` discards the rest (reading a short
 * rest to keep the connection, closing it otherwise).
 */
export class WireBody extends Readable {
  private readonly framer: BodyFramer;
  private paused = false;
  private finished = false;
  /** Socket reads so far (the body timeout checks for progress). */
  private reads = 0;
  private readonly pieces: Buffer[] = [];

  constructor(
    private readonly conn: Conn,
    framing: Framing,
    private readonly bodyTimeoutMs: number,
    private readonly onComplete: () => void,
    private readonly onDestroyed: () => void,
  ) {
    super({ highWaterMark: SLAB });
    this.framer = new BodyFramer(framing);
    conn.onTimeout = () => {
      // As for the headers timeout: bytes already waiting after a blocked event loop are no stall.
      const reads = this.reads;
      setImmediate(() => {
        if (this.reads === reads && !this.paused && !this.finished) this.destroy(new WireError(`upstream body stalled for ${bodyTimeoutMs} ms`, 'UND_ERR_BODY_TIMEOUT'));
      });
    };
    conn.socket.setTimeout(bodyTimeoutMs);
  }

  /** Bytes from the socket (EOF: the server closed); false pauses reading. */
  feed(data: Buffer): boolean {
    if (this.destroyed) return false;
    this.reads++;
    if (data === EOF) {
      if (this.framer.framing.kind !== 'close') throw new WireError('upstream closed the connection before the end of the body', 'UND_ERR_SOCKET');
      this.end();
      return false;
    }
    const pieces = this.pieces;
    const { ended, extra } = this.framer.feed(data, pieces);
    let more = true;
    for (const p of pieces) if (p.length > 0) more = this.push(p) && more;
    pieces.length = 0;
    if (ended) {
      if (extra > 0) this.conn.socket.destroy(); // unasked-for bytes: not reusable
      this.end();
      // Keep reading: a connection back in the pool must see the next answer (or bytes it never asked for).
      return true;
    }
    if (!more) this.pauseSocket();
    return true;
  }

  private end(): void {
    if (this.finished) return;
    this.finished = true;
    this.conn.socket.setTimeout(0);
    this.conn.onTimeout = null;
    this.push(null);
    this.onComplete();
  }

  private pauseSocket(): void {
    if (this.paused) return;
    this.paused = true;
    this.conn.socket.setTimeout(0); // time the reader holds us is not the upstream's silence
    this.conn.socket.pause();
  }

  override _read(): void {
    if (!this.paused || this.finished) return;
    this.paused = false;
    this.conn.socket.setTimeout(this.bodyTimeoutMs);
    this.conn.socket.resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.finished) {
      this.finished = true;
      this.conn.sink = null;
      this.conn.socket.destroy();
      this.onDestroyed();
    }
    cb(err);
  }

  /** Discard the rest of the body. */
  async dump(): Promise<void> {
    if (this.finished && this.readableEnded) return;
    const f = this.framer.framing;
    if (f.kind === 'length' && f.length <= DUMP_MAX) {
      this.resume();
      await new Promise<void>((resolve) => this.once('end', resolve).once('close', resolve));
      return;
    }
    this.destroy();
  }
}
