/**
 * Pull-through benchmark clients (bench/pullthrough.mjs): a GET that verifies sha256 and
 * size while streaming, and one client pulling an image the way containerd does.
 *
 * Each client of a pull scenario runs in its own worker thread (BENCH_PT_CLIENT_THREADS=1,
 * the default), like the separate nodes of a cluster: with all clients in one thread, the
 * benchmark's single thread verifying 8 x 512 MiB was the bottleneck, not the caches.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { MIB, MANIFEST_ACCEPT, assertLoopback } from './lib.mjs';

const hr = () => Number(process.hrtime.bigint()) / 1e6; // ms, monotonic
const round = (x, d = 2) => (x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);

// ---------------------------------------------------------------------------------------
// HTTP (node:http, loopback only, every request with a deadline)
// ---------------------------------------------------------------------------------------

/**
 * GET that streams the body through sha256 and checks digest and size. Resolves with
 * timings (ms since the request was sent): headers, first body byte, end. Never keeps the
 * body unless `keepBody` (manifests). Rejects on transport errors and the deadline.
 */
export function fetchVerified(url, { agent, headers = {}, deadlineAt, expect, keepBody = false }) {
  const u = new URL(url);
  assertLoopback(u.hostname);
  return new Promise((resolve, reject) => {
    const start = hr();
    const left = deadlineAt - Date.now();
    if (left <= 0) {
      reject(new Error('deadline passed before the request'));
      return;
    }
    const req = http.request({ method: 'GET', hostname: u.hostname, port: u.port, path: u.pathname + u.search, headers, agent }, (res) => {
      const headersMs = hr() - start;
      const h = createHash('sha256');
      const chunks = [];
      let bytes = 0;
      let firstByteMs = null;
      let prevChunkAt = null;
      let lastChunkAt = null;
      res.on('data', (c) => {
        prevChunkAt = lastChunkAt;
        lastChunkAt = hr();
        if (firstByteMs === null) firstByteMs = lastChunkAt - start;
        h.update(c);
        bytes += c.length;
        if (keepBody && bytes <= 4 * MIB) chunks.push(c);
      });
      res.on('end', () => {
        clearTimeout(timer);
        const digest = `sha256:${h.digest('hex')}`;
        const out = { status: res.statusCode, headers: res.headers, bytes, digest, headersMs, firstByteMs, totalMs: hr() - start, body: keepBody ? Buffer.concat(chunks) : null };
        // How long the last body chunk came after the one before it (a stall before the end).
        out.lastChunkGapMs = prevChunkAt === null ? null : lastChunkAt - prevChunkAt;
        out.ok = res.statusCode === 200 && (!expect || (digest === expect.digest && bytes === expect.size));
        if (!out.ok) out.error = res.statusCode !== 200 ? `HTTP ${res.statusCode}` : `digest/size mismatch: got ${digest} (${bytes} bytes), want ${expect.digest} (${expect.size} bytes)`;
        resolve(out);
      });
      res.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      res.on('aborted', () => {
        clearTimeout(timer);
        reject(new Error(`response aborted after ${bytes} bytes`));
      });
    });
    const timer = setTimeout(() => req.destroy(new Error(`GET ${u.pathname} hit the scenario deadline`)), left);
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    req.end();
  });
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

async function pool(items, n, fn) {
  let i = 0;
  const workers = Array.from({ length: Math.min(n, items.length) }, async () => {
    while (i < items.length) {
      const item = items[i++];
      await fn(item);
    }
  });
  await Promise.all(workers);
}

/**
 * One client pulling the image like containerd: manifest by tag, config, then the layers
 * `parallel` at a time; every body verified. Never throws: failures are recorded.
 */
export async function pullImage(base, img, deadlineAt, id, { repo, tag, parallel }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: parallel });
  const start = hr();
  const out = { client: id, bytes: 0, failures: [], blobMs: {} };
  try {
    const m = await fetchVerified(`${base}/v2/${repo}/manifests/${tag}`, {
      agent,
      headers: { accept: MANIFEST_ACCEPT },
      deadlineAt,
      expect: { digest: img.manifestDigest, size: img.manifestBytes },
      keepBody: true,
    });
    if (!m.ok) throw new Error(`manifest: ${m.error}`);
    const doc = JSON.parse(m.body.toString('utf8'));
    const blob = async (d) => {
      try {
        const r = await fetchVerified(`${base}/v2/${repo}/blobs/${d.digest}`, { agent, deadlineAt, expect: d });
        out.bytes += r.bytes;
        out.blobMs[d.digest] = round(r.totalMs, 1);
        if (!r.ok) out.failures.push(`client ${id} blob ${d.digest.slice(7, 19)}: ${r.error}`);
      } catch (e) {
        out.failures.push(`client ${id} blob ${d.digest.slice(7, 19)}: ${e.message}`);
      }
    };
    await blob(doc.config);
    await pool(doc.layers, parallel, blob);
  } catch (e) {
    out.failures.push(`client ${id}: ${e.message}`);
  } finally {
    agent.destroy();
  }
  out.ms = hr() - start;
  return out;
}

// Worker entry: wait for "go" (all clients start at once), pull, post the result.
if (!isMainThread && workerData?.role === 'pull-client') {
  const { base, img, deadlineAt, id, opts } = workerData;
  parentPort.once('message', async () => {
    parentPort.postMessage(await pullImage(base, img, deadlineAt, id, opts));
  });
  parentPort.postMessage('ready');
}
