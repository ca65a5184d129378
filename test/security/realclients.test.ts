/**
 * Real clients against regmirror with TLS (a test CA, a chained server certificate) and
 * client auth (htpasswd Basic + Docker token auth, per-repository rules):
 *  - skopeo (`--dest-cert-dir` / `--src-cert-dir` holding the CA, `--dest-creds`,
 *    `--src-creds`): pushes without or with wrong credentials fail with 401, pushes into
 *    a repository the user may not write fail with 403, allowed pushes succeed and pull
 *    back byte-identical; anonymous pulls work where the rules allow; without the CA the
 *    TLS handshake is refused;
 *  - containerd (`ctr images pull --hosts-dir`, hosts.toml with `ca = ...`): no
 *    credentials -> refused; a static `[host."...".header] Authorization = "Basic ..."`
 *    works; `ctr --user` (token flow: POST /token) works; token scopes are enforced per
 *    repository (a user without pull on team/** gets nothing);
 *  - skopeo without credentials against Basic-only auth (`auth.token: null`): it sends empty
 *    Basic credentials, which are anonymous (pulls work, never a failed login or 429).
 *
 * Skipped only when the tool is missing and CI !== 'true' (under CI a missing tool fails).
 * skopeo and containerd run with scrubbed environments and temp dirs (helpers/skopeo.ts,
 * helpers/containerd.ts); the system containerd and /etc are never used.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Agent } from 'undici';
import { basic, pushImageWith, req, writeHtpasswd } from '../helpers/authn.js';
import { createPki, type Pki, tlsAgent } from '../helpers/certs.js';
import { type Containerd, startContainerd } from '../helpers/containerd.js';
import { type TestServer, startServer, tempDir } from '../helpers/server.js';
import { skopeo } from '../helpers/skopeo.js';
import { CI, missingTools } from '../helpers/tools.js';
import { readOciLayoutBlob, readOciLayoutRef, writeOciLayout } from '../fixtures/images.js';
import { sampleImage } from '../integration/_support.js';

const USERS = { alice: 'alice-real-pw', bob: 'bob-real-pw' };
const ALICE = basic('alice', USERS.alice);

const skopeoTest = missingTools(['skopeo']).length === 0 || CI ? test : test.skip;
const containerdTest = missingTools(['containerd', 'ctr']).length === 0 || CI ? test : test.skip;

interface Setup {
  s: TestServer;
  pki: Pki;
  agent: Agent;
}

/**
 * TLS + auth server. Rules: team/** only for group team (alice); private/** pull and push
 * for any signed-in user; everything else: anonymous pull, authenticated push (the default).
 */
async function setup(t: ExecutionContext): Promise<Setup> {
  const pki = await createPki(t, 'real');
  const leaf = await pki.issue('registry');
  const dir = await tempDir(t, 'regmirror-real-');
  const htpasswd = path.join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, USERS);
  const s = await startServer(t, {
    tls: { cert: leaf.chain, key: leaf.key },
    auth: {
      htpasswd,
      token: { service: 'regmirror-test' },
      groups: { team: ['alice'] },
      rules: [
        { repositories: 'team/**', pull: ['group:team'], push: ['group:team'], delete: ['group:team'] },
        { repositories: 'private/**', pull: ['authenticated'], push: ['authenticated'], delete: [] },
        { repositories: '**', pull: ['anonymous'], push: ['authenticated'], delete: ['authenticated'] },
      ],
      loginRateLimit: { maxFailures: 1000 },
    },
  });
  const agent = await tlsAgent(pki.root.cert);
  t.teardown(() => agent.close());
  return { s, pki, agent };
}

skopeoTest('skopeo over TLS: push refused without/with wrong credentials (401) and outside the rules (403), allowed pushes round-trip', async (t) => {
  const { s, pki, agent } = await setup(t);
  const sk = await skopeo(t);
  const certDir = await tempDir(t, 'regmirror-certdir-');
  await fs.copyFile(pki.root.cert, path.join(certDir, 'ca.crt'));

  const img = sampleImage('skopeo-tls');
  const src = await tempDir(t, 'regmirror-layout-');
  await writeOciLayout(src, [{ tag: 'v1', root: img.manifest }], [...img.layers, img.config]);
  const dest = (repo: string) => `docker://${s.hostPort}/${repo}:v1`;
  const push = (repo: string, creds: string[], certs = certDir) =>
    sk.run(['copy', '--retry-times', '0', '--preserve-digests', '--dest-tls-verify=true', '--dest-cert-dir', certs, ...creds, `oci:${src}:v1`, dest(repo)]);

  // TLS is really verified: without the CA the handshake fails.
  await t.throwsAsync(push('open/app', ['--dest-creds', `alice:${USERS.alice}`], sk.certDir), { message: /x509|certificate/i });
  await t.throwsAsync(push('open/app', ['--dest-no-creds']), { message: /401|unauthorized|authentication required/i });
  await t.throwsAsync(push('open/app', ['--dest-creds', 'alice:wrong-password']), { message: /401|unauthorized|invalid username or password/i });
  const denied = await t.throwsAsync(push('team/app', ['--dest-creds', `bob:${USERS.bob}`]));
  t.log(`bob -> team/app: ${denied?.message.split('\n').find((l) => /denied|unauthorized|403/i.test(l)) ?? denied?.message.slice(-300)}`);
  t.regex(denied?.message ?? '', /403|denied/i);
  t.is((await req('GET', `${s.url}/v2/team/app/tags/list`, { headers: { authorization: ALICE }, dispatcher: agent })).status, 404, 'the refused pushes stored nothing');

  await push('team/app', ['--dest-creds', `alice:${USERS.alice}`]);
  await push('open/app', ['--dest-creds', `bob:${USERS.bob}`]);
  const viaApi = await req('GET', `${s.url}/v2/team/app/manifests/v1`, { headers: { authorization: ALICE, accept: img.manifest.mediaType }, dispatcher: agent });
  t.is(viaApi.status, 200);
  t.deepEqual(viaApi.body, img.manifest.bytes, 'pushed with identical digests');

  const inspect = (repo: string, creds: string[]) =>
    sk.run(['inspect', '--raw', '--retry-times', '0', '--tls-verify=true', '--cert-dir', certDir, ...creds, dest(repo)]);
  // Anonymous pull where the rules allow it, refused where they do not.
  t.is((await inspect('open/app', ['--no-creds'])).stdout, img.manifest.bytes.toString('utf8'));
  await t.throwsAsync(inspect('team/app', ['--no-creds']), { message: /401|unauthorized|authentication required/i });
  const bobInspect = await t.throwsAsync(inspect('team/app', ['--creds', `bob:${USERS.bob}`]));
  t.log(`bob inspect team/app: ${bobInspect?.message.split('\n').find((l) => /denied|unauthorized|403|401/i.test(l))}`);
  t.regex(bobInspect?.message ?? '', /403|denied/i);

  // A full pull back over TLS with credentials: every blob byte-identical.
  const out = await tempDir(t, 'regmirror-pulled-');
  await sk.run(['copy', '--retry-times', '0', '--preserve-digests', '--src-tls-verify=true', '--src-cert-dir', certDir, '--src-creds', `alice:${USERS.alice}`, dest('team/app'), `oci:${out}:v1`]);
  t.is((await readOciLayoutRef(out, 'v1'))?.digest, img.manifest.digest);
  for (const b of [...img.layers, img.config]) t.deepEqual(await readOciLayoutBlob(out, b.digest), b.bytes);

  // skopeo went through the Docker token flow (GET /token), not only Basic.
  t.true(s.logs.some((l) => l.includes('"url":"/token?')), 'token endpoint was used');
});

/** hosts.toml for the TLS mirror: `ca`, and optionally a static header. */
async function writeTlsHosts(hostsDir: string, hostPort: string, ca: string, headers: Record<string, string> = {}): Promise<void> {
  const url = `https://${hostPort}`;
  const lines = [`server = ${JSON.stringify(url)}`, '', `[host.${JSON.stringify(url)}]`, '  capabilities = ["pull", "resolve"]', `  ca = ${JSON.stringify(ca)}`];
  if (Object.keys(headers).length > 0) {
    lines.push(`  [host.${JSON.stringify(url)}.header]`);
    for (const [k, v] of Object.entries(headers)) lines.push(`    ${k} = ${JSON.stringify(v)}`);
  }
  const dir = path.join(hostsDir, hostPort);
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, 'hosts.toml'), `${lines.join('\n')}\n`);
}

async function ctrPull(c: Containerd, ref: string, hostsDir: string, namespace: string, extra: string[] = []) {
  return c.ctr(['images', 'pull', '--hosts-dir', hostsDir, '--snapshotter', 'native', ...extra, ref], { namespace, timeoutMs: 45_000 });
}

containerdTest('containerd over TLS: hosts.toml ca + static Basic header, ctr --user via the token flow, scopes per repository', async (t) => {
  const { s, pki, agent } = await setup(t);
  const c = await startContainerd(t);
  const priv = sampleImage('ctr-private');
  const team = sampleImage('ctr-team');
  t.is((await pushImageWith(s.url, 'private/app', priv, 'v1', { headers: { authorization: ALICE }, dispatcher: agent })).status, 201);
  t.is((await pushImageWith(s.url, 'team/app', team, 'v1', { headers: { authorization: ALICE }, dispatcher: agent })).status, 201);
  const ref = (repo: string) => `${s.hostPort}/${repo}:v1`;
  const fail = (r: { code: number | null; stderr: string }) => `exit ${r.code}: ${r.stderr.slice(-1500)}\n${c.output().slice(-1500)}`;

  // 1. CA only, no credentials: refused.
  const anonDir = await tempDir(t, 'regmirror-hosts-anon-');
  await writeTlsHosts(anonDir, s.hostPort, pki.root.cert);
  const anon = await ctrPull(c, ref('private/app'), anonDir, 'anon');
  t.not(anon.code, 0);
  t.regex(anon.stderr, /401|unauthorized|authorization/i);

  // 2. A static Basic header in hosts.toml.
  const hdrDir = await tempDir(t, 'regmirror-hosts-hdr-');
  await writeTlsHosts(hdrDir, s.hostPort, pki.root.cert, { Authorization: ALICE });
  const withHeader = await ctrPull(c, ref('private/app'), hdrDir, 'header');
  t.is(withHeader.code, 0, fail(withHeader));
  const imgs = await c.images('header');
  t.deepEqual(imgs.map((i) => [i.ref, i.digest]), [[ref('private/app'), priv.manifest.digest]]);

  // 3. ctr --user: containerd does the token dance (POST /token with the password grant).
  const userDir = await tempDir(t, 'regmirror-hosts-user-');
  await writeTlsHosts(userDir, s.hostPort, pki.root.cert);
  const mark = s.logs.length;
  const withUser = await ctrPull(c, ref('team/app'), userDir, 'user', ['--user', `alice:${USERS.alice}`]);
  t.is(withUser.code, 0, fail(withUser));
  t.deepEqual((await c.images('user')).map((i) => i.digest), [team.manifest.digest]);
  t.true(
    s.logs.slice(mark).some((l) => l.includes('"url":"/token"') && l.includes('"method":"POST"') && l.includes('"status":200')),
    'containerd got its token from POST /token',
  );

  // 4. Token scopes per repository: bob is signed in but has no pull on team/**.
  const bob = await ctrPull(c, ref('team/app'), userDir, 'bob', ['--user', `bob:${USERS.bob}`]);
  t.not(bob.code, 0);
  t.regex(bob.stderr, /401|403|unauthorized|denied|forbidden/i);
  // ...but may pull private/** (any signed-in user) with the same mechanism.
  const bobPrivate = await ctrPull(c, ref('private/app'), userDir, 'bob', ['--user', `bob:${USERS.bob}`]);
  t.is(bobPrivate.code, 0, fail(bobPrivate));
  t.deepEqual((await c.images('bob')).map((i) => i.digest), [priv.manifest.digest]);
});

skopeoTest('skopeo without credentials against Basic-only auth (auth.token: null): anonymous pulls work, empty Basic is never a failed login', async (t) => {
  // skopeo (like podman and CRI-O, containers/image) answers a Basic challenge with an empty
  // user and password when it has no credentials: `Authorization: Basic Og==`.
  const dir = await tempDir(t, 'regmirror-basic-only-');
  const htpasswd = path.join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, USERS);
  const s = await startServer(t, {
    auth: {
      htpasswd,
      token: null,
      rules: [
        { repositories: 'private/**', pull: ['authenticated'], push: ['authenticated'], delete: [] },
        { repositories: '**', pull: ['anonymous'], push: ['authenticated'], delete: ['authenticated'] },
      ],
      // Far below the number of requests skopeo makes below: a counted empty login would show as 429.
      loginRateLimit: { maxFailures: 2, window: '10m' },
    },
  });
  const img = sampleImage('skopeo-basic-only');
  t.is((await pushImageWith(s.url, 'open/app', img, 'v1', { headers: { authorization: ALICE } })).status, 201);
  t.is((await pushImageWith(s.url, 'private/app', img, 'v1', { headers: { authorization: ALICE } })).status, 201);
  t.is((await req('GET', `${s.url}/v2/`)).header('www-authenticate'), 'Basic realm="regmirror"', 'Basic-only challenge');

  const sk = await skopeo(t);
  const ref = (repo: string) => `docker://${s.hostPort}/${repo}:v1`;
  const plain = ['--tls-verify=false', '--cert-dir', sk.certDir, '--retry-times', '0'];
  // No credential flags at all (the scrubbed auth.json is empty), then explicitly --no-creds.
  for (const creds of [[], ['--no-creds']]) {
    const inspected = await sk.run(['inspect', '--raw', ...plain, ...creds, ref('open/app')]);
    t.deepEqual(inspected.stdoutBytes, img.manifest.bytes, `inspect ${creds.join(' ') || '(no flags)'}`);
  }
  for (const creds of [[], ['--src-no-creds']]) {
    const out = await tempDir(t, 'regmirror-basic-only-out-');
    await sk.run(['copy', '--preserve-digests', '--retry-times', '0', '--src-tls-verify=false', '--src-cert-dir', sk.certDir, ...creds, ref('open/app'), `oci:${out}:v1`]);
    t.is((await readOciLayoutRef(out, 'v1'))?.digest, img.manifest.digest, `copy ${creds.join(' ') || '(no flags)'}`);
    for (const b of [...img.layers, img.config]) t.deepEqual(await readOciLayoutBlob(out, b.digest), b.bytes);
  }

  // Where anonymous may not act: 401 (authentication required), not 429. The message holds
  // ports, temp paths and digests, so a bare /429/ could match by chance.
  const NOT_RATE_LIMITED = /\b429\b|too ?many ?requests|toomanyrequests/i;
  const privateErr = await t.throwsAsync(sk.run(['inspect', '--raw', ...plain, ref('private/app')]));
  t.regex(privateErr?.message ?? '', /401|unauthorized|authentication required/i);
  t.notRegex(privateErr?.message ?? '', NOT_RATE_LIMITED);
  const src = await tempDir(t, 'regmirror-basic-only-src-');
  await writeOciLayout(src, [{ tag: 'v1', root: img.manifest }], [...img.layers, img.config]);
  const pushErr = await t.throwsAsync(
    sk.run(['copy', '--retry-times', '0', '--preserve-digests', '--dest-tls-verify=false', '--dest-cert-dir', sk.certDir, `oci:${src}:v1`, ref('open/other')]),
  );
  t.regex(pushErr?.message ?? '', /401|unauthorized|authentication required/i);
  t.notRegex(pushErr?.message ?? '', NOT_RATE_LIMITED);

  t.false(s.logs.some((l) => l.includes('failed login')), 'no request counted as a failed login');
  t.is((await req('GET', `${s.url}/v2/`, { headers: { authorization: ALICE } })).status, 200, 'the address is not blocked');
  // With credentials skopeo still signs in (Basic with the real password).
  await sk.run(['inspect', '--raw', ...plain, '--creds', `alice:${USERS.alice}`, ref('private/app')]);
});
