/** A thin undici client for tests: short keep-alive, whole-body reads, no surprises. */
import { createHash } from 'node:crypto';
import { Agent, type Dispatcher, request } from 'undici';

export const agent = new Agent({ keepAliveTimeout: 10, keepAliveMaxTimeout: 10, connections: 64 });

export interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  json<T = unknown>(): T;
  header(name: string): string | undefined;
}

export type Method = 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';

/** One request, whole body read; through `dispatcher` if given (TLS/mTLS agents), else the shared agent. */
export async function http(
  method: Method,
  url: string,
  opts: { headers?: Record<string, string | string[]>; body?: Buffer | string | NodeJS.ReadableStream; dispatcher?: Dispatcher } = {},
): Promise<Res> {
  const res = await request(url, {
    method,
    headers: opts.headers,
    body: opts.body as Buffer | string | undefined,
    dispatcher: opts.dispatcher ?? agent,
  });
  const body = Buffer.from(await res.body.arrayBuffer());
  return {
    status: res.statusCode,
    headers: res.headers,
    body,
    json<T>() {
      return JSON.parse(body.toString('utf8')) as T;
    },
    header(name: string) {
      const v = res.headers[name.toLowerCase()];
      return Array.isArray(v) ? v.join(', ') : v;
    },
  };
}

export function sha256(b: Buffer | string): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

export function errorCode(res: Res): string | undefined {
  try {
    return res.json<{ errors: Array<{ code: string }> }>().errors[0]?.code;
  } catch {
    return undefined;
  }
}

/** Push a blob monolithically; returns its digest. */
export async function pushBlob(base: string, repo: string, bytes: Buffer | string): Promise<string> {
  const d = sha256(bytes);
  const res = await http('POST', `${base}/v2/${repo}/blobs/uploads/?digest=${d}`, {
    headers: { 'content-type': 'application/octet-stream' },
    body: bytes,
  });
  if (res.status !== 201) throw new Error(`push blob ${d}: ${res.status} ${res.body.toString()}`);
  return d;
}

export async function pushManifest(base: string, repo: string, ref: string, bytes: Buffer | string, mediaType: string): Promise<Res> {
  return http('PUT', `${base}/v2/${repo}/manifests/${ref}`, { headers: { 'content-type': mediaType }, body: bytes });
}
