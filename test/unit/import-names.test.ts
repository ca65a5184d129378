/** Where an imported image goes: the archive's name annotations against namespace=/repository=. */
import test from 'ava';
import { splitImageName, targetOf } from '../../src/registry/import/oci.js';
import type { RepoName } from '../../src/registry/names.js';

const REF = 'org.opencontainers.image.ref.name';
const CTD = 'io.containerd.image.name';
const ns = { namespace: 'test-namespace' as RepoName };
const repo = { repository: 'apps/one' as RepoName };

test('splitImageName drops the registry host (dot, port or localhost) and splits the tag', (t) => {
  t.deepEqual(splitImageName('gcr.io/proj/app:1.0'), { path: 'proj/app', tag: '1.0' });
  t.deepEqual(splitImageName('upstream.test:5000/library/busybox:1.0'), { path: 'library/busybox', tag: '1.0' });
  t.deepEqual(splitImageName('localhost/app'), { path: 'app', tag: undefined });
  t.deepEqual(splitImageName('library/alpine:3.19'), { path: 'library/alpine', tag: '3.19' });
  t.deepEqual(splitImageName('alpine@sha256:' + 'a'.repeat(64)), { path: 'alpine', tag: undefined });
  t.deepEqual(splitImageName('registry:5000/x'), { path: 'x', tag: undefined });
});

test('targetOf: containerd name wins for the path, ref.name gives the tag; namespace re-homes', (t) => {
  t.deepEqual(targetOf({ [CTD]: 'docker.io/library/alpine:3.19', [REF]: '3.19' }, ns, 0), { repo: 'test-namespace/library/alpine', tag: '3.19' });
  t.deepEqual(targetOf({ [REF]: 'gcr.io/proj/app:2' }, ns, 0), { repo: 'test-namespace/proj/app', tag: '2' });
  t.deepEqual(targetOf({ [REF]: '3.19' }, repo, 0), { repo: 'apps/one', tag: '3.19' });
  t.deepEqual(targetOf({ [REF]: 'gcr.io/proj/app:2' }, repo, 0), { repo: 'apps/one', tag: '2' });
  t.deepEqual(targetOf(undefined, repo, 0), { repo: 'apps/one', tag: null });
});

test('targetOf refuses what cannot be named', (t) => {
  t.throws(() => targetOf({ [REF]: '3.19' }, ns, 4), { message: /entry 4 has no image name.*repository=/ });
  t.throws(() => targetOf(undefined, ns, 0), { message: /no image name/ });
  t.throws(() => targetOf({ [CTD]: 'docker.io/Library/UPPER:1' }, ns, 0), { message: /invalid image/ });
  t.throws(() => targetOf({ [CTD]: 'docker.io/library/x:bad tag!' }, ns, 0), { message: /invalid image/ });
});
