/** Pure helpers of the upstream referrers lookup: Link parsing, next-page confinement, merging. */
import test from 'ava';
import { mergeReferrers, parseReferrersPage } from '../../src/registry/referrers.js';
import { nextLink, nextPagePath } from '../../src/upstream/pagination.js';
import type { Digest } from '../../src/registry/names.js';

const D1 = `sha256:${'1'.repeat(64)}` as Digest;
const D2 = `sha256:${'2'.repeat(64)}` as Digest;
const PATH = `/v2/library/app/referrers/${D1}`;

test('nextLink finds rel="next" among several links and parameter spellings', (t) => {
  t.is(nextLink('</a?last=x>; rel="next"'), '/a?last=x');
  t.is(nextLink('</prev>; rel="prev", </b>; rel=next'), '/b');
  t.is(nextLink(['</c>; type="x"; rel="first next"']), '/c');
  t.is(nextLink('</d>; rel="nextish"'), null);
  t.is(nextLink(undefined), null);
});

test('nextPagePath stays on a configured endpoint and on the same referrers path', (t) => {
  const page = `https://reg.example${PATH}`;
  t.is(nextPagePath(`${PATH}?n=2&last=a`, page, ['https://reg.example'], PATH), `${PATH}?n=2&last=a`);
  t.is(nextPagePath('?last=b', page, ['https://reg.example'], PATH), `${PATH}?last=b`);
  t.is(nextPagePath(`https://evil.example${PATH}?last=c`, page, ['https://reg.example'], PATH), null);
  t.is(nextPagePath(`http://reg.example${PATH}`, page, ['https://reg.example'], PATH), null, 'another scheme is another origin');
  t.is(nextPagePath('/v2/other/repo/referrers/x', page, ['https://reg.example'], PATH), null);
  t.is(nextPagePath('//evil.example/x', page, ['https://reg.example'], PATH), null);
  // An endpoint with a base path: the page path is relative to it.
  t.is(nextPagePath(`/mirror${PATH}?last=d`, `https://reg.example/mirror${PATH}`, ['https://reg.example/mirror/'], PATH), `${PATH}?last=d`);
});

test('parseReferrersPage keeps valid descriptors, drops malformed ones, rejects non-indexes', (t) => {
  const ok = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: D1, size: 10, artifactType: 'a/b', annotations: { k: 'v' } };
  const body = JSON.stringify({ schemaVersion: 2, manifests: [ok, { ...ok, digest: 'md5:x' }, { ...ok, size: 1.5 }, { ...ok, digest: D2, annotations: { n: 1 } }] });
  t.deepEqual(parseReferrersPage(Buffer.from(body)), [ok, { mediaType: ok.mediaType, digest: D2, size: 10, artifactType: 'a/b' }]);
  t.is(parseReferrersPage(Buffer.from('{"manifests":{}}')), null);
  t.is(parseReferrersPage(Buffer.from('nope')), null);
});

test('mergeReferrers: union by digest, local first and winning', (t) => {
  const local = [{ mediaType: 'm', digest: D1, size: 1 }];
  const upstream = [{ mediaType: 'm', digest: D1, size: 99 }, { mediaType: 'm', digest: D2, size: 2 }, { mediaType: 'm', digest: D2, size: 3 }];
  t.deepEqual(mergeReferrers(local, upstream), [local[0], upstream[1]]);
});
