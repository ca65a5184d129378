/**
 * Shared by the CRI suites (cri.test.ts, cri-legacy.test.ts; not a test file): the image
 * the CRI picks here, regmirror's own login for nodes, and assertions on CRI results.
 */
import test, { type ExecutionContext } from 'ava';
import path from 'node:path';
import { writeHtpasswd } from '../helpers/authn.js';
import { type CriAuth, type CriClient, CriError } from '../helpers/cri.js';
import type { TestServer } from '../helpers/server.js';
import { CI, missingTools } from '../helpers/tools.js';
import { AMD64, TOOLS, V1, type Upstream } from './_registry.js';

export const MISSING = missingTools([...TOOLS, 'openssl']);
export const e2e = MISSING.length === 0 || CI ? test : test.skip;
if (MISSING.length > 0 && !CI) console.warn(`CRI e2e suites skipped: missing ${MISSING.join(', ')}`);

/** The image the CRI picks on this machine (it pulls the host platform only). */
export const HOST_IMAGE = process.arch === 'arm64' ? V1.images[1]!.image : AMD64;
/** regmirror's own user: what belongs in a pod's pull secret (or configs auth) for the mirror. */
export const NODE = { username: 'node', password: 'node-pw-5c0f3b' };

export const CRI_REGISTRY = 'plugins."io.containerd.grpc.v1.cri".registry';

/**
 * regmirror's `auth` section for a mirror that lets only signed-in users pull: htpasswd
 * holding NODE; Basic challenges unless `token`.
 */
export async function loginRequired(up: Upstream, extra: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  const htpasswd = path.join(up.work, 'htpasswd');
  await writeHtpasswd(htpasswd, { [NODE.username]: NODE.password });
  return {
    htpasswd,
    token: null,
    rules: [{ repositories: '**', pull: ['authenticated'], push: ['authenticated'], delete: [] }],
    loginRateLimit: { maxFailures: 1000 },
    ...extra,
  };
}

export async function expectPullFails(t: ExecutionContext, cri: CriClient, ref: string, auth?: CriAuth): Promise<CriError> {
  const err = await t.throwsAsync(cri.pull(ref, auth), { instanceOf: CriError });
  t.log(`${ref}${auth ? ' with auth' : ''}: ${err?.details.slice(0, 300)}`);
  return err as CriError;
}

/** ImageStatus shows the image by tag and by digest, with the upstream's digest (crictl inspecti). */
export async function assertCriImage(t: ExecutionContext, cri: CriClient, ref: string, repo: string, digest: string, imageRef: string): Promise<void> {
  const img = await cri.status(ref);
  t.truthy(img, `ImageStatus ${ref}: no image`);
  t.deepEqual(img?.repoDigests, [`${repo}@${digest}`], 'repoDigests carry the upstream digest');
  t.deepEqual(img?.repoTags, [ref]);
  t.is(img?.id, HOST_IMAGE.config.digest, 'the image id is the host platform config digest');
  t.is(img?.id, imageRef, 'PullImage returned the image id');
  t.is((await cri.status(`${repo}@${digest}`))?.id, img?.id, 'ImageStatus by digest finds the same image');
}

/** Whether regmirror's log holds `secret` anywhere. */
export function leaked(s: TestServer, secret: string): boolean {
  return s.logs.some((l) => l.includes(secret));
}
