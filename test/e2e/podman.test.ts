/**
 * podman (CRI-O's image library, containers/image 5.23) pulling through regmirror with
 * `registries.conf` mirrors, as CRI-O and podman nodes are configured: the upstream is
 * Debian's docker-registry with Basic auth (test/e2e/_registry.ts), regmirror runs
 * in-process, podman runs rootful but isolated (test/helpers/podman.ts).
 *
 * Every `[[registry]]` here has `prefix` = the registry name podman is asked for and
 * `location` = a closed 127.0.0.1 port: a pull that does not use the mirror fails there
 * (no DNS lookup of the made-up name, no traffic beyond 127.0.0.1), and a pull that
 * succeeds can only have come through the mirror. Covered:
 *  - mirror `<mirror>/<registry host>` (host in path) and `<mirror>/<prefix>` (a
 *    `namespaces[]` entry, needed for a registry host with a port);
 *  - digest-only mirrors as OpenShift renders them from an ImageDigestMirrorSet
 *    (`pull-from-mirror = "digest-only"`) and the older ICSP form (registry-level
 *    `mirror-by-digest-only = true`): tag pulls skip the mirror, digest pulls use it;
 *  - `regmirror client-config registries.conf` output used as is;
 *  - Basic-only mirror auth (`auth.token: null`) with anonymous pull: podman answers the
 *    Basic challenge with empty credentials, which are anonymous, never a failed login/429.
 *
 * Skipped only when a tool is missing and CI !== 'true'; under CI a missing tool fails.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import { settleAccessLog } from '../helpers/docker-registry.js';
import { writeHtpasswd } from '../helpers/authn.js';
import { type Podman, podman } from '../helpers/podman.js';
import { startServer } from '../helpers/server.js';
import { CI, missingTools } from '../helpers/tools.js';
import { USER_AGENT } from '../../src/upstream/client.js';
import { AMD64, REPO, UP, V1, type SeenRequest, type Upstream, execFileP, seededUpstream, summary, upstreamEntry, watchRequests } from './_registry.js';

const MISSING = missingTools(['podman', 'docker-registry', 'htpasswd', 'skopeo']);
const e2e = MISSING.length === 0 || CI ? test : test.skip;
if (MISSING.length > 0 && !CI) console.warn(`podman e2e skipped: missing ${MISSING.join(', ')}`);

/** A registry name without a port, so it can be a path component of the mirror location. */
const HOST = 'upstream.test';

function fromPodman(r: SeenRequest): boolean {
  return r.ua.startsWith('containers/');
}

/** `[[registry]]` for `prefix` whose own location is the closed port, with one mirror. */
function registryEntry(prefix: string, closed: string, mirror: string, extra: { registry?: string[]; mirror?: string[] } = {}): string {
  return [
    '[[registry]]',
    `prefix = ${JSON.stringify(prefix)}`,
    `location = ${JSON.stringify(new URL(closed).host)}`,
    'insecure = true',
    ...(extra.registry ?? []),
    '[[registry.mirror]]',
    `location = ${JSON.stringify(mirror)}`,
    'insecure = true',
    ...(extra.mirror ?? []),
    '',
  ].join('\n');
}

/** The seeded upstream and how much of its access log the seeding wrote (skopeo, node). */
async function upstream(t: ExecutionContext): Promise<Upstream & { seeded: number }> {
  const up = await seededUpstream(t);
  await settleAccessLog(up.reg);
  return { ...up, seeded: up.reg.accessLog().length };
}

/** Since seeding, the upstream saw regmirror (its user agent) and never podman. */
async function assertUpstreamSawOnlyMirror(t: ExecutionContext, up: Upstream & { seeded: number }): Promise<void> {
  await settleAccessLog(up.reg);
  const log = up.reg.accessLog().slice(up.seeded);
  t.true(log.some((e) => e.userAgent === USER_AGENT && e.method === 'GET' && e.path.startsWith(`/v2/${REPO}/blobs/`)), 'the upstream served blobs to regmirror');
  t.deepEqual(log.filter((e) => e.userAgent !== USER_AGENT), [], 'only regmirror talked to the upstream');
}

/** podman stored the upstream's image (index digest for the multi-arch tag; amd64 picked). */
async function assertPulled(t: ExecutionContext, pm: Podman, ref: string, name: string): Promise<void> {
  t.is(await pm.digestOf(ref), V1.index.digest, `${ref}: podman's digest differs from the upstream's`);
  t.true((await pm.repoDigestsOf(ref)).includes(`${name}@${V1.index.digest}`), `${ref}: RepoDigests lack ${name}@${V1.index.digest}`);
}

/** regmirror answered podman's manifest and blob requests for `repoPath` with 200. */
function assertServedPodman(t: ExecutionContext, reqs: SeenRequest[], repoPath: string): void {
  const mine = reqs.filter(fromPodman);
  for (const b of [AMD64.manifest, AMD64.config, ...AMD64.layers]) {
    const kind = b === AMD64.manifest ? 'manifests' : 'blobs';
    t.true(mine.some((r) => r.method === 'GET' && r.url === `/v2/${repoPath}/${kind}/${b.digest}` && r.status === 200), `podman did not get ${kind}/${b.digest} from regmirror: ${summary(mine)}`);
  }
  t.deepEqual(mine.filter((r) => r.status !== 200 && !(r.url === '/v2/' && r.status === 401)), [], 'regmirror answered podman with 200');
}

e2e('podman pulls upstream.test/library/busybox:1.0 through a registries.conf mirror <mirror>/<registry host> (host in path)', async (t) => {
  const up = await upstream(t);
  const s = await startServer(t, { upstreams: { [HOST]: upstreamEntry(up.reg) }, defaultUpstream: null });
  const requests = watchRequests(s);
  const pm = await podman(t);
  await pm.setRegistriesConf(registryEntry(HOST, up.closed, `${s.hostPort}/${HOST}`));

  const ref = `${HOST}/${REPO}:1.0`;
  await pm.pull(ref);
  await assertPulled(t, pm, ref, `${HOST}/${REPO}`);
  const reqs = requests();
  t.true(reqs.some((r) => fromPodman(r) && r.method === 'GET' && r.url === `/v2/${HOST}/${REPO}/manifests/1.0` && r.status === 200), `no tag GET with the host in the path: ${summary(reqs)}`);
  assertServedPodman(t, reqs, `${HOST}/${REPO}`);
  t.false(reqs.some((r) => r.url.includes('?ns=')), 'containers/image sends no ns=');
  await assertUpstreamSawOnlyMirror(t, up);
});

e2e('podman pulls upstream.test:5000/library/busybox:1.0 through a prefix mirror location <mirror>/up5000 (namespaces[] prefix)', async (t) => {
  const up = await upstream(t);
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(up.reg) }, defaultUpstream: null, namespaces: [{ prefix: 'up5000', upstream: UP }] });
  const requests = watchRequests(s);
  const pm = await podman(t);
  await pm.setRegistriesConf(registryEntry(UP, up.closed, `${s.hostPort}/up5000`));

  const ref = `${UP}/${REPO}:1.0`;
  await pm.pull(ref);
  await assertPulled(t, pm, ref, `${UP}/${REPO}`);
  const reqs = requests();
  t.true(reqs.some((r) => fromPodman(r) && r.method === 'GET' && r.url === `/v2/up5000/${REPO}/manifests/1.0` && r.status === 200), `no tag GET under the prefix: ${summary(reqs)}`);
  assertServedPodman(t, reqs, `up5000/${REPO}`);
  await assertUpstreamSawOnlyMirror(t, up);
});

const DIGEST_ONLY_FORMS = [
  { name: 'pull-from-mirror = "digest-only" (IDMS)', extra: { mirror: ['pull-from-mirror = "digest-only"'] } },
  { name: 'mirror-by-digest-only = true (ICSP, older)', extra: { registry: ['mirror-by-digest-only = true'] } },
];

for (const form of DIGEST_ONLY_FORMS) {
  e2e(`podman with a digest-only mirror, ${form.name}: a tag pull skips the mirror and goes to the registry, a digest pull uses the mirror`, async (t) => {
    const up = await upstream(t);
    const s = await startServer(t, { upstreams: { [HOST]: upstreamEntry(up.reg) }, defaultUpstream: null });
    const requests = watchRequests(s);
    const pm = await podman(t);
    await pm.setRegistriesConf(registryEntry(HOST, up.closed, `${s.hostPort}/${HOST}`, form.extra));

    // By tag: only the registry's own location (the closed port) is tried; regmirror sees nothing.
    const closedHost = new URL(up.closed).host;
    const byTag = await pm.tryPull(`${HOST}/${REPO}:1.0`);
    t.not(byTag.code, 0, 'the tag pull cannot succeed: the registry location is a closed port');
    t.true(byTag.stderr.includes(closedHost), `the tag pull went to the registry (${closedHost}): ${byTag.stderr.slice(-1500)}`);
    t.false(byTag.stderr.includes(s.hostPort), `the tag pull tried the mirror: ${byTag.stderr.slice(-1500)}`);
    t.deepEqual(requests(), [], 'regmirror received nothing for the tag pull');

    // By digest: the mirror serves it.
    const ref = `${HOST}/${REPO}@${V1.index.digest}`;
    await pm.pull(ref);
    t.is(await pm.digestOf(ref), V1.index.digest);
    const reqs = requests();
    t.true(reqs.some((r) => fromPodman(r) && r.method === 'GET' && r.url === `/v2/${HOST}/${REPO}/manifests/${V1.index.digest}` && r.status === 200), `no digest GET: ${summary(reqs)}`);
    assertServedPodman(t, reqs, `${HOST}/${REPO}`);
    t.false(reqs.some((r) => /\/manifests\/(?!sha256:)/.test(r.url)), `a digest-only mirror never sees a tag: ${summary(reqs)}`);
    await assertUpstreamSawOnlyMirror(t, up);
  });
}

e2e('podman pulls with the registries.conf written by `regmirror client-config registries.conf`', async (t) => {
  const up = await upstream(t);
  const serverConfig = {
    upstreams: { [UP]: upstreamEntry(up.reg), [HOST]: upstreamEntry(up.reg) },
    defaultUpstream: null,
    namespaces: [{ prefix: 'up5000', upstream: UP }],
  };
  const s = await startServer(t, serverConfig);
  const requests = watchRequests(s);
  const configFile = path.join(up.work, 'regmirror.yml');
  await fs.writeFile(configFile, JSON.stringify({ listen: '127.0.0.1:0', storage: path.join(up.work, 'unused'), ...serverConfig })); // JSON is YAML
  const { stdout } = await execFileP(process.execPath, ['dist/cli.js', 'client-config', 'registries.conf', '--config', configFile, '--mirror', s.url]);
  t.false(stdout.includes(up.reg.credentials!.password), 'no credentials in the generated file');
  // Used as written. Its registry locations are the made-up names: reachable only through
  // the mirror (podman tries mirrors first and stops at the first success).
  const conf = `unqualified-search-registries = []\n${stdout.replace(/^# ==> .* <==\n/m, '')}`;
  for (const [name, repoPath] of [
    [UP, `up5000/${REPO}`],
    [HOST, `${HOST}/${REPO}`],
  ] as const) {
    const pm = await podman(t); // a fresh store each: the second pull fetches everything again
    await pm.setRegistriesConf(conf);
    const ref = `${name}/${REPO}:1.0`;
    await pm.pull(ref);
    await assertPulled(t, pm, ref, `${name}/${REPO}`);
    t.true(requests().some((r) => fromPodman(r) && r.url === `/v2/${repoPath}/manifests/1.0` && r.status === 200), `${ref} not through ${s.hostPort}/${repoPath}: ${summary(requests())}`);
    assertServedPodman(t, requests(), repoPath);
  }
  await assertUpstreamSawOnlyMirror(t, up);
});

e2e('podman without credentials against Basic-only mirror auth (auth.token: null): empty Basic is anonymous, many pulls never get 429', async (t) => {
  const up = await upstream(t);
  const htpasswd = path.join(up.work, 'mirror-htpasswd');
  await writeHtpasswd(htpasswd, { alice: 'alice-real-pw' });
  const MAX_FAILURES = 2;
  const s = await startServer(t, {
    upstreams: { [HOST]: upstreamEntry(up.reg) },
    defaultUpstream: null,
    auth: {
      htpasswd,
      token: null,
      rules: [{ repositories: '**', pull: ['anonymous'], push: ['authenticated'], delete: ['authenticated'] }],
      // Far below the requests podman makes below: a counted empty login would show as 429.
      loginRateLimit: { maxFailures: MAX_FAILURES, window: '10m' },
    },
  });
  const requests = watchRequests(s);
  const pm = await podman(t);
  await pm.setRegistriesConf(registryEntry(HOST, up.closed, `${s.hostPort}/${HOST}`));

  const ref = `${HOST}/${REPO}:1.0`;
  const PULLS = 4; // bounded: each is a full pull (the image is removed in between)
  for (let i = 0; i < PULLS; i++) {
    await pm.pull(ref);
    t.is(await pm.digestOf(ref), V1.index.digest, `pull ${i + 1}`);
    await pm.run(['rmi', '--force', ref]);
  }
  const reqs = requests().filter(fromPodman);
  const basicRequests = reqs.filter((r) => r.auth === 'basic');
  t.true(reqs.some((r) => r.url === '/v2/' && r.status === 401), 'regmirror challenged podman (Basic)');
  t.true(basicRequests.length > MAX_FAILURES * PULLS, `podman answered the challenge with (empty) Basic credentials: ${summary(reqs)}`);
  t.true(basicRequests.some((r) => r.url.startsWith(`/v2/${HOST}/${REPO}/blobs/`) && r.status === 200), 'blobs served to empty Basic');
  t.deepEqual(reqs.filter((r) => r.status === 429), [], 'never rate limited');
  t.deepEqual(reqs.filter((r) => r.status !== 200 && !(r.url === '/v2/' && r.status === 401)), [], 'every other podman request got 200');
  t.false(s.logs.some((l) => l.includes('failed login')), 'no request counted as a failed login');
});
