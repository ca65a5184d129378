/**
 * Shared helpers for the pullthrough-*.test.ts suites (not a test file): start a fake
 * upstream with teardown, build the upstream config entry for it, and stream a response
 * while observing it (bytes received, time of the first byte, errors mid-body).
 */
import type { ExecutionContext } from 'ava';
import { request } from 'undici';
import { agent } from '../helpers/http.js';
import { FakeUpstream, type FakeUpstreamOptions } from '../fixtures/fake-upstream.js';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function startFake(t: ExecutionContext, opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const f = await FakeUpstream.start(opts);
  t.teardown(() => f.close());
  return f;
}

/** An `upstreams.<name>` entry pointing at the fake (YAML-shaped, as in a config file). */
export function upstreamEntry(fake: FakeUpstream, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { endpoints: [fake.url], ...extra };
}

/** Poll until `probe()` is truthy (every 20 ms, bounded). */
export async function waitFor(probe: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

export interface StreamResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** Set when the body ended with an error (connection aborted before Content-Length). */
  error: Error | null;
  /** ms from sending the request to the first body byte (null: no body bytes). */
  firstByteMs: number | null;
  /** Value of `onFirstByte()` when the first body byte arrived. */
  atFirstByte: unknown;
}

/**
 * GET (or HEAD) with a streaming body read. `abortAfterBytes` destroys the request once that
 * many body bytes arrived (a client leaving mid-body); `onFirstByte` samples state (e.g. the
 * fake's progress) when the first byte arrives; `afterChunk` runs after every chunk with the
 * bytes so far, and the body is not read meanwhile (a slow client: return a promise).
 */
export async function fetchStream(
  url: string,
  opts: {
    method?: 'GET' | 'HEAD';
    headers?: Record<string, string>;
    abortAfterBytes?: number;
    onFirstByte?: () => unknown;
    afterChunk?: (bytes: number) => void | Promise<void>;
  } = {},
): Promise<StreamResult> {
  const ac = new AbortController();
  const started = Date.now();
  const res = await request(url, { method: opts.method ?? 'GET', headers: opts.headers, dispatcher: agent, signal: ac.signal });
  const chunks: Buffer[] = [];
  let n = 0;
  let error: Error | null = null;
  let firstByteMs: number | null = null;
  let atFirstByte: unknown;
  try {
    for await (const c of res.body as AsyncIterable<Buffer>) {
      if (firstByteMs === null) {
        firstByteMs = Date.now() - started;
        atFirstByte = opts.onFirstByte?.();
      }
      chunks.push(c);
      n += c.length;
      await opts.afterChunk?.(n);
      if (opts.abortAfterBytes !== undefined && n >= opts.abortAfterBytes) {
        ac.abort();
        break;
      }
    }
  } catch (e) {
    error = e as Error;
  }
  return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks, n), error, firstByteMs, atFirstByte };
}

export const ACCEPT_ALL = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  '*/*',
].join(', ');
