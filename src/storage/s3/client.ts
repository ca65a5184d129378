/**
 * S3 driver: the client, its options, and what its failures become. Every store error
 * reaching the registry is a RegistryError UNAVAILABLE (503: clients retry later) naming
 * the operation and the S3 error code only: an SDK error can carry the signed request
 * (Authorization header with the access key id), so neither its message nor its cause
 * is passed on.
 */
import { S3Client } from '@aws-sdk/client-s3';
import { RegistryError, insufficientStorage } from '../../registry/errors.js';

/** Options of the S3-compatible blob driver (config wiring: `storage.driver`, issue #13). */
export interface S3BlobStoreOptions {
  /** e.g. http://127.0.0.1:7480; omitted for AWS itself. */
  endpoint?: string;
  region: string;
  bucket: string;
  /** Key prefix for everything this store writes (e.g. `regmirror`); '' for the bucket root. */
  prefix?: string;
  /** Path-style URLs (`<endpoint>/<bucket>/<key>`): what Ceph RGW, MinIO and most on-prem stores need. Default true. */
  forcePathStyle?: boolean;
  /** Static credentials; omitted: the SDK's default chain (AWS_ACCESS_KEY_ID, ...). */
  accessKeyId?: string;
  secretAccessKey?: string;
  /** Multipart part size in bytes (5 MiB to 5 GiB, S3's limits for all but the last part). Default 16 MiB. */
  partSize?: number;
  /** `recover()` removes stages and multipart uploads older than this (other replicas may still be writing younger ones). Default 24 h. */
  staleStageMs?: number;
  /** Keys per ListObjectsV2 page (S3's maximum and default: 1000); smaller in tests of pagination. */
  listPageSize?: number;
  /** Attempts per request (the SDK retries 5xx and network errors with backoff). Default 3. */
  maxAttempts?: number;
  /** Connect timeout, and socket inactivity timeout per request (a hung store fails with it), ms. Defaults 5 000 and 60 000. */
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
}

export const MIN_PART_SIZE = 5 * 1024 * 1024;
export const DEFAULT_PART_SIZE = 16 * 1024 * 1024;
/** S3's limit for one copy (CopyObject, or one UploadPartCopy) and for one part. */
export const MAX_COPY_BYTES = 5 * 1024 * 1024 * 1024;
/** S3's limit on parts per multipart upload. */
export const MAX_PARTS = 10_000;

export function makeClient(o: S3BlobStoreOptions): S3Client {
  return new S3Client({
    region: o.region,
    ...(o.endpoint ? { endpoint: o.endpoint } : {}),
    forcePathStyle: o.forcePathStyle ?? true,
    ...(o.accessKeyId && o.secretAccessKey ? { credentials: { accessKeyId: o.accessKeyId, secretAccessKey: o.secretAccessKey } } : {}),
    // Ceph 16 refuses streamed bodies with trailing checksums (411); we hash content ourselves.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: o.maxAttempts ?? 3,
    // socketTimeout, not requestTimeout: the SDK's requestTimeout only logs a warning unless
    // told to throw, and it times the whole request up to the response head (a big part
    // upload on a slow link); silence on the socket is what a hung store looks like.
    requestHandler: { connectionTimeout: o.connectTimeoutMs ?? 5_000, socketTimeout: o.requestTimeoutMs ?? 60_000 },
  });
}

interface SdkError {
  name?: string;
  code?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
}

/** The object (or bucket) is not there: a normal answer, not a failure. */
export function isNotFound(e: unknown): boolean {
  const x = e as SdkError;
  return x?.name === 'NoSuchKey' || x?.name === 'NotFound' || x?.name === 'NoSuchUpload' || x?.$metadata?.httpStatusCode === 404;
}

/** A store failure as the registry reports it; see the top for what is left out and why. */
export function storeError(e: unknown, op: string): Error {
  if (e instanceof RegistryError) return e;
  const x = e as SdkError;
  if (x?.name === 'QuotaExceeded' || x?.Code === 'QuotaExceeded') return insufficientStorage(); // a bucket quota: like a full disk
  const status = x?.$metadata?.httpStatusCode;
  // Network errors carry an errno code (ECONNREFUSED, ETIMEDOUT); S3 errors a name (SlowDown, AccessDenied).
  const what = [x?.code ?? x?.Code ?? x?.name ?? 'error', status ? `HTTP ${status}` : ''].filter(Boolean).join(', ');
  // Retry-After as for the database (pool.ts): an outage is the store's, not the request's.
  return new RegistryError('UNAVAILABLE', `object store unavailable: ${op} failed (${what})`, { status: 503, headers: { 'retry-after': '5' } });
}
