import test from 'ava';
import { configFromObject } from '../../src/config/load.js';
import { Router } from '../../src/upstream/routing.js';

const config = configFromObject({
  storage: '/tmp/unused',
  upstreams: {
    'docker.io': {},
    'gcr.io': {},
    'quay.io': {},
    'myreg.io:5000': { endpoints: ['https://myreg.io:5000'] },
  },
  defaultUpstream: 'docker.io',
  namespaces: [
    { prefix: 'test-namespace', upstream: 'ns', push: true },
    { prefix: 'dockerhub', upstream: 'docker.io' },
    { prefix: 'x/y/z/oss', upstream: 'gcr.io' },
    { prefix: 'airgap', upstream: 'local' },
  ],
  rewrites: [{ upstream: 'docker.io', pattern: '^mirrorproject/rancher-images/(.*)', replace: 'rancher/$1' }],
});
const router = new Router(config);

const cases: Array<[string, string | undefined, string, string | null, string | null]> = [
  // path, ns, rule, upstream, remote name
  ['library/alpine', 'docker.io', 'ns', 'docker.io', 'library/alpine'],
  ['alpine', 'docker.io', 'ns', 'docker.io', 'library/alpine'],
  ['team/app', 'myreg.io%3A5000'.replace('%3A', ':'), 'ns', 'myreg.io:5000', 'team/app'],
  ['team/app', 'MYREG.IO:5000', 'ns', 'myreg.io:5000', 'team/app'],
  ['google-containers/pause', 'gcr.io', 'ns', 'gcr.io', 'google-containers/pause'],
  ['test-namespace/library/alpine', 'docker.io', 'namespace', 'docker.io', 'library/alpine'],
  ['test-namespace/pause', 'gcr.io', 'namespace', 'gcr.io', 'pause'],
  ['test-namespace/gcr.io/proj/img', undefined, 'namespace', 'gcr.io', 'proj/img'],
  ['test-namespace/library/busybox', undefined, 'namespace', 'docker.io', 'library/busybox'],
  ['dockerhub/library/alpine', undefined, 'namespace', 'docker.io', 'library/alpine'],
  ['dockerhub/library/alpine', 'quay.io', 'namespace', 'docker.io', 'library/alpine'],
  ['x/y/z/oss/kubernetes/pause', undefined, 'namespace', 'gcr.io', 'kubernetes/pause'],
  ['docker.io/library/alpine', undefined, 'host-in-path', 'docker.io', 'library/alpine'],
  ['index.docker.io/library/alpine', undefined, 'host-in-path', 'docker.io', 'library/alpine'],
  ['quay.io/coreos/etcd', undefined, 'host-in-path', 'quay.io', 'coreos/etcd'],
  ['mirrorproject/rancher-images/mirrored-pause', undefined, 'rewrite', 'docker.io', 'rancher/mirrored-pause'],
  ['mirrorproject/rancher-images/mirrored-pause', 'docker.io', 'ns', 'docker.io', 'rancher/mirrored-pause'],
  ['library/alpine', undefined, 'default', 'docker.io', 'library/alpine'],
  ['unknown.host/x/y', undefined, 'default', 'docker.io', 'unknown.host/x/y'],
  ['airgap/team/app', 'docker.io', 'local', null, null],
];

for (const [path, ns, rule, upstream, remote] of cases) {
  test(`resolve ${path}${ns ? `?ns=${ns}` : ''}`, (t) => {
    const r = router.resolve(path, ns);
    t.is(r.rule as string, rule);
    t.is(r.upstream?.name ?? null, upstream);
    t.is(r.remoteName, remote);
    t.is(r.error, null);
  });
}

test('ns naming an unconfigured host is an error and picks no upstream', (t) => {
  const r = router.resolve('library/alpine', 'evil.example.com');
  t.is(r.upstream, null);
  t.regex(r.error ?? '', /not configured/);
});

test('OCI-Namespace is echoed only when ns was used', (t) => {
  t.is(router.resolve('library/alpine', 'docker.io').ns, 'docker.io');
  t.is(router.resolve('library/alpine').ns, null);
});

test('without defaultUpstream unmatched paths are local', (t) => {
  const local = new Router(configFromObject({ storage: '/tmp/x', upstreams: { 'gcr.io': {} } }));
  const r = local.resolve('team/app');
  t.is(r.rule, 'local');
  t.is(r.upstream, null);
  t.is(local.resolve('gcr.io/a/b').upstream?.name, 'gcr.io');
});
