/**
 * Shared by the e2e suites that use Debian's docker-registry as the upstream and real
 * containerd/skopeo as clients (not a test file): the multi-arch test image, the upstream
 * fixture, request watching and containerd content assertions.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import { type Containerd, startContainerd } from '../helpers/containerd.js';
import { type AccessEntry, type DockerRegistry, seedRegistry, startDockerRegistry } from '../helpers/docker-registry.js';
import { startServer, tempDir, type TestServer } from '../helpers/server.js';
import { type Skopeo, skopeo } from '../helpers/skopeo.js';
import { CI, freePort, missingTools } from '../helpers/tools.js';
import {
  type Blob,
  type ImageIndex,
  MediaTypes,
  allBlobsOf,
  makeImage,
  makeIndex,
  makeLayer,
  randomBytes,
  readOciLayoutBlob,
  readOciLayoutRef,
  sha256,
} from '../fixtures/images.js';

export const TOOLS = ['docker-registry', 'htpasswd', 'containerd', 'ctr', 'skopeo'];
export const MISSING = missingTools(TOOLS);
export const e2e = MISSING.length === 0 || CI ? test : test.skip;
if (MISSING.length > 0 && !CI) console.warn(`docker-registry e2e suites skipped: missing ${MISSING.join(', ')}`);

/** The registry host name clients use for the upstream (not resolvable: only a name). */
export const UP = 'upstream.test:5000';
/** How containerd sends it (Go's url.Values.Encode escapes ':'). */
export const NS_UP = 'ns=upstream.test%3A5000';
export const REPO = 'library/busybox';
export const execFileP = promisify(execFile);
export const CREDS = { username: 'mirror', password: `pw-${sha256(String(process.pid)).slice(7, 23)}` };

// ---------------------------------------------------------------------------
// images

/** amd64 + arm64/v8, a shared first layer, one own layer each (the arm64 one uncompressed). */
export function busybox(seed: string, kib = 256): ImageIndex {
  const shared = makeLayer([
    { name: 'etc/', content: '' },
    { name: 'etc/os-release', content: `NAME=busybox-test\nVERSION=${seed}\n` },
  ]);
  const amd = makeLayer([
    { name: 'bin/', content: '' },
    { name: 'bin/busybox', content: randomBytes(kib * 1024, `${seed}-amd64`), mode: 0o755 },
  ]);
  const arm = makeLayer(
    [
      { name: 'bin/', content: '' },
      { name: 'bin/busybox', content: randomBytes(((kib * 3) / 4) * 1024, `${seed}-arm64`), mode: 0o755 },
    ],
    { gzip: false },
  );
  return makeIndex([
    { image: makeImage({ arch: 'amd64', layers: [shared, amd] }), platform: { architecture: 'amd64', os: 'linux' } },
    { image: makeImage({ arch: 'arm64', variant: 'v8', layers: [shared, arm] }), platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
  ]);
}

export const V1 = busybox('1.0');
export const V1_BLOBS = allBlobsOf(V1);
export const AMD64 = V1.images[0]!.image;

export function isManifest(b: Blob): boolean {
  return b.mediaType === MediaTypes.ociManifest || b.mediaType === MediaTypes.ociIndex || b.mediaType === MediaTypes.dockerManifest;
}

// ---------------------------------------------------------------------------
// fixtures

export interface Env {
  reg: DockerRegistry;
  ctd: Containerd;
  /** containerd --hosts-dir */
  hostsDir: string;
  /** A 127.0.0.1 URL nobody listens on: the hosts.toml `server`. */
  closed: string;
  work: string;
  sk: Skopeo;
}

export type Upstream = Omit<Env, 'ctd' | 'hostsDir'>;

/** docker-registry (Basic auth) holding `library/busybox:<tag>` for each image (no containerd). */
export async function seededUpstream(t: ExecutionContext, images: Array<{ tag: string; idx: ImageIndex }> = [{ tag: '1.0', idx: V1 }]): Promise<Upstream> {
  const sk = await skopeo(t);
  const [reg, work, closedPort] = await Promise.all([startDockerRegistry(t, { auth: CREDS }), tempDir(t), freePort()]);
  for (const { tag, idx } of images) {
    await seedRegistry(t, reg, { repo: REPO, tag, root: idx.index, blobs: allBlobsOf(idx) }, sk);
    const served = await upstreamDigest(reg, REPO, tag);
    if (served !== idx.index.digest) throw new Error(`seeded ${REPO}:${tag} but the upstream serves ${served}, not ${idx.index.digest}`);
  }
  return { reg, closed: `http://127.0.0.1:${closedPort}`, work, sk };
}

/** docker-registry (Basic auth) holding `library/busybox:<tag>` for each image, plus a containerd. */
export async function setup(t: ExecutionContext, images: Array<{ tag: string; idx: ImageIndex }> = [{ tag: '1.0', idx: V1 }]): Promise<Env> {
  const [up, ctd] = await Promise.all([seededUpstream(t, images), startContainerd(t)]);
  const hostsDir = path.join(up.work, 'certs.d');
  await fs.mkdir(hostsDir, { recursive: true });
  return { ...up, ctd, hostsDir };
}

/** regmirror's upstream entry for the docker-registry, with its Basic credentials. */
export function upstreamEntry(reg: DockerRegistry, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { endpoints: [reg.url], credentials: { ...reg.credentials! }, ...extra };
}

export interface SeenRequest {
  method: string;
  url: string;
  /** The status sent (0 if no response head was sent yet). */
  status: number;
  ua: string;
  /** The Authorization scheme sent (`basic`, `bearer`), '' for none; never the value. */
  auth: string;
}

/**
 * Record every request regmirror receives, as it arrives (node's 'request' event). The
 * access log (app.ts onResponse) is not used for counting: a response whose client has
 * all the bytes and closes the socket before the server's res.end() was processed never
 * reaches onResponse (observed under load with containerd), so it would be missing there.
 */
export function watchRequests(s: TestServer): () => SeenRequest[] {
  const seen: Array<{ method: string; url: string; ua: string; auth: string; res: ServerResponse }> = [];
  s.app.fastify.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const auth = (req.headers.authorization ?? '').split(' ')[0]!.toLowerCase();
    seen.push({ method: req.method ?? '', url: req.url ?? '', ua: String(req.headers['user-agent'] ?? ''), auth, res });
  });
  return () => seen.map(({ res, ...r }) => ({ ...r, status: res.headersSent ? res.statusCode : 0 }));
}

/** Whether regmirror's own log has an access line for this exact URL with this status. */
export function logged(s: TestServer, method: string, url: string, status: number): boolean {
  return s.logs.some((line) => {
    try {
      const doc = JSON.parse(line) as { msg?: string; method?: string; url?: string; status?: number };
      return doc.msg === 'request' && doc.method === method && doc.url === url && doc.status === status;
    } catch {
      return false;
    }
  });
}

export function fromContainerd(r: SeenRequest): boolean {
  return r.ua.startsWith('containerd/');
}

export function summary(reqs: readonly unknown[]): string {
  return JSON.stringify(reqs).slice(0, 6000);
}

/** The digest the upstream itself gives for a tag (authenticated HEAD). */
export async function upstreamDigest(reg: DockerRegistry, repo: string, tag: string): Promise<string> {
  const accept = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifestList, MediaTypes.dockerManifest].join(', ');
  const auth = `Basic ${Buffer.from(`${reg.credentials!.username}:${reg.credentials!.password}`).toString('base64')}`;
  const res = await fetch(`${reg.url}/v2/${repo}/manifests/${tag}`, { method: 'HEAD', headers: { accept, authorization: auth }, signal: AbortSignal.timeout(10_000) });
  const d = res.headers.get('docker-content-digest');
  if (res.status !== 200 || !d) throw new Error(`upstream HEAD ${repo}:${tag}: ${res.status}`);
  return d;
}

/** Successful GETs the upstream served, per path, among `entries`. */
export function servedGets(entries: readonly AccessEntry[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const e of entries) if (e.method === 'GET' && e.status >= 200 && e.status < 300) m.set(e.path, (m.get(e.path) ?? 0) + 1);
  return m;
}

export async function assertImage(t: ExecutionContext, ctd: Containerd, namespace: string, ref: string, digest: string): Promise<void> {
  const images = await ctd.images(namespace);
  const img = images.find((i) => i.ref === ref);
  t.truthy(img, `ctr -n ${namespace} images ls has no ${ref}: ${JSON.stringify(images)}`);
  t.is(img?.digest, digest, `${ref} in containerd has the wrong digest`);
}

/** Every digest is in the namespace's content store. */
export async function assertContent(t: ExecutionContext, ctd: Containerd, namespace: string, blobs: readonly Blob[]): Promise<void> {
  const have = new Set(await ctd.content(namespace));
  const missing = blobs.filter((b) => !have.has(b.digest)).map((b) => `${b.digest} (${b.mediaType})`);
  t.deepEqual(missing, [], `containerd namespace ${namespace} lacks content`);
}

/** The OCI layout at `dir` holds exactly `root` under `tag` and byte-identical `blobs`. */
export async function assertLayoutHolds(t: ExecutionContext, dir: string, tag: string, root: Blob, blobs: readonly Blob[]): Promise<void> {
  const ref = await readOciLayoutRef(dir, tag);
  t.is(ref?.digest, root.digest, `${dir}: top-level digest differs from the upstream's`);
  t.is(ref?.mediaType, root.mediaType);
  for (const b of blobs) {
    const got = await readOciLayoutBlob(dir, b.digest).catch(() => undefined);
    t.true(got?.equals(b.bytes) ?? false, `${dir}: blob ${b.digest} (${b.mediaType}) missing or different`);
  }
  const files = (await fs.readdir(path.join(dir, 'blobs', 'sha256'))).sort();
  t.deepEqual(files, blobs.map((b) => b.digest.slice('sha256:'.length)).sort(), `${dir}: unexpected blobs (conversion?)`);
}

/**
 * A mirror at an air-gapped site: `test-namespace` takes pushes and maps to UP, whose only
 * endpoint is a closed port, so imports and pulls must never need it.
 */
export async function airGappedMirror(t: ExecutionContext): Promise<TestServer> {
  const closed = `http://127.0.0.1:${await freePort()}`;
  return startServer(t, {
    upstreams: { [UP]: { endpoints: [closed] } },
    defaultUpstream: UP,
    namespaces: [{ prefix: 'test-namespace', upstream: 'ns', push: true }],
  });
}
