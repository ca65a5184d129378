/**
 * A 1 GiB import with the server's memory watched from outside (issue #9): the server runs
 * as its own process (`node dist/cli.js serve`), a two-platform OCI archive of 4 x 256 MiB
 * incompressible layers is generated and streamed to POST /api/v1/import as a raw body
 * (never held in memory on either side), and the server's VmRSS is sampled from
 * /proc/<pid>/status throughout: peak minus the RSS right after start-up must stay under
 * 64 MiB. Then every layer is checked by size and digest through /v2.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { startCli, writeConfig } from '../helpers/cli.js';
import { http, sha256 } from '../helpers/http.js';
import { tempDir } from '../helpers/server.js';
import { MediaTypes, randomStream } from '../fixtures/images.js';
import { type ImportResult, REF_NAME, importRaw } from '../integration/_import.js';

const MIB = 1024 * 1024;
const LAYER_BYTES = 256 * MIB;
const LAYERS = ['mem-amd64-a', 'mem-amd64-b', 'mem-arm64-a', 'mem-arm64-b'];
const RSS_BUDGET_MIB = 64;
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar';

function rssKiB(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

async function digestOf(seed: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of randomStream(LAYER_BYTES, seed, MIB)) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

test('a 1 GiB import keeps the server RSS within 64 MiB of its start-up figure', async (t) => {
  t.timeout(10 * 60_000);
  const dir = await tempDir(t, 'regmirror-import-mem-');
  const { config } = await writeConfig(dir);
  // Layer digests first (the tar names blobs by digest, so they must be known before streaming).
  const digests = new Map<string, string>();
  for (const seed of LAYERS) digests.set(seed, await digestOf(seed));
  const platform = (arch: string, seeds: string[]) => {
    const cfg = json({ architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: seeds.map((s) => digests.get(s)) } });
    const manifest = json({
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      config: { mediaType: MediaTypes.ociConfig, digest: sha256(cfg), size: cfg.length },
      layers: seeds.map((s) => ({ mediaType: OCI_LAYER, digest: digests.get(s), size: LAYER_BYTES })),
    });
    return { cfg, manifest, arch };
  };
  const plats = [platform('amd64', LAYERS.slice(0, 2)), platform('arm64', LAYERS.slice(2))];
  const index = json({
    schemaVersion: 2,
    mediaType: MediaTypes.ociIndex,
    manifests: plats.map((p) => ({ mediaType: MediaTypes.ociManifest, digest: sha256(p.manifest), size: p.manifest.length, platform: { architecture: p.arch, os: 'linux' } })),
  });
  const layout = json({ schemaVersion: 2, manifests: [{ mediaType: MediaTypes.ociIndex, digest: sha256(index), size: index.length, annotations: { [REF_NAME]: 'big/mem:1' } }] });

  const server = await startCli(t, config);
  const pid = server.child.pid!;
  const startKiB = rssKiB(pid)!;
  t.truthy(startKiB, 'VmRSS readable');
  let peakKiB = startKiB;
  let samples = 0;
  const sampler = setInterval(() => {
    const v = rssKiB(pid);
    if (v !== undefined) {
      peakKiB = Math.max(peakKiB, v);
      samples++;
    }
  }, 100);
  t.teardown(() => clearInterval(sampler));

  const pack = tar.pack();
  const small = (name: string, b: Buffer) => new Promise<void>((res, rej) => pack.entry({ name }, b, (e) => (e ? rej(e) : res())));
  const feed = (async () => {
    await small('oci-layout', json({ imageLayoutVersion: '1.0.0' }));
    for (const seed of LAYERS) {
      await new Promise<void>((res, rej) => {
        const entry = pack.entry({ name: `blobs/sha256/${digests.get(seed)!.slice(7)}`, size: LAYER_BYTES }, (e) => (e ? rej(e) : res()));
        randomStream(LAYER_BYTES, seed, MIB).pipe(entry as unknown as NodeJS.WritableStream);
      });
    }
    for (const p of plats) {
      await small(`blobs/sha256/${sha256(p.cfg).slice(7)}`, p.cfg);
      await small(`blobs/sha256/${sha256(p.manifest).slice(7)}`, p.manifest);
    }
    await small(`blobs/sha256/${sha256(index).slice(7)}`, index);
    await small('index.json', layout);
    pack.finalize();
  })();
  const res = await importRaw(server.url, 'namespace=m', Readable.from(pack as unknown as AsyncIterable<Buffer>));
  await feed;
  clearInterval(sampler);
  t.is(res.status, 200, res.body.toString().slice(0, 500));
  const [img] = res.json<{ images: ImportResult[] }>().images;
  t.is(img!.digest, sha256(index));
  t.is(img!.blobs.new, LAYERS.length + plats.length);

  const grewMiB = (peakKiB - startKiB) / 1024;
  t.log(`server VmRSS: start ${(startKiB / 1024).toFixed(1)} MiB, peak ${(peakKiB / 1024).toFixed(1)} MiB (+${grewMiB.toFixed(1)} MiB) over ${samples} samples, 1 GiB imported`);
  t.true(samples >= 10, 'the sampler saw the import');
  t.true(grewMiB < RSS_BUDGET_MIB, `peak RSS grew ${grewMiB.toFixed(1)} MiB during a 1 GiB import (budget ${RSS_BUDGET_MIB} MiB)`);

  for (const seed of LAYERS) {
    const head = await http('HEAD', `${server.url}/v2/m/big/mem/blobs/${digests.get(seed)}`);
    t.is(head.status, 200, seed);
    t.is(head.header('content-length'), String(LAYER_BYTES), seed);
  }
  const top = await http('GET', `${server.url}/v2/m/big/mem/manifests/1`, { headers: { accept: MediaTypes.ociIndex } });
  t.is(top.header('docker-content-digest'), sha256(index));
});
