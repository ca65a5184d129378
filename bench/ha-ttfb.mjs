/**
 * The TTFB phase of bench/ha.mjs: per extra blob, a GET on replica 0 starts the fill (the
 * owner); at its first byte, the same blob from replica 1 (the non-owner), or again from
 * replica 0 on 1-replica configs. Timed by bench/ttfb-client.mjs in its own process;
 * results in bench/results/ttfb-nonowner-3.md explain the settle and pause between runs.
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { HERE, log, median, startProcess, stopProcess, tempDirs } from './lib.mjs';

/** Waits (bounded) until no replica has a fill in progress (regmirror_blob_fills_inflight). */
async function settled(replicas, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  const inflight = (base) =>
    new Promise((resolve) => {
      http
        .get(`${base}/metrics`, (res) => {
          let s = '';
          res.setEncoding('utf8').on('data', (c) => (s += c)).on('end', () => resolve(Number(/^regmirror_blob_fills_inflight (\d+)$/m.exec(s)?.[1] ?? 0)));
        })
        .on('error', () => resolve(0));
    });
  for (let i = 0; i < 3000 && Date.now() < deadline; i++) {
    if ((await Promise.all(replicas.map((r) => inflight(r.base)))).every((n) => n === 0)) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  log('fills still in progress after 30 s; measuring anyway');
}

/** One request to the timing child (bench/ttfb-client.mjs) and its answer. */
function ask(entry, msg, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (entry.child.off('message', on), reject(new Error(`ttfb client: no answer to ${msg.cmd} in ${timeoutMs} ms`))), timeoutMs);
    const on = (m) => {
      clearTimeout(timer);
      entry.child.off('message', on);
      if (m.ok) resolve(m);
      else reject(new Error(`ttfb client: ${m.error}`));
    };
    entry.child.on('message', on);
    entry.child.send(msg);
  });
}

/**
 * Per extra blob: the owner's GET starts the fill; at its first byte, the same blob from
 * another replica (or again from the same one). Timed by a child process with connections
 * opened beforehand (bench/ttfb-client.mjs), not in this process, which paces the upstream.
 */
export async function ttfb(replicas, img, { repo, scenarioMs, pauseMs }) {
  const owner = replicas[0];
  const other = replicas[1] ?? replicas[0];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'regmirror-bench-ttfb-'));
  tempDirs.push(dir);
  const client = startProcess('ttfb-client', process.execPath, [path.join(HERE, 'ttfb-client.mjs')], path.join(dir, 'client.log'), { ipc: true });
  const runs = [];
  try {
    await ask(client, { cmd: 'open', owner: owner.base, other: other.base }, 30_000);
    for (const d of img.extra) {
      // The previous run's commits (and relays' waits for them) finish first: each run starts idle.
      await settled(replicas);
      // Then a pause, so the previous fill's after-work (garbage collection of its buffers, the
      // stage's clean-up) does not land in this run's window: without it a build whose fills
      // end sooner (relays not committing) measured the owner's leftovers (ttfb-nonowner-3.md).
      if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
      const r = await ask(client, { cmd: 'run', path: `/v2/${repo}/blobs/${d.digest}`, size: d.size, digest: d.digest }, scenarioMs);
      runs.push({ ownerMs: r.ownerMs, otherMs: r.otherMs, ok: r.ok, ownerLagMaxMs: r.lag.maxMs, ownerLagP99Ms: r.lag.p99Ms, ownerLagMeanMs: r.lag.meanMs, load: +os.loadavg()[0].toFixed(2) });
    }
  } finally {
    client.child.send({ cmd: 'exit' });
    await stopProcess(client);
  }
  const med = (f) => median(runs.map(f).filter((x) => x !== null));
  return {
    otherIs: other === owner ? 'a second GET on the same replica' : 'replica 1 (not the fill owner)',
    runs,
    ownerMedianMs: +med((r) => r.ownerMs).toFixed(1),
    otherMedianMs: +med((r) => r.otherMs).toFixed(1),
    gapMedianMs: +med((r) => r.otherMs - r.ownerMs).toFixed(1),
    ownerLagMaxMedianMs: +med((r) => r.ownerLagMaxMs).toFixed(1),
    allOk: runs.every((r) => r.ok),
  };
}
