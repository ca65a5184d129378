/**
 * The shipped container image, for real: the repository's Dockerfile built with podman
 * (test/helpers/podman.ts isolation), run with a fresh named volume and the shipped
 * config/docker.yml, driven by skopeo.
 *
 * No base image can be pulled here, so the test makes one (`FROM scratch` plus this
 * machine's node binary and the shared libraries `ldd` lists) and builds the Dockerfile's
 * `prebuilt` target on it (this checkout's dist/ and a production copy of node_modules,
 * whose better-sqlite3 was built for this node): the runtime stage, which users get too,
 * is what is tested; the source build stage needs apt and a compiler and is not.
 *
 * The container uses the host network (listening on a free 127.0.0.1 port via
 * REGMIRROR_LISTEN) so its docker.io upstream can be the in-process fake on 127.0.0.1,
 * with a Docker Hub-style token realm that requires the DOCKERHUB_USERNAME/DOCKERHUB_TOKEN
 * passed to the container. The config is config/docker.yml with one change: docker.io's
 * `endpoints` point at the fake. Checked: the storage directory belongs to the runtime
 * user (in the image, and in the fresh volume) and receives the data; the healthcheck
 * passes; anonymous pull through works; push works with htpasswd credentials and is
 * refused (401) without; `podman stop` ends it with SIGTERM (exit 0, no SIGKILL) within
 * the grace period; a restart on the same volume serves the pushed image.
 *
 * Skipped only when a tool is missing and CI !== 'true'; under CI a missing tool fails.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import YAML from 'yaml';
import { basic, getToken, parseChallenge, writeHtpasswd } from '../helpers/authn.js';
import { REPO_ROOT } from '../helpers/cli.js';
import { http } from '../helpers/http.js';
import { type Podman, podman } from '../helpers/podman.js';
import { tempDir } from '../helpers/server.js';
import { type Skopeo, pullArgs, pushArgs, skopeo } from '../helpers/skopeo.js';
import { CI, freePort, missingTools, requireTool, runOk, waitFor } from '../helpers/tools.js';
import { makeImage, makeLayer, randomBytes, readOciLayoutRef, writeOciLayout } from '../fixtures/images.js';
import { startFake } from '../integration/_pullthrough.js';
import { listTree } from '../integration/_support.js';

const MISSING = missingTools(['podman', 'unshare', 'skopeo', 'npm', 'ldd', 'cp', 'bash']);
const e2e = MISSING.length === 0 || CI ? test : test.skip;
if (MISSING.length > 0 && !CI) console.warn(`container image e2e skipped: missing ${MISSING.join(', ')}`);

const BASE = 'localhost/regmirror-test-base';
const IMAGE = 'localhost/regmirror:e2e';
/** Image builds copy ~70 MB per layer with the vfs driver: minutes on a loaded 2-core machine. */
const BUILD_TIMEOUT_MS = 10 * 60_000;
const READY_TIMEOUT_MS = 120_000;
/** `podman stop -t`: SIGTERM, then SIGKILL after this many seconds. */
const STOP_GRACE_S = 30;
/** The Dockerfile's runtime user. */
const UID = 1000;
const HUB = { username: 'hubuser', password: 'dckr_pat_e2e' };
const USER = { username: 'alice', password: 'alice-pw-e2e' };

/** A context with node, its shared libraries and a passwd, for `FROM scratch`. */
async function baseContext(dir: string): Promise<void> {
  const root = path.join(dir, 'rootfs');
  const ldd = await runOk(requireTool('ldd', 'libc-bin'), [process.execPath], { timeoutMs: 30_000 });
  const libs = [...ldd.stdout.matchAll(/(\/\S+)\s+\(0x/g)].map((m) => m[1]!);
  if (!libs.some((l) => l.includes('libc.so'))) throw new Error(`ldd ${process.execPath}: no libc in\n${ldd.stdout}`);
  for (const src of [process.execPath, ...libs]) {
    const dest = path.join(root, src === process.execPath ? '/usr/local/bin/node' : src);
    await fs.mkdir(path.dirname(dest), { recursive: true });
    await fs.copyFile(await fs.realpath(src), dest);
    await fs.chmod(dest, 0o755);
  }
  await fs.mkdir(path.join(root, 'etc'), { recursive: true });
  await fs.writeFile(path.join(root, 'etc/passwd'), `root:x:0:0:root:/root:/sbin/nologin\nnode:x:${UID}:${UID}::/home/node:/sbin/nologin\n`);
  await fs.writeFile(path.join(root, 'etc/group'), `root:x:0:\nnode:x:${UID}:\n`);
  await fs.mkdir(path.join(root, 'tmp'), { mode: 0o1777 });
  await fs.chmod(path.join(root, 'tmp'), 0o1777);
  await fs.writeFile(path.join(dir, 'Containerfile'), 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin:/usr/bin:/bin\nCMD ["node"]\n');
}

/** What the `prebuilt` target copies: the Dockerfile's inputs, dist/ and a production node_modules. */
async function appContext(dir: string): Promise<void> {
  for (const f of ['Dockerfile', 'package.json', 'package-lock.json', 'config', 'ops/container', 'dist']) {
    await fs.cp(path.join(REPO_ROOT, f), path.join(dir, f), { recursive: true });
  }
  // node_modules may be a symlink (worktrees): copy what it points at, then drop dev deps offline.
  const modules = await fs.realpath(path.join(REPO_ROOT, 'node_modules'));
  await runOk(requireTool('cp', 'coreutils'), ['-a', `${modules}/.`, path.join(dir, 'node_modules')], { timeoutMs: 120_000 });
  await runOk(requireTool('npm', 'npm'), ['prune', '--omit=dev', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: dir, timeoutMs: 120_000 });
}

/** ulimits at or below this machine's hard limits (podman's defaults are refused in the sandbox). */
async function ulimits(): Promise<string[]> {
  const r = await runOk(requireTool('bash', 'bash'), ['-c', 'ulimit -Hn; ulimit -Hu'], { timeoutMs: 10_000 });
  const [n, u] = r.stdout.trim().split('\n').map((v) => (v === 'unlimited' ? Infinity : Number(v)));
  const nofile = Math.min(n ?? 1024, 65536);
  const nproc = Math.min(u ?? 1024, 4096);
  return ['--ulimit', `nofile=${nofile}:${nofile}`, '--ulimit', `nproc=${nproc}:${nproc}`];
}

async function buildImage(t: ExecutionContext, pm: Podman): Promise<void> {
  const work = await tempDir(t, 'regmirror-image-');
  const [base, app] = [path.join(work, 'base'), path.join(work, 'app')];
  let started = Date.now();
  await Promise.all([baseContext(base), appContext(app)]);
  t.log(`build contexts: ${Date.now() - started} ms`);
  // --format docker keeps HEALTHCHECK (OCI images have none); --layers=false: one commit per stage.
  const flags = ['--layers=false', '--format', 'docker'];
  started = Date.now();
  await pm.build([...flags, '-t', BASE, '-f', path.join(base, 'Containerfile'), base]);
  t.log(`base image: ${Date.now() - started} ms`);
  started = Date.now();
  await pm.build([...flags, '--target', 'prebuilt', '--build-arg', `BASE=${BASE}`, '-t', IMAGE, app]);
  t.log(`regmirror image (Dockerfile target prebuilt): ${Date.now() - started} ms`);
}

async function containerState(pm: Podman, name: string): Promise<{ running: boolean; exitCode: number }> {
  const out = (await pm.run(['inspect', '--format', '{{.State.Running}} {{.State.ExitCode}}', name])).stdout.trim().split(' ');
  return { running: out[0] === 'true', exitCode: Number(out[1]) };
}

/** Until /healthz answers 200 from the host; a container that exited fails at once, with its logs. */
async function waitReady(pm: Podman, name: string, base: string): Promise<void> {
  const outcome = await waitFor(
    async () => {
      if (!(await containerState(pm, name)).running) return 'exited';
      const res = await http('GET', `${base}/healthz`).catch(() => undefined);
      return res?.status === 200 ? 'ready' : undefined;
    },
    READY_TIMEOUT_MS,
    `${name} to answer /healthz`,
    250,
  );
  if (outcome === 'exited') {
    const logs = await pm.tryRun(['logs', name]);
    throw new Error(`container ${name} exited:\n${logs.stdout.slice(-3000)}${logs.stderr.slice(-3000)}`);
  }
}

/** Where every regular file in the volume lives, with its owner. */
async function volumeFiles(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const rel of await listTree(dir)) {
    const st = await fs.lstat(path.join(dir, rel));
    if (st.isFile()) out.set(rel, st.uid);
  }
  return out;
}

async function copyFails(t: ExecutionContext, sk: Skopeo, args: string[]): Promise<string> {
  const err = await t.throwsAsync(sk.run(args));
  return err?.message ?? '';
}

e2e('the Dockerfile builds, starts on a fresh volume as its user, pulls through, pushes only with credentials, stops on SIGTERM', async (t) => {
  t.timeout(BUILD_TIMEOUT_MS + 5 * 60_000);
  const pm = await podman(t, { timeoutMs: BUILD_TIMEOUT_MS });
  const sk = await skopeo(t);
  await buildImage(t, pm);

  const [inspect] = JSON.parse((await pm.run(['image', 'inspect', IMAGE])).stdout) as Array<{
    Config: { User?: string; Volumes?: Record<string, unknown>; ExposedPorts?: Record<string, unknown> };
    Healthcheck?: { Test?: string[] };
  }>;
  t.is(inspect?.Config.User, `${UID}:${UID}`);
  t.deepEqual(inspect?.Healthcheck?.Test, ['CMD', 'node', '/app/healthcheck.mjs']);
  t.deepEqual(Object.keys(inspect?.Config.Volumes ?? {}), ['/var/lib/regmirror']);
  t.deepEqual(Object.keys(inspect?.Config.ExposedPorts ?? {}), ['5000/tcp']);
  // Docker initialises a fresh named volume from the image's directory, owner included
  // (podman chowns new volumes to the container user anyway, so the run below cannot show
  // this). vfs "mounts" are plain directories, readable after podman has exited.
  const rootfs = (await pm.run(['image', 'mount', IMAGE])).stdout.trim();
  const storageDir = await fs.stat(path.join(rootfs, 'var/lib/regmirror')).catch(() => undefined);
  t.is(storageDir?.uid, UID, "the image's storage directory exists and belongs to the runtime user");
  t.is((storageDir?.mode ?? 0) & 0o777, 0o750);
  t.is((await fs.stat(path.join(rootfs, 'app/dist/cli.js'))).uid, 0, 'application files stay root-owned');
  await pm.run(['image', 'unmount', IMAGE]);

  // The shipped config, unchanged, is valid with no secrets in the environment (anonymous
  // upstream, no users) and refuses half a Docker Hub login.
  const limits = await ulimits();
  const check = ['run', '--rm', '--network', 'none', ...limits, IMAGE, 'config', 'check', '--config', '/app/config/docker.yml'];
  t.regex((await pm.run(check)).stdout, /config ok/);
  const half = await pm.tryRun([...check.slice(0, 2), '-e', 'DOCKERHUB_USERNAME=someone', ...check.slice(2)]);
  t.not(half.code, 0);
  t.regex(half.stderr + half.stdout, /username and password go together/);

  // Upstream: a Docker Hub-like registry whose token realm wants the account's token.
  const fake = await startFake(t, { auth: 'bearer', token: { username: HUB.username, password: HUB.password } });
  const upImage = makeImage({ layers: [makeLayer([{ name: 'bin/app', content: randomBytes(300 * 1024, 'container-up'), mode: 0o755 }])] });
  fake.addImage('library/app', upImage, '1.0');

  const files = await tempDir(t, 'regmirror-image-run-');
  const shipped = YAML.parse(await fs.readFile(path.join(REPO_ROOT, 'config/docker.yml'), 'utf8')) as { upstreams: Record<string, Record<string, unknown>> };
  shipped.upstreams['docker.io']!.endpoints = [fake.url];
  await fs.writeFile(path.join(files, 'docker.yml'), YAML.stringify(shipped), { mode: 0o644 });
  await writeHtpasswd(path.join(files, 'htpasswd'), { [USER.username]: USER.password });
  await fs.chmod(path.join(files, 'htpasswd'), 0o644);

  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const name = `regmirror-e2e-${process.pid}`;
  const volume = `regmirror-e2e-data-${process.pid}`;
  await pm.run(['volume', 'create', volume]);
  t.teardown(async () => {
    await pm.tryRun(['rm', '--force', '--time', '0', name]);
  });
  let started = Date.now();
  await pm.run([
    'run', '--detach', '--name', name, '--network', 'host', ...limits,
    // No systemd here to run the healthcheck timer; the test runs the check itself.
    '--health-interval', 'disable',
    '--volume', `${volume}:/var/lib/regmirror`,
    '--volume', `${path.join(files, 'docker.yml')}:/app/config/docker.yml:ro`,
    '--volume', `${path.join(files, 'htpasswd')}:/run/secrets/htpasswd:ro`,
    '--env', 'REGMIRROR_HTPASSWD=/run/secrets/htpasswd',
    '--env', `REGMIRROR_LISTEN=127.0.0.1:${port}`,
    '--env', `DOCKERHUB_USERNAME=${HUB.username}`,
    '--env', `DOCKERHUB_TOKEN=${HUB.password}`,
    IMAGE,
  ]);
  await waitReady(pm, name, base);
  t.log(`start to ready: ${Date.now() - started} ms`);
  t.is((await pm.tryRun(['healthcheck', 'run', name])).code, 0, 'HEALTHCHECK passes');

  // Pull through, anonymously (a mirror): bytes unchanged, and the upstream login used the token.
  const pulled = path.join(files, 'pulled');
  await sk.run(pullArgs(sk, `docker://127.0.0.1:${port}/library/app:1.0`, `oci:${pulled}:1.0`));
  t.is((await readOciLayoutRef(pulled, '1.0'))?.digest, upImage.manifest.digest);
  const logins = fake.requests.filter((r) => r.server === 'token');
  t.true(logins.length > 0 && logins.every((r) => r.headers.authorization === basic(HUB.username, HUB.password)), 'the realm saw DOCKERHUB_USERNAME/TOKEN');

  // Push: refused without credentials (401 at the registry, no push in an anonymous token), allowed with.
  const own = makeImage({ layers: [makeLayer([{ name: 'own.txt', content: randomBytes(200 * 1024, 'container-own') }])] });
  const layout = path.join(files, 'own');
  await writeOciLayout(layout, [{ tag: '1.0', root: own.manifest }], [own.config, ...own.layers]);
  const dest = `docker://127.0.0.1:${port}/local/team/app:1.0`;
  t.regex(await copyFails(t, sk, pushArgs(sk, `oci:${layout}:1.0`, dest)), /unauthorized|401|denied/i);
  t.regex(await copyFails(t, sk, pushArgs(sk, `oci:${layout}:1.0`, dest, { username: USER.username, password: 'wrong' })), /unauthorized|401|denied/i);
  const upload = await http('POST', `${base}/v2/local/team/app/blobs/uploads/`);
  t.is(upload.status, 401);
  t.is(parseChallenge(upload.header('www-authenticate'))?.scheme, 'bearer');
  const anonToken = (await getToken(base, ['repository:local/team/app:pull,push'])).json<{ token: string }>().token;
  const denied = await http('POST', `${base}/v2/local/team/app/blobs/uploads/`, { headers: { authorization: `Bearer ${anonToken}` } });
  t.true(denied.status === 401 || denied.status === 403, `anonymous token push: ${denied.status}`);
  await sk.run(pushArgs(sk, `oci:${layout}:1.0`, dest, USER));

  // Everything landed in the volume, owned by the runtime user.
  const volDir = (await pm.run(['volume', 'inspect', '--format', '{{.Mountpoint}}', volume])).stdout.trim();
  const rootStat = await fs.stat(volDir);
  t.is(rootStat.uid, UID, 'the fresh volume belongs to the runtime user');
  const stored = await volumeFiles(volDir);
  const hexOf = (d: string) => d.slice('sha256:'.length);
  for (const blob of [upImage.layers[0]!, own.layers[0]!]) {
    const rel = [...stored.keys()].find((k) => k.startsWith('blobs/') && k.endsWith(hexOf(blob.digest)));
    t.truthy(rel, `blob ${blob.digest} in the volume`);
    if (rel) t.is(stored.get(rel), UID);
  }
  t.is(stored.get('regmirror.db'), UID);
  t.deepEqual([...stored.values()].filter((uid) => uid !== UID), [], 'no root-owned files in the volume');

  // podman stop: SIGTERM to node as PID 1, which drains and exits 0 well within the grace period.
  started = Date.now();
  await pm.run(['stop', '--time', String(STOP_GRACE_S), name]);
  const stopMs = Date.now() - started;
  t.log(`podman stop: ${stopMs} ms`);
  const stopped = await containerState(pm, name);
  t.false(stopped.running);
  t.is(stopped.exitCode, 0, 'exit 0: stopped by SIGTERM, not SIGKILLed after the grace period (137)');
  t.true(stopMs < STOP_GRACE_S * 1000, `stopped in ${stopMs} ms`);
  t.regex((await pm.run(['logs', name])).stdout, /"signal":"SIGTERM".*shutting down/);

  // The same volume after a restart: the pushed image is still there, readable anonymously.
  await pm.run(['start', name]);
  await waitReady(pm, name, base);
  const again = path.join(files, 'again');
  await sk.run(pullArgs(sk, `docker://127.0.0.1:${port}/local/team/app:1.0`, `oci:${again}:1.0`));
  t.is((await readOciLayoutRef(again, '1.0'))?.digest, own.manifest.digest);
});
