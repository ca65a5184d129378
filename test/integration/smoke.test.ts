import test from 'ava';
import { startServer } from '../helpers/server.js';
import { http, pushBlob, pushManifest, sha256, errorCode } from '../helpers/http.js';

test('push a blob and an OCI manifest, then pull them back', async (t) => {
  const s = await startServer(t);
  const ping = await http('GET', `${s.url}/v2/`);
  t.is(ping.status, 200);
  t.is(ping.header('docker-distribution-api-version'), 'registry/2.0');
  const config = await pushBlob(s.url, 'team/app', '{"architecture":"amd64","os":"linux"}');
  const layer = await pushBlob(s.url, 'team/app', Buffer.alloc(1000, 7));
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 37 },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer, size: 1000 }],
  });
  const put = await pushManifest(s.url, 'team/app', 'v1', manifest, 'application/vnd.oci.image.manifest.v1+json');
  t.is(put.status, 201, put.body.toString());
  t.is(put.header('docker-content-digest'), sha256(manifest));
  const get = await http('GET', `${s.url}/v2/team/app/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  t.is(get.status, 200);
  t.is(get.header('content-type'), 'application/vnd.oci.image.manifest.v1+json');
  t.is(get.body.toString(), manifest);
  const missing = await http('GET', `${s.url}/v2/team/app/manifests/nope`);
  t.is(missing.status, 404);
  t.is(errorCode(missing), 'MANIFEST_UNKNOWN');
});
