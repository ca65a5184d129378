import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { collectGarbage } from '../../src/ops/gc.js';
import { configFromObject } from '../../src/config/load.js';
import { openLocalStorage } from '../../src/storage/local/index.js';
import { storagePaths } from '../../src/storage/paths.js';
import { http, pushBlob, pushManifest, sha256 } from '../helpers/http.js';
import { startServer } from '../helpers/server.js';

function blobFile(storage: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return path.join(storage, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

test('gc removes content no manifest references and keeps what tags need', async (t) => {
  const s = await startServer(t);
  const storage = path.join(s.dataDir, 'storage');
  const config = await pushBlob(s.url, 'team/app', '{"os":"linux"}');
  const kept = await pushBlob(s.url, 'team/app', 'layer that a tag needs');
  const dropped = await pushBlob(s.url, 'team/app', 'layer of a deleted manifest');
  const mk = (layer: string, size: number) =>
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 14 },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer, size }],
    });
  const keep = mk(kept, 'layer that a tag needs'.length);
  const drop = mk(dropped, 'layer of a deleted manifest'.length);
  t.is((await pushManifest(s.url, 'team/app', 'keep', keep, 'application/vnd.oci.image.manifest.v1+json')).status, 201);
  t.is((await pushManifest(s.url, 'team/app', 'drop', drop, 'application/vnd.oci.image.manifest.v1+json')).status, 201);
  t.is((await http('DELETE', `${s.url}/v2/team/app/manifests/${sha256(drop)}`)).status, 202);
  await s.app.close();

  // Pushed links get a grace period (uploadTtl) before they count as abandoned.
  const fresh = await collectGarbage(configFromObject({ storage }), { dryRun: false });
  t.is(fresh.blobsRemoved, 0);
  t.is(fresh.manifestsRemoved, 1); // the deleted manifest's content
  t.true(fs.existsSync(blobFile(storage, dropped)));

  const result = await collectGarbage(configFromObject({ storage, limits: { uploadTtl: '0s' } }), { dryRun: false });
  t.is(result.blobsRemoved, 1);
  t.is(result.linksRemoved, 1);
  t.false(fs.existsSync(blobFile(storage, dropped)));
  t.true(fs.existsSync(blobFile(storage, kept)));
  t.true(fs.existsSync(blobFile(storage, config)));

  // An orphan file (crash between rename and row) is removed too.
  const orphan = blobFile(storage, sha256('orphan'));
  fs.mkdirSync(path.dirname(orphan), { recursive: true });
  fs.writeFileSync(orphan, 'orphan');
  const again = await collectGarbage(configFromObject({ storage }), { dryRun: false });
  t.is(again.orphanFilesRemoved, 1);
  t.false(fs.existsSync(orphan));
});

test('gc removes upstream lists not refreshed for a week (or ten tags.ttl) and keeps fresh ones', async (t) => {
  const s = await startServer(t);
  const storage = path.join(s.dataDir, 'storage');
  await s.app.close();
  const day = 24 * 3600_000;
  const lists = async <T>(fn: (meta: ReturnType<typeof openLocalStorage>['metadata']) => Promise<T>): Promise<T> => {
    const { metadata } = openLocalStorage(storagePaths(storage));
    try {
      return await fn(metadata);
    } finally {
      await metadata.close();
    }
  };
  await lists(async (meta) => {
    await meta.putUpstreamList('tags|up|library/old', '["1"]', Date.now() - 8 * day);
    await meta.putUpstreamList('referrers|up|library/old|sha256:00', '[]', Date.now() - 8 * day);
    await meta.putUpstreamList('tags|up|library/fresh', '["2"]', Date.now() - 6 * day);
  });

  // A tags.ttl of one day keeps lists for ten days: nothing goes yet.
  const long = configFromObject({ storage, upstreams: { up: { endpoints: ['http://127.0.0.1:9'], tags: { ttl: '1d' } } }, defaultUpstream: 'up' });
  t.is((await collectGarbage(long, { dryRun: false })).upstreamListsRemoved, 0);
  t.is((await collectGarbage(configFromObject({ storage }), { dryRun: true })).upstreamListsRemoved, 0, 'dry run removes nothing');

  const result = await collectGarbage(configFromObject({ storage }), { dryRun: false });
  t.is(result.upstreamListsRemoved, 2);
  await lists(async (meta) => {
    t.is(await meta.upstreamList('tags|up|library/old'), undefined);
    t.is(await meta.upstreamList('referrers|up|library/old|sha256:00'), undefined);
    t.is((await meta.upstreamList('tags|up|library/fresh'))?.body, '["2"]');
  });
});
