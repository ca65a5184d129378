#!/usr/bin/env node
/**
 * Time-to-first-byte client for bench/ha.mjs, in its own process (started with an IPC
 * channel): the bench process serves the paced upstream, so timing there measured its own
 * busy event loop too (bench/results/ttfb-nonowner-2.md: ~50 ms of the non-owner's number).
 *
 * Messages from the parent:
 *   { cmd: 'open', owner, other }            open one keep-alive connection to each base URL
 *                                            (a GET /v2/ on each), answer { ok: true }
 *   { cmd: 'run', path, size, digest }       GET owner+path; at its first body byte GET
 *                                            other+path; answer { ownerMs, otherMs, ok, lag }
 *   { cmd: 'exit' }
 * Timestamps are taken on arrival of the first body byte ('data'). Bodies are only
 * collected while both first bytes are pending and hashed after (so hashing never delays
 * a timestamp). `lag`: the owner's event-loop delay (prom-client's monitorEventLoopDelay
 * gauges on /metrics, reset by each scrape) from just before its GET to just after the
 * other's first byte: max, p99 and mean in ms.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';

const TIMEOUT_MS = 120_000;
let owner = null;
let other = null;

function agentFor() {
  return new http.Agent({ keepAlive: true, maxSockets: 1 });
}

/** GET and drain; resolves with the body as a string (small answers only: /v2/, /metrics). */
function getText(base, agent, path) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${base}${path}`, { agent }, (res) => {
      let s = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (s += c));
      res.on('end', () => resolve(s));
      res.on('error', reject);
    });
    req.setTimeout(TIMEOUT_MS, () => req.destroy(new Error(`GET ${path}: timeout`)));
    req.on('error', reject);
  });
}

/** A blob GET: `onFirstByte` at the first body chunk; hashing starts once `hashNow()` says so. */
function timedGet(base, agent, path, expect, onFirstByte, hashNow) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = http.get(`${base}${path}`, { agent }, (res) => {
      const h = createHash('sha256');
      const held = [];
      let first = null;
      let n = 0;
      res.on('data', (c) => {
        if (first === null) {
          first = performance.now() - t0;
          onFirstByte();
        }
        n += c.length;
        if (!hashNow()) return void held.push(c);
        for (const b of held.splice(0)) h.update(b);
        h.update(c);
      });
      res.on('end', () => {
        for (const b of held.splice(0)) h.update(b);
        resolve({ firstByteMs: first, ok: res.statusCode === 200 && n === expect.size && `sha256:${h.digest('hex')}` === expect.digest });
      });
      res.on('error', reject);
    });
    req.setTimeout(TIMEOUT_MS, () => req.destroy(new Error(`GET ${path}: no answer in ${TIMEOUT_MS} ms`)));
    req.on('error', reject);
  });
}

/** prom-client's default event-loop gauges, in ms (null when absent). */
function lagOf(metrics) {
  const g = (name) => {
    const m = new RegExp(`^regmirror_nodejs_eventloop_lag_${name}_seconds (\\S+)$`, 'm').exec(metrics);
    return m ? +(Number(m[1]) * 1000).toFixed(1) : null;
  };
  return { maxMs: g('max'), p99Ms: g('p99'), meanMs: g('mean') };
}

async function run({ path, size, digest }) {
  const expect = { size, digest };
  // A separate connection for /metrics so the blob connections stay idle and warm.
  await getText(owner.base, owner.metricsAgent, '/metrics'); // resets the lag histogram
  let otherGet = null;
  let otherFirst = false;
  let lagScrape = null;
  const ownerGet = timedGet(owner.base, owner.agent, path, expect, () => {
    otherGet = timedGet(other.base, other.agent, path, expect, () => {
      otherFirst = true;
      lagScrape = getText(owner.base, owner.metricsAgent, '/metrics');
    }, () => true);
  }, () => otherFirst);
  const a = await ownerGet;
  const b = await otherGet;
  const lag = lagOf((await lagScrape) ?? '');
  return { ownerMs: +a.firstByteMs.toFixed(1), otherMs: +b.firstByteMs.toFixed(1), ok: a.ok && b.ok, lag };
}

process.on('message', (msg) => {
  const answer = (p) =>
    p.then(
      (r) => process.send({ ok: true, ...r }),
      (e) => process.send({ ok: false, error: String(e?.stack ?? e) }),
    );
  if (msg.cmd === 'open') {
    owner = { base: msg.owner, agent: agentFor(), metricsAgent: agentFor() };
    // Its own connection even when it is the same replica (1-replica configs: a joiner).
    other = { base: msg.other, agent: agentFor() };
    answer(Promise.all([getText(owner.base, owner.agent, '/v2/'), getText(owner.base, owner.metricsAgent, '/v2/'), getText(other.base, other.agent, '/v2/')]).then(() => ({})));
  } else if (msg.cmd === 'run') answer(run(msg));
  else if (msg.cmd === 'exit') process.exit(0);
});
