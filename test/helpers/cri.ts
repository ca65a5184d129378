/**
 * A small CRI image-service client, the part of kubelet (or `crictl pull` / `crictl
 * inspecti`) that pulls: gRPC over containerd's unix socket with the `runtime.v1`
 * ImageService from test/fixtures/cri/api.proto (crictl itself is not packaged in Debian).
 *
 * `pull(image, auth)` is one `PullImage` call, exactly what kubelet sends for a pod:
 * `auth` is what an `imagePullSecrets` entry becomes (username/password, no
 * server_address); without it, no credentials. Errors reject with the gRPC status and
 * containerd's message (which names the URL that failed).
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ExecutionContext } from 'ava';

/** build/test/helpers -> test/fixtures/cri (the proto is not copied by tsc). */
const PROTO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/cri/api.proto');

export const PULL_TIMEOUT_MS = 60_000;
const CALL_TIMEOUT_MS = 15_000;

export interface CriAuth {
  username?: string;
  password?: string;
  /** base64(user:pass), as in a Docker config.json */
  auth?: string;
  serverAddress?: string;
  identityToken?: string;
  registryToken?: string;
}

export interface CriImage {
  /** The image id: the config digest. */
  id: string;
  repoTags: string[];
  repoDigests: string[];
  size: string;
}

export class CriError extends Error {
  constructor(
    readonly method: string,
    readonly code: number,
    readonly details: string,
  ) {
    super(`CRI ${method}: ${grpc.status[code] ?? code}: ${details}`);
  }
}

export interface CriClient {
  /** PullImage; resolves with `image_ref` (the image id). */
  pull(image: string, auth?: CriAuth, timeoutMs?: number): Promise<string>;
  /** ImageStatus; null when the image is not there (the CRI answers with no image). */
  status(image: string): Promise<CriImage | null>;
  list(): Promise<CriImage[]>;
  remove(image: string): Promise<void>;
}

type Callback = (err: grpc.ServiceError | null, res: Record<string, unknown>) => void;
type Method = (req: Record<string, unknown>, opts: grpc.CallOptions, cb: Callback) => void;

let definition: protoLoader.PackageDefinition | undefined;

function imageOf(raw: unknown): CriImage | null {
  if (!raw || typeof raw !== 'object') return null;
  const r = raw as Record<string, unknown>;
  if (!r.id) return null;
  return { id: String(r.id), repoTags: (r.repoTags as string[]) ?? [], repoDigests: (r.repoDigests as string[]) ?? [], size: String(r.size ?? '0') };
}

/** A client on containerd's socket, closed in t.teardown. */
export function criClient(t: ExecutionContext, socket: string): CriClient {
  definition ??= protoLoader.loadSync(PROTO, { keepCase: false, longs: String, defaults: true });
  const pkg = grpc.loadPackageDefinition(definition) as unknown as { runtime: { v1: { ImageService: grpc.ServiceClientConstructor } } };
  const client = new pkg.runtime.v1.ImageService(`unix://${socket}`, grpc.credentials.createInsecure());
  t.teardown(() => client.close());

  const call = (method: string, req: Record<string, unknown>, timeoutMs = CALL_TIMEOUT_MS) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const fn = (client as unknown as Record<string, Method>)[method]!.bind(client);
      fn(req, { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(new CriError(method, err.code, err.details)) : resolve(res)));
    });

  return {
    async pull(image, auth, timeoutMs = PULL_TIMEOUT_MS) {
      const res = await call('PullImage', { image: { image }, ...(auth ? { auth } : {}) }, timeoutMs);
      return String(res.imageRef);
    },
    async status(image) {
      return imageOf((await call('ImageStatus', { image: { image } })).image);
    },
    async list() {
      const res = await call('ListImages', {});
      return ((res.images as unknown[]) ?? []).map(imageOf).filter((i): i is CriImage => i !== null);
    },
    async remove(image) {
      await call('RemoveImage', { image: { image } });
    },
  };
}
