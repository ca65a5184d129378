/** Node configuration generated from the upstream table (src/ops/clientconfig.ts). */
import test from 'ava';
import { configFromObject } from '../../src/config/load.js';
import { ClientConfigError, clientConfig } from '../../src/ops/clientconfig.js';

const config = configFromObject({
  upstreams: {
    'docker.io': { endpoints: ['https://registry-1.docker.io'], credentials: { username: 'bob', password: 'hunter2-secret' } },
    'gcr.io': {},
    'myreg.local:5000': { endpoints: ['https://myreg.local:5000'] },
    'quay.io': {},
  },
  defaultUpstream: 'docker.io',
  namespaces: [
    { prefix: 'test-namespace', upstream: 'ns', push: true },
    { prefix: 'dockerhub', upstream: 'docker.io' },
  ],
});

test('containerd: one hosts.toml per upstream, the mirror as host, the registry as fallback server', (t) => {
  const files = clientConfig(config, 'containerd', { mirror: 'https://mirror.example:5000', ca: '/etc/ssl/mirror-ca.pem' });
  t.deepEqual(Object.keys(files).sort(), ['docker.io/hosts.toml', 'gcr.io/hosts.toml', 'myreg.local:5000/hosts.toml', 'quay.io/hosts.toml']);
  const hub = files['docker.io/hosts.toml']!;
  t.regex(hub, /^server = "https:\/\/registry-1\.docker\.io"$/m);
  t.regex(hub, /^\[host\."https:\/\/mirror\.example:5000"\]\n {2}capabilities = \["pull", "resolve"\]\n {2}ca = "\/etc\/ssl\/mirror-ca\.pem"$/m);
  t.notRegex(hub, /override_path/);
  t.regex(files['gcr.io/hosts.toml']!, /^server = "https:\/\/gcr\.io"$/m);
  for (const text of Object.values(files)) t.false(text.includes('hunter2') || text.includes('bob'), 'no credentials');
});

test('containerd with an Anthos-style namespace: /v2/<prefix> and override_path; the namespace must route by ns', (t) => {
  const files = clientConfig(config, 'containerd', { mirror: 'http://10.0.0.5:5000', namespace: 'test-namespace' });
  t.regex(files['gcr.io/hosts.toml']!, /^\[host\."http:\/\/10\.0\.0\.5:5000\/v2\/test-namespace"\]\n {2}capabilities = \["pull", "resolve"\]\n {2}override_path = true$/m);
  t.throws(() => clientConfig(config, 'containerd', { mirror: 'http://m:5000', namespace: 'dockerhub' }), { instanceOf: ClientConfigError, message: /maps to docker\.io only/ });
  t.throws(() => clientConfig(config, 'containerd', { mirror: 'http://m:5000', namespace: 'nope' }), { instanceOf: ClientConfigError, message: /no namespaces\[\] entry/ });
  t.throws(() => clientConfig(config, 'k3s', { mirror: 'http://m:5000', namespace: 'test-namespace' }), { instanceOf: ClientConfigError });
  t.throws(() => clientConfig(config, 'registries.conf', { mirror: 'http://m:5000', namespace: 'test-namespace' }), { instanceOf: ClientConfigError });
});

test('k3s/RKE2 registries.yaml: every upstream mirrored to the one endpoint, CA under configs', (t) => {
  const { 'registries.yaml': yaml } = clientConfig(config, 'k3s', { mirror: 'https://mirror:5000', ca: '/ca.pem' });
  t.is(
    yaml,
    [
      '# /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/registries.yaml)',
      'mirrors:',
      ...['docker.io', 'gcr.io', 'myreg.local:5000', 'quay.io'].flatMap((h) => [`  "${h}":`, '    endpoint:', '      - "https://mirror:5000"']),
      'configs:',
      '  "mirror:5000":',
      '    tls:',
      '      ca_file: "/ca.pem"',
      '    # If the mirror requires a login (auth.rules):',
      '    # auth:',
      '    #   username: "<user>"',
      '    #   password: "<password>"',
      '',
    ].join('\n'),
  );
});

test('registries.conf: host in the path, a namespace mapped to the upstream wins, hosts with a port need one', (t) => {
  const { 'registries.conf': conf } = clientConfig(config, 'registries.conf', { mirror: 'http://mirror:5000' });
  t.true(conf.includes('[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n[[registry.mirror]]\nlocation = "mirror:5000/dockerhub"\ninsecure = true'), conf);
  t.true(conf.includes('[[registry]]\nprefix = "gcr.io"\nlocation = "gcr.io"\n[[registry.mirror]]\nlocation = "mirror:5000/gcr.io"\ninsecure = true'), conf);
  t.false(conf.includes('prefix = "myreg.local:5000"'));
  t.regex(conf, /# myreg\.local:5000: a host with a port cannot be a path component/);
  const tls = clientConfig(config, 'registries.conf', { mirror: 'https://mirror:5000' })['registries.conf']!;
  t.false(tls.includes('insecure'));
});

test('the mirror must be a bare http(s) origin', (t) => {
  for (const mirror of ['mirror:5000', 'ftp://m', 'https://u:p@m:5000', 'https://m:5000/v2', 'https://m?x=1', 'not a url']) {
    t.throws(() => clientConfig(config, 'k3s', { mirror }), { instanceOf: ClientConfigError }, mirror);
  }
});

test('containerd-legacy: CRI registry.mirrors endpoint per upstream, /v2/<prefix> verbatim, tls.ca_file keyed by the mirror host, auth only as a placeholder', (t) => {
  const { 'regmirror-cri-registry.toml': conf } = clientConfig(config, 'containerd-legacy', {
    mirror: 'https://mirror.example:5000',
    namespace: 'test-namespace',
    ca: '/etc/containerd/mirror-ca.crt',
  });
  t.is(
    conf,
    [
      '# Merge into /etc/containerd/config.toml (containerd 1.x, version = 2) and restart containerd.',
      '# Legacy CRI form: read by the CRI plugin (kubelet, crictl) only, never by ctr. Remove',
      '# registry.config_path: with both, containerd does not load the CRI plugin at all.',
      '# containerd tries the mirror, then the registry itself, and sends ?ns=<registry> to the mirror.',
      '# The endpoint path /v2/<prefix> is used as written (an endpoint without a path gets /v2).',
      ...['docker.io', 'gcr.io', 'myreg.local:5000', 'quay.io'].flatMap((h) => [
        '',
        `[plugins."io.containerd.grpc.v1.cri".registry.mirrors."${h}"]`,
        '  endpoint = ["https://mirror.example:5000/v2/test-namespace"]',
      ]),
      '',
      '[plugins."io.containerd.grpc.v1.cri".registry.configs."mirror.example:5000".tls]',
      '  ca_file = "/etc/containerd/mirror-ca.crt"',
      '',
      "# If the mirror requires a login (auth.rules), its credentials for every node (a pod's",
      '# imagePullSecrets, when kubelet sends them, replace these for that pull):',
      '# [plugins."io.containerd.grpc.v1.cri".registry.configs."mirror.example:5000".auth]',
      '#   username = "<user>"',
      '#   password = "<password>"',
      '',
    ].join('\n'),
  );
  t.false(conf.includes('hunter2') || conf.includes('bob'), 'no credentials');

  // No namespace: the bare origin (containerd adds /v2); no CA: no tls table; plain http.
  const plain = clientConfig(config, 'containerd-legacy', { mirror: 'http://10.0.0.5:5000' })['regmirror-cri-registry.toml']!;
  t.regex(plain, /^\[plugins\."io\.containerd\.grpc\.v1\.cri"\.registry\.mirrors\."gcr\.io"\]\n {2}endpoint = \["http:\/\/10\.0\.0\.5:5000"\]$/m);
  t.notRegex(plain, /\.tls\]|\/v2|override_path/);
  t.throws(() => clientConfig(config, 'containerd-legacy', { mirror: 'http://m:5000', namespace: 'dockerhub' }), { instanceOf: ClientConfigError, message: /maps to docker\.io only/ });
});
