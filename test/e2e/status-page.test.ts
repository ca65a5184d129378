/**
 * The status page in a real browser: Debian's headless Chromium driven by playwright-core.
 * It renders, shows a blob download in progress (a throttled fake upstream) and an
 * offline upstream (a stopped fake, marked offline by a request), and reloads itself.
 *
 * Skipped only when /usr/bin/chromium is absent and CI !== 'true'. The screenshot goes to
 * a temp dir; set REGMIRROR_STATUS_SCREENSHOT=docs/status.png to refresh the README's.
 */
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import { chromium, type Browser } from 'playwright-core';
import { http } from '../helpers/http.js';
import { startServer, tempDir } from '../helpers/server.js';
import { CI } from '../helpers/tools.js';
import { makeBlob, randomBytes } from '../fixtures/images.js';
import type { StatusSnapshot } from '../../src/ops/status.js';
import { ACCEPT_ALL, fetchStream, startFake, upstreamEntry, waitFor } from '../integration/_pullthrough.js';
import { sampleImage } from '../integration/_support.js';

const CHROMIUM = '/usr/bin/chromium';
const e2e = existsSync(CHROMIUM) || CI ? test : test.skip;

/** The flags this machine needs (no sandbox as root, no network beyond loopback). */
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

async function launch(t: import('ava').ExecutionContext): Promise<Browser> {
  // playwright gives every launch a fresh, empty profile directory (it refuses --user-data-dir).
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 60_000 });
  t.teardown(() => browser.close());
  return browser;
}

async function status(url: string): Promise<StatusSnapshot> {
  return (await http('GET', `${url}/api/v1/status`)).json<StatusSnapshot>();
}

e2e('status page in Chromium: upstreams with an offline one, a download in progress, cache budget; it reloads itself', async (t) => {
  const hub = await startFake(t);
  const down = await startFake(t);
  const s = await startServer(t, {
    upstreams: {
      'hub.example': upstreamEntry(hub),
      'down.example': upstreamEntry(down, { timeouts: { offline: '1h', probe: '1h' } }),
    },
    namespaces: [
      { prefix: 'hub', upstream: 'hub.example' },
      { prefix: 'down', upstream: 'down.example' },
    ],
    cache: { maxBytes: '2GiB' },
  });
  // Some ordinary traffic first: an image pulled twice (misses, then hits).
  const img = sampleImage('status-page');
  hub.addImage('library/app', img, 'latest');
  for (let i = 0; i < 2; i++) {
    t.is((await http('GET', `${s.url}/v2/hub/library/app/manifests/latest`, { headers: { accept: ACCEPT_ALL } })).status, 200);
    for (const l of img.layers) t.is((await http('GET', `${s.url}/v2/hub/library/app/blobs/${l.digest}`)).status, 200);
    await waitFor(() => img.layers.every((l) => s.db().blobSize(l.digest as never) !== undefined), 10_000, 'layers committed');
  }

  // A large blob, throttled upstream (~80 s in all): still downloading while the page is
  // looked at, even on a loaded machine; the upstream is stopped at the end, not waited for.
  const big = makeBlob(randomBytes(8 * 1024 * 1024, 'status-page-big'), 'application/vnd.oci.image.layer.v1.tar');
  hub.addBlob('library/big', big);
  hub.faults.push({ path: /\/blobs\//, method: 'GET', throttle: { chunkBytes: 8 * 1024, intervalMs: 80 } });
  const pull = fetchStream(`${s.url}/v2/hub/library/big/blobs/${big.digest}`);
  pull.catch(() => undefined); // cut short at teardown
  await waitFor(async () => (await status(s.url)).fills.some((f) => f.bytes > 0), 30_000, 'the fill started');

  // The other upstream goes away; one request finds out and opens its offline window.
  down.addImage('app', img, 'v1');
  await down.stop();
  t.is((await http('GET', `${s.url}/v2/down/app/manifests/v1`, { headers: { accept: ACCEPT_ALL } })).status, 503);
  await waitFor(async () => (await status(s.url)).upstreams.some((u) => u.name === 'down.example' && u.state === 'offline'), 10_000, 'marked offline');

  const browser = await launch(t);
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const res = await page.goto(`${s.url}/`, { waitUntil: 'load', timeout: 30_000 });
  t.is(res?.status(), 200);
  t.is(await page.title(), 'regmirror status');
  t.is(await page.locator('tr[data-upstream="down.example"] td.state').getAttribute('data-state'), 'offline');
  t.regex(await page.locator('tr[data-upstream="down.example"] td.state').innerText(), /offline window/);
  t.is(await page.locator('tr[data-upstream="hub.example"] td.state').getAttribute('data-state'), 'ok');
  const fillRow = page.locator('#fills tr.fill');
  t.is(await fillRow.count(), 1);
  const before = await fillRow.innerText();
  t.true(before.includes('hub/library/big') && before.includes('hub.example'), before);
  t.regex(before, /of 8\.0 MiB \(\d+%\)/);
  t.regex(await page.locator('#cache').innerText(), /of 2\.0 GiB/);
  t.regex(await page.locator('#errors').innerText(), /down\.example[\s\S]*marked offline/);
  t.is(await page.locator('script').count(), 0, 'no scripts: the refresh is a meta tag');

  const shotDir = await tempDir(t, 'regmirror-shot-');
  const shot = path.join(shotDir, 'status.png');
  await page.screenshot({ path: shot, fullPage: true });
  const png = await fs.readFile(shot);
  t.true(png.length > 10_000 && png.subarray(1, 4).toString() === 'PNG', 'a real PNG');
  const keep = process.env.REGMIRROR_STATUS_SCREENSHOT;
  if (keep) await fs.copyFile(shot, keep);

  // It reloads by itself (meta refresh) and shows the download further along.
  await page.waitForEvent('load', { timeout: 30_000 });
  const percent = (text: string) => Number(/\((\d+)%\)/.exec(text)?.[1] ?? -1);
  if ((await page.locator('#fills tr.fill').count()) === 1) {
    const after = await page.locator('#fills tr.fill').innerText();
    t.true(percent(after) > percent(before), `${before} -> ${after}`);
  } else {
    // Finished in the meantime (a fast machine): the reloaded page says so.
    t.regex(await page.locator('body').innerText(), /No downloads in progress/);
  }
  await hub.stop(); // ends the fill (and the client's transfer) instead of waiting it out
});
