import test from 'ava';
import { parseChallenges } from '../../src/upstream/challenge.js';
import { parseContentRange, parseRangeHeader } from '../../src/registry/range.js';
import { acceptsMediaType, parseAccept, MT } from '../../src/registry/mediatypes.js';
import { parseDigest, parseReference, parseRepoName } from '../../src/registry/names.js';
import { parseApiPath } from '../../src/http/route.js';
import { RegistryError } from '../../src/registry/errors.js';
import { acceptKey } from '../../src/registry/pullthrough.js';

test('WWW-Authenticate: quoted commas, several challenges, any case', (t) => {
  const c = parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push", Basic realm="x"');
  t.is(c.length, 2);
  t.is(c[0]!.scheme, 'bearer');
  t.is(c[0]!.params.realm, 'https://auth.docker.io/token');
  t.is(c[0]!.params.scope, 'repository:a/b:pull,push');
  t.is(c[1]!.scheme, 'basic');
  const u = parseChallenges(['BEARER Realm=https://gcr.io/v2/token,Service=gcr.io']);
  t.is(u[0]!.scheme, 'bearer');
  t.is(u[0]!.params.realm, 'https://gcr.io/v2/token');
  t.is(u[0]!.params.service, 'gcr.io');
  t.deepEqual(parseChallenges(undefined), []);
});

const rangeCases: Array<[string | undefined, number, ReturnType<typeof parseRangeHeader>]> = [
  ['bytes=500-1499', 2048, [{ start: 500, end: 1499 }]],
  ['bytes=500-', 2048, [{ start: 500, end: 2047 }]],
  ['bytes=-500', 2048, [{ start: 1548, end: 2047 }]],
  ['bytes=2000-5000', 2048, [{ start: 2000, end: 2047 }]],
  ['bytes=500-0', 2048, 'unsatisfiable'],
  ['bytes=5000-10000', 2048, 'unsatisfiable'],
  ['bytes=0-9,20-29', 2048, [{ start: 0, end: 9 }, { start: 20, end: 29 }]],
  ['items=0-1', 2048, null],
  [undefined, 2048, null],
  ['bytes=-5000', 2048, [{ start: 0, end: 2047 }]],
];
for (const [h, size, want] of rangeCases) {
  test(`Range ${h} of ${size}`, (t) => t.deepEqual(parseRangeHeader(h, size), want));
}

test('upload Content-Range', (t) => {
  t.deepEqual(parseContentRange('0-21'), { start: 0, end: 21 });
  t.deepEqual(parseContentRange('bytes 22-41/*'), { start: 22, end: 41 });
  t.is(parseContentRange(undefined), null);
  t.is(parseContentRange('5-1'), 'invalid');
  t.is(parseContentRange('abc'), 'invalid');
});

test('Accept: repeated lines, q-values, wildcards', (t) => {
  t.deepEqual(parseAccept([MT.ociIndex, `${MT.ociManifest};q=0.9`]), [MT.ociIndex, MT.ociManifest]);
  t.deepEqual(parseAccept(`${MT.dockerManifest}, text/html;q=0`), [MT.dockerManifest]);
  t.true(acceptsMediaType([], MT.ociIndex));
  t.true(acceptsMediaType(['*/*'], MT.ociIndex));
  t.false(acceptsMediaType([MT.dockerManifest], MT.ociIndex));
  t.true(acceptsMediaType([MT.ociManifest], MT.dockerManifest));
  t.is(acceptKey([MT.ociIndex, MT.ociManifest]), acceptKey([MT.ociManifest, MT.ociIndex]));
  t.is(acceptKey(['*/*', MT.ociIndex]), '*');
});

test('names, digests and references are validated strictly', (t) => {
  t.is(parseRepoName('a/b.c/d-e/f__g') as string, 'a/b.c/d-e/f__g');
  for (const bad of ['Bad_Name', 'a//b', '/a', 'a/', '..', 'a/../b', 'a:5000/b', 'x'.repeat(256), '']) {
    const e = t.throws(() => parseRepoName(bad));
    t.is((e as RegistryError).code, 'NAME_INVALID', bad);
  }
  t.is((t.throws(() => parseDigest('sha256:totallywrong')) as RegistryError).code, 'DIGEST_INVALID');
  t.is((t.throws(() => parseDigest('md5:abcd')) as RegistryError).code, 'DIGEST_INVALID');
  t.is(parseReference(`sha512:${'a'.repeat(128)}`).kind, 'digest');
  t.is((t.throws(() => parseReference('t'.repeat(129))) as RegistryError).code, 'TAG_INVALID');
});

test('API paths are parsed from the right', (t) => {
  t.deepEqual(parseApiPath('/v2/'), { kind: 'base' });
  t.deepEqual(parseApiPath('/v2/a/blobs/b/manifests/latest'), { kind: 'manifest', name: 'a/blobs/b', reference: 'latest' });
  t.deepEqual(parseApiPath('/v2/a/b/blobs/uploads/'), { kind: 'uploadStart', name: 'a/b' });
  t.deepEqual(parseApiPath('/v2/a/blobs/uploads/123'), { kind: 'upload', name: 'a', id: '123' });
  t.deepEqual(parseApiPath('/v2/x/tags/list'), { kind: 'tags', name: 'x' });
  t.is(parseApiPath('/v2/a/%2e%2e/blobs/x').kind, 'invalid');
  t.is(parseApiPath('/v2/a/blobs').kind, 'unknown');
});
