/**
 * OpenShift mirror sets, Anthos registryMirrors and k3s rewrites/configs generated from the
 * upstream table (src/ops/clientconfig/*.ts): goldens, plus the CRD's own shapes and
 * patterns (openshift/api config/v1 types_image_{digest,tag}_mirror_set.go) and a round trip
 * of every generated k3s rewrite through the mirror's router.
 */
import test from 'ava';
import YAML from 'yaml';
import { configFromObject } from '../../src/config/load.js';
import { ClientConfigError, clientConfig } from '../../src/ops/clientconfig.js';
import { Router } from '../../src/upstream/routing.js';

const config = configFromObject({
  upstreams: {
    'docker.io': { endpoints: ['https://registry-1.docker.io'], credentials: { username: 'bob', password: 'hunter2-secret' } },
    'mcr.microsoft.com': {},
    'myreg.local:5000': { endpoints: ['https://myreg.local:5000'] },
    'quay.io': {},
  },
  defaultUpstream: 'docker.io',
  namespaces: [
    { prefix: 'test-namespace', upstream: 'ns' },
    { prefix: 'x/y/z', upstream: 'mcr.microsoft.com' },
  ],
  rewrites: [
    { upstream: 'docker.io', pattern: '^mirrorproject/rancher-images/(.*)', replace: 'rancher/$1' },
    { upstream: 'quay.io', pattern: '^q\\.mirror/(.*)$', replace: 'prod/$1' },
    { upstream: 'quay.io', pattern: '^(foo|bar)/(.*)', replace: 'baz/$2' },
  ],
});

// The CRD's validation (openshift/api config/v1, kubebuilder markers on Source and ImageMirror).
const SOURCE_RE =
  /^\*(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))+$|^((?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))+)?(?::[0-9]+)?)(?:(?:\/[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?)+)?$/;
const MIRROR_RE =
  /^((?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))+)?(?::[0-9]+)?)(?:(?:\/[a-z0-9]+(?:(?:(?:[._]|__|[-]*)[a-z0-9]+)+)?)+)?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** Problems with `doc` as an ImageDigestMirrorSet/ImageTagMirrorSet per the CRD schema; [] when valid. */
function crdProblems(doc: unknown, kind: string, list: string): string[] {
  const p: string[] = [];
  const o = doc as Record<string, unknown>;
  if (typeof o !== 'object' || o === null) return ['not an object'];
  if (o.apiVersion !== 'config.openshift.io/v1') p.push(`apiVersion ${String(o.apiVersion)}`);
  if (o.kind !== kind) p.push(`kind ${String(o.kind)}`);
  const meta = o.metadata as Record<string, unknown> | undefined;
  if (typeof meta?.name !== 'string' || !DNS_SUBDOMAIN.test(meta.name) || meta.name.length > 253) p.push('metadata.name');
  if ('namespace' in (meta ?? {})) p.push('cluster-scoped: no metadata.namespace');
  const spec = o.spec as Record<string, unknown> | undefined;
  if (typeof spec !== 'object' || spec === null) return [...p, 'spec is required'];
  for (const k of Object.keys(spec)) if (k !== list) p.push(`unknown spec.${k}`);
  const entries = spec[list];
  if (!Array.isArray(entries)) return [...p, `spec.${list} must be an array`];
  entries.forEach((e: Record<string, unknown>, i) => {
    const at = `spec.${list}[${i}]`;
    for (const k of Object.keys(e)) if (!['source', 'mirrors', 'mirrorSourcePolicy'].includes(k)) p.push(`${at}: unknown ${k}`);
    if (typeof e.source !== 'string' || !SOURCE_RE.test(e.source)) p.push(`${at}.source ${JSON.stringify(e.source)}`);
    if (e.mirrors !== undefined) {
      if (!Array.isArray(e.mirrors)) p.push(`${at}.mirrors must be an array`);
      else {
        if (new Set(e.mirrors).size !== e.mirrors.length) p.push(`${at}.mirrors: listType=set, duplicates`);
        for (const m of e.mirrors) if (typeof m !== 'string' || !MIRROR_RE.test(m)) p.push(`${at}.mirrors ${JSON.stringify(m)}`);
      }
    }
    if (e.mirrorSourcePolicy !== undefined) {
      if (!['NeverContactSource', 'AllowContactingSource'].includes(e.mirrorSourcePolicy as string)) p.push(`${at}.mirrorSourcePolicy`);
      if (!Array.isArray(e.mirrors) || e.mirrors.length === 0) p.push(`${at}.mirrorSourcePolicy needs mirrors`);
    }
  });
  return p;
}

test('the CRD check itself rejects what the API server would', (t) => {
  const ok = { apiVersion: 'config.openshift.io/v1', kind: 'ImageDigestMirrorSet', metadata: { name: 'a' }, spec: { imageDigestMirrors: [{ source: 'quay.io/acme', mirrors: ['m.corp:5000/quay/acme'], mirrorSourcePolicy: 'NeverContactSource' }] } };
  t.deepEqual(crdProblems(ok, 'ImageDigestMirrorSet', 'imageDigestMirrors'), []);
  const bad = (entry: object) => crdProblems({ ...ok, spec: { imageDigestMirrors: [entry] } }, 'ImageDigestMirrorSet', 'imageDigestMirrors');
  t.not(bad({ source: 'quay.io', mirrors: ['m:5000/myreg.local:5000'] }).length, 0, 'host:port as a path component');
  t.not(bad({ source: 'quay.io', mirrors: ['http://m:5000/quay'] }).length, 0, 'scheme');
  t.not(bad({ source: 'quay.io/Acme', mirrors: ['m:5000/q'] }).length, 0, 'upper case path');
  t.not(bad({ source: '*.quay.io/x' }).length, 0, 'wildcard with a path');
  t.not(bad({ source: 'quay.io', mirrors: ['m/a', 'm/a'] }).length, 0, 'duplicate mirrors');
  t.not(bad({ source: 'quay.io', mirrors: ['m/a'], mirrorSourcePolicy: 'Never' }).length, 0, 'enum');
  t.not(bad({ mirrors: ['m/a'] }).length, 0, 'source required');
  t.not(bad({ source: 'quay.io', mirror: ['m/a'] }).length, 0, 'unknown field');
});

for (const [kind, crdKind, list, file] of [
  ['idms', 'ImageDigestMirrorSet', 'imageDigestMirrors', 'imagedigestmirrorset.yaml'],
  ['itms', 'ImageTagMirrorSet', 'imageTagMirrors', 'imagetagmirrorset.yaml'],
] as const) {
  test(`${kind}: one ${list} entry per upstream, the mirror path naming it, valid against the CRD`, (t) => {
    const files = clientConfig(config, kind, { mirror: 'https://mirror.example:5000' });
    t.deepEqual(Object.keys(files), [file]);
    const text = files[file]!;
    t.is(
      text,
      [
        `# oc apply -f ${file}: the Machine Config Operator writes registries.conf on every node and`,
        `# CRI-O then pulls images referenced by ${kind === 'idms' ? 'digest' : 'tag'} through the mirror (the registry itself stays the fallback).`,
        'apiVersion: config.openshift.io/v1',
        `kind: ${crdKind}`,
        'metadata:',
        '  name: regmirror',
        'spec:',
        `  ${list}:`,
        '    - source: "docker.io"',
        '      mirrors:',
        '        - "mirror.example:5000/docker.io"',
        '    - source: "mcr.microsoft.com"',
        '      mirrors:',
        '        - "mirror.example:5000/x/y/z"',
        '    - source: "quay.io"',
        '      mirrors:',
        '        - "mirror.example:5000/quay.io"',
        '  # myreg.local:5000: a host with a port cannot be a path component; add namespaces: [{prefix: <name>, upstream: "myreg.local:5000"}] to mirror it',
        '',
      ].join('\n'),
    );
    t.deepEqual(crdProblems(YAML.parse(text), crdKind, list), []);
    t.false(text.includes('hunter2') || text.includes('bob'), 'no credentials');
    const plain = clientConfig(config, kind, { mirror: 'http://10.0.0.5:5000' })[file]!;
    t.regex(plain, /^# Plain http: also list 10\.0\.0\.5:5000 in image\.config\.openshift\.io\/cluster spec\.registrySources\.insecureRegistries\.$/m);
    t.deepEqual(crdProblems(YAML.parse(plain), crdKind, list), []);
  });
}

test('idms: the mirror path routes back to the source upstream (what CRI-O asks for)', (t) => {
  const router = new Router(config);
  const doc = YAML.parse(clientConfig(config, 'idms', { mirror: 'http://m:5000' })['imagedigestmirrorset.yaml']!);
  for (const e of doc.spec.imageDigestMirrors as Array<{ source: string; mirrors: string[] }>) {
    // CRI-O replaces the source prefix by the mirror: m:5000/<path>/<repo>, no ?ns=.
    const path = `${e.mirrors[0]!.slice('m:5000/'.length)}/oss/kubernetes/pause`;
    const r = router.resolve(path, undefined);
    t.is(r.upstream?.name, e.source, path);
    t.is(r.remoteName, 'oss/kubernetes/pause', path);
  }
});

test('anthos: one registryMirrors entry whose hosts are every upstream; /v2/<ns> only for an {upstream: ns} namespace', (t) => {
  const { 'registry-mirrors.yaml': yaml } = clientConfig(config, 'anthos', { mirror: 'https://172.18.0.20:5000', namespace: 'test-namespace', ca: '/root/ca.crt' });
  t.is(
    yaml,
    [
      '# Paste into the bare-metal cluster config file (bmctl create/update cluster), top level.',
      'registryMirrors:',
      '  - endpoint: "https://172.18.0.20:5000/v2/test-namespace"',
      '    caCertPath: "/root/ca.crt"',
      '    # If the mirror requires a login (auth.rules): a Docker config.json with its credentials.',
      '    # pullCredentialConfigPath: "/root/.docker/config.json"',
      '    hosts:',
      '      - "docker.io"',
      '      - "mcr.microsoft.com"',
      '      - "myreg.local:5000"',
      '      - "quay.io"',
      '',
    ].join('\n'),
  );
  const doc = YAML.parse(yaml) as { registryMirrors: Array<Record<string, unknown>> };
  t.deepEqual(Object.keys(doc.registryMirrors[0]!).sort(), ['caCertPath', 'endpoint', 'hosts']);
  const plain = YAML.parse(clientConfig(config, 'anthos', { mirror: 'http://10.0.0.5:5000' })['registry-mirrors.yaml']!);
  t.deepEqual(plain, { registryMirrors: [{ endpoint: 'http://10.0.0.5:5000', hosts: ['docker.io', 'mcr.microsoft.com', 'myreg.local:5000', 'quay.io'] }] });
  t.throws(() => clientConfig(config, 'anthos', { mirror: 'http://m:5000', namespace: 'x/y/z' }), { instanceOf: ClientConfigError, message: /maps to mcr\.microsoft\.com only/ });
  t.throws(() => clientConfig(config, 'idms', { mirror: 'http://m:5000', namespace: 'test-namespace' }), { instanceOf: ClientConfigError });
});

test('k3s: rewrite entries invert rewrites[] where exact, configs carry tls.ca_file and only an auth placeholder', (t) => {
  const { 'registries.yaml': yaml } = clientConfig(config, 'k3s', { mirror: 'https://mirror:5000', ca: '/etc/rancher/mirror-ca.crt' });
  t.is(
    yaml,
    [
      '# /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/registries.yaml)',
      'mirrors:',
      '  "docker.io":',
      '    endpoint:',
      '      - "https://mirror:5000"',
      '    rewrite:',
      '      "^rancher/(.*)": "mirrorproject/rancher-images/$1"',
      '  "mcr.microsoft.com":',
      '    endpoint:',
      '      - "https://mirror:5000"',
      '  "myreg.local:5000":',
      '    endpoint:',
      '      - "https://mirror:5000"',
      '  "quay.io":',
      '    endpoint:',
      '      - "https://mirror:5000"',
      '    rewrite:',
      '      "^prod/(.*)": "q.mirror/$1"',
      'configs:',
      '  "mirror:5000":',
      '    tls:',
      '      ca_file: "/etc/rancher/mirror-ca.crt"',
      '    # If the mirror requires a login (auth.rules):',
      '    # auth:',
      '    #   username: "<user>"',
      '    #   password: "<password>"',
      '# rewrites[2] (^(foo|bar)\\/(.*) -> baz/$2) has no exact k3s inverse; quay.io images are pulled by their own name.',
      '',
    ].join('\n'),
  );
  t.false(yaml.includes('hunter2') || yaml.includes('bob'), 'no credentials');
  const doc = YAML.parse(yaml);
  t.deepEqual(doc.configs, { 'mirror:5000': { tls: { ca_file: '/etc/rancher/mirror-ca.crt' } } });

  // Round trip: k3s rewrites the image's repository name, sends ?ns=<registry>; the mirror's rule maps it back.
  const router = new Router(config);
  for (const [registry, image, expected] of [
    ['docker.io', 'rancher/mirrored-pause', 'rancher/mirrored-pause'],
    ['quay.io', 'prod/app', 'prod/app'],
  ] as const) {
    const rules = Object.entries(doc.mirrors[registry].rewrite as Record<string, string>);
    const [pattern, repl] = rules[0]!;
    const sent = image.replace(new RegExp(pattern), repl.replace(/\$(\d)/g, '$$$1'));
    t.not(sent, image, 'the rewrite applies');
    const r = router.resolve(sent, registry);
    t.is(r.upstream?.name, registry);
    t.is(r.remoteName, expected, `${registry}: ${sent}`);
  }

  // No CA: the whole configs block is a commented placeholder.
  const plain = clientConfig(config, 'k3s', { mirror: 'http://m:5000' })['registries.yaml']!;
  t.is(YAML.parse(plain).configs, undefined);
  t.true(plain.includes('# configs:\n#   "m:5000":\n#     auth:\n#       username: "<user>"\n#       password: "<password>"\n'), plain);
});
