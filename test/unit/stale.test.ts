import test from 'ava';
import { chooseStaleVariant, clientReads, defaultPlatformChild, type TagVariant } from '../../src/registry/stale.js';
import type { Digest } from '../../src/registry/names.js';

const OCI_M = 'application/vnd.oci.image.manifest.v1+json';
const OCI_I = 'application/vnd.oci.image.index.v1+json';
const DOCKER_M = 'application/vnd.docker.distribution.manifest.v2+json';
const d = (c: string) => `sha256:${c.repeat(64)}` as Digest;
const v = (c: string, mediaType: string, checkedAt: number): TagVariant => ({ digest: d(c), mediaType, checkedAt });

test('clientReads: named types, */* or no Accept at all; an index is never forced on a client', (t) => {
  t.true(clientReads([], OCI_I));
  t.true(clientReads(['*/*'], OCI_I));
  t.true(clientReads([OCI_M, OCI_I], OCI_I));
  t.false(clientReads([OCI_M, DOCKER_M], OCI_I));
  t.false(clientReads([OCI_M], DOCKER_M), 'stricter than by-tag serving: a stale answer must be readable');
});

test('chooseStaleVariant: newest the client reads; an index wins a tie for index readers', (t) => {
  const variants = [v('a', OCI_M, 300), v('b', OCI_I, 200), v('c', DOCKER_M, 100)];
  t.is(chooseStaleVariant(variants, ['*/*'])?.digest, d('a'));
  t.is(chooseStaleVariant(variants, [OCI_I])?.digest, d('b'));
  t.is(chooseStaleVariant(variants, [DOCKER_M])?.digest, d('c'));
  t.is(chooseStaleVariant(variants, ['application/vnd.docker.distribution.manifest.list.v2+json']), undefined);
  t.is(chooseStaleVariant([v('a', OCI_M, 5), v('b', OCI_I, 5)], [OCI_M, OCI_I])?.digest, d('b'));
  t.is(chooseStaleVariant([], ['*/*']), undefined);
});

test('defaultPlatformChild: the linux/amd64 image manifest of an index, or null', (t) => {
  const index = (manifests: unknown) => Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_I, manifests }));
  const arm = { mediaType: OCI_M, digest: d('1'), size: 1, platform: { os: 'linux', architecture: 'arm64' } };
  const amd = { mediaType: OCI_M, digest: d('2'), size: 1, platform: { os: 'linux', architecture: 'amd64' } };
  t.deepEqual(defaultPlatformChild(index([arm, amd])), { digest: d('2'), mediaType: OCI_M });
  t.is(defaultPlatformChild(index([arm])), null);
  t.is(defaultPlatformChild(index([{ ...amd, mediaType: OCI_I }])), null, 'a nested index is no answer for a non-index client');
  t.is(defaultPlatformChild(index('nope')), null);
  t.is(defaultPlatformChild(Buffer.from('<html>')), null);
  t.deepEqual(defaultPlatformChild(index([null, 7, amd])), { digest: d('2'), mediaType: OCI_M }, 'junk entries are skipped');
});
