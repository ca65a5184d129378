/**
 * Real clients with the upstream failing (issues 8 and 9): Debian's docker-registry as the
 * upstream, regmirror in-process, containerd (`ctr images pull --hosts-dir`) and skopeo.
 *
 *  - A tag that only skopeo pulled (its Accept set: the four manifest types, no `*\/*`)
 *    is served stale to containerd (`*\/*`) once the upstream is dead.
 *  - `skopeo copy --all` into `test-namespace/...` (namespace {upstream: ns, push: true})
 *    completes in seconds with the upstream killed, hung (SIGSTOP) or answering 401, and
 *    containerd then pulls it Anthos-style (hosts.toml `/v2/test-namespace` +
 *    override_path, `?ns=`) with the upstream still failing; digests equal the source's.
 */
import type { ExecutionContext } from 'ava';
import path from 'node:path';
import { writeHostsToml } from '../helpers/containerd.js';
import { startServer } from '../helpers/server.js';
import { pullArgs, pushArgs } from '../helpers/skopeo.js';
import { writeOciLayout } from '../fixtures/images.js';
import { AMD64, REPO, UP, V1, V1_BLOBS, assertContent, assertImage, e2e, setup, upstreamEntry, watchRequests } from './_registry.js';

e2e('a tag pulled only by skopeo is served to containerd once the upstream is dead (stale across Accept sets)', async (t) => {
  const env = await setup(t);
  // ttl 0: every tag request asks the upstream, so the outage path is what answers.
  const s = await startServer(t, { upstreams: { [UP]: upstreamEntry(env.reg, { tags: { ttl: '0s' } }) }, defaultUpstream: UP });
  await env.sk.run(pullArgs(env.sk, `docker://${s.hostPort}/${REPO}:1.0`, `oci:${path.join(env.work, 'primed')}:1.0`));
  await env.reg.kill();

  await writeHostsToml(env.hostsDir, UP, { server: env.closed, hosts: [{ url: s.url }] });
  const ref = `${UP}/${REPO}:1.0`;
  await env.ctd.pull(ref, { namespace: 'stale', hostsDir: env.hostsDir, platform: 'linux/amd64' });
  await assertImage(t, env.ctd, 'stale', ref, V1.index.digest);
  await assertContent(t, env.ctd, 'stale', [V1.index, AMD64.manifest, AMD64.config, ...AMD64.layers]);
  t.true(s.logs.some((l) => l.includes('serving stale tag')), 'answered from the stale copy skopeo left');
});

type Fault = 'killed' | 'hung' | '401';

async function pushWhileUpstreamFails(t: ExecutionContext, fault: Fault): Promise<void> {
  const env = await setup(t);
  // 401: the mirror has no credentials for the Basic-auth upstream.
  const entry = fault === '401' ? { endpoints: [env.reg.url], tags: { revalidateTimeout: '2s' } } : upstreamEntry(env.reg, { tags: { revalidateTimeout: '2s' } });
  const s = await startServer(t, {
    upstreams: { [UP]: entry },
    defaultUpstream: UP,
    namespaces: [{ prefix: 'test-namespace', upstream: 'ns', push: true }],
  });
  const requests = watchRequests(s);
  if (fault === 'killed') await env.reg.kill();
  if (fault === 'hung') {
    process.kill(env.reg.pid, 'SIGSTOP');
    t.teardown(() => void process.kill(env.reg.pid, 'SIGCONT'));
  }

  const layout = path.join(env.work, 'layout');
  await writeOciLayout(layout, [{ tag: '1.0', root: V1.index }], V1_BLOBS);
  const started = Date.now();
  await env.sk.run(pushArgs(env.sk, `oci:${layout}:1.0`, `docker://${s.hostPort}/test-namespace/${REPO}:1.0`));
  const pushMs = Date.now() - started;
  t.log(`skopeo copy --all with the upstream ${fault}: ${pushMs} ms`);
  t.true(pushMs < 45_000, `push took ${pushMs} ms`);
  const failed = requests().filter((r) => r.status >= 500);
  t.deepEqual(failed, [], 'no 5xx during the push');

  await writeHostsToml(env.hostsDir, UP, { server: env.closed, hosts: [{ url: `${s.url}/v2/test-namespace`, overridePath: true }] });
  const ref = `${UP}/${REPO}:1.0`;
  await env.ctd.pull(ref, { namespace: 'pulled', hostsDir: env.hostsDir, allPlatforms: true });
  await assertImage(t, env.ctd, 'pulled', ref, V1.index.digest);
  await assertContent(t, env.ctd, 'pulled', V1_BLOBS);
  if (fault === 'hung') process.kill(env.reg.pid, 'SIGCONT');
}

for (const fault of ['killed', 'hung', '401'] as const) {
  e2e(`skopeo copy --all into test-namespace with the upstream ${fault}, then containerd pulls it (override_path, ?ns=)`, (t) => pushWhileUpstreamFails(t, fault));
}
