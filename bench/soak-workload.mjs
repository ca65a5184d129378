/**
 * Soak workload (bench/soak.mjs): the generated images, a verifying HTTP client, the
 * ledger of what the mirror is known to hold, the ONE rule that says which failures are
 * explained, and the client loop (pulls by tag and digest, HEADs, tag lists, pushes, cold
 * pulls). Plain ESM JavaScript, loopback only, every request and loop bounded.
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { MIB, MT, MANIFEST_ACCEPT, assertLoopback, genBuffer, sha256 } from './lib.mjs';

/**
 * Accept sets. Tag requests mix them (nodes run containerd next to skopeo, CRI-O and
 * old Docker clients): each image is asked for with any set that reads its media type, and
 * a tag cached for one set must answer the others while the upstream is down.
 */
export const ACCEPT = {
  containerd: MANIFEST_ACCEPT,
  oci: `${MT.ociManifest}, application/vnd.oci.image.index.v1+json`,
  docker: MT.dockerManifest,
};

// =======================================================================================
// Images
// =======================================================================================

/**
 * Plan of the upstream content: shared base layers, `warm` repositories with two tags each
 * (pulled once before the clients start), and `cold` single-tag repositories released one
 * by one during the run so fills happen while the upstream flaps. Bytes are deterministic
 * (AES-CTR of zeros, bench/lib.mjs); only digests and sizes are kept here.
 */
export function planImages({ warmRepos, coldImages, baseLayers = 3, baseMiB = 2, uniqueKiB = 1024 }) {
  const blob = (label, size) => ({ label, size, digest: sha256(genBuffer(`soak/${label}`, size)) });
  const bases = Array.from({ length: baseLayers }, (_, i) => blob(`base-${i}`, baseMiB * MIB));
  const image = (repo, tag, idx, docker) => {
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: { Labels: { soak: `${repo}:${tag}` } } }));
    const unique = blob(`${repo}/${tag}`, uniqueKiB * 1024 + idx * 4096);
    const layerType = docker ? MT.dockerLayer : MT.ociLayer;
    const layers = [
      { mediaType: layerType, digest: bases[idx % bases.length].digest, size: bases[idx % bases.length].size },
      { mediaType: layerType, digest: unique.digest, size: unique.size },
    ];
    const mediaType = docker ? MT.dockerManifest : MT.ociManifest;
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType,
        config: { mediaType: docker ? MT.dockerConfig : MT.ociConfig, digest: sha256(config), size: config.length },
        layers,
      }),
    );
    return {
      repo,
      tag,
      accept: docker ? ACCEPT.containerd : ACCEPT.oci,
      accepts: docker ? [ACCEPT.containerd, ACCEPT.docker] : [ACCEPT.oci, ACCEPT.containerd],
      mediaType,
      manifest,
      digest: sha256(manifest),
      config: { digest: sha256(config), size: config.length, bytes: config },
      unique,
      base: bases[idx % bases.length],
      blobs: [{ digest: sha256(config), size: config.length }, ...layers.map((l) => ({ digest: l.digest, size: l.size }))],
    };
  };
  const warm = [];
  for (let r = 0; r < warmRepos; r++) for (const tag of ['v1', 'v2']) warm.push(image(`soak/warm-${r}`, tag, warm.length, r % 2 === 1));
  const cold = Array.from({ length: coldImages }, (_, i) => image(`soak/cold-${i}`, 'v1', i, i % 2 === 1));
  return { bases, warm, cold };
}

// =======================================================================================
// HTTP: one request, body hashed while streaming, never rejects
// =======================================================================================

/**
 * Result: { status, headers, bytes, digest, body (if keepBody, <= 4 MiB), ms } or, when the
 * transfer failed, `transport` ('connect' before any response, 'aborted' after headers)
 * with `error`. Times out after `timeoutMs` (counted as a transport failure).
 */
export function send(method, url, { agent, headers = {}, body, timeoutMs = 30_000, keepBody = false } = {}) {
  const u = new URL(url);
  assertLoopback(u.hostname);
  const start = Date.now();
  return new Promise((resolve) => {
    let settled = false;
    const done = (r) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ms: Date.now() - start, start, end: Date.now(), ...r });
    };
    const req = http.request({ method, hostname: u.hostname, port: u.port, path: u.pathname + u.search, headers, agent }, (res) => {
      const h = createHash('sha256');
      // Error bodies are kept (their OCI code is judged); success bodies only when asked.
      const keep = keepBody || (res.statusCode ?? 0) >= 300;
      const chunks = [];
      let bytes = 0;
      res.on('data', (c) => {
        h.update(c);
        bytes += c.length;
        if (keep && bytes <= 4 * MIB) chunks.push(c);
      });
      res.on('end', () => done({ status: res.statusCode, headers: res.headers, bytes, digest: `sha256:${h.digest('hex')}`, body: Buffer.concat(chunks) }));
      res.on('close', () => {
        if (!res.complete) done({ status: res.statusCode, headers: res.headers, bytes, transport: 'aborted', error: `response aborted after ${bytes} bytes` });
      });
    });
    const timer = setTimeout(() => req.destroy(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (e) => done({ status: 0, headers: {}, bytes: 0, transport: 'connect', error: e.message }));
    req.end(body);
  });
}

/** The OCI error code of a JSON error body, or null. */
export function errorCode(res) {
  try {
    const doc = JSON.parse(res.body?.toString('utf8') ?? '');
    return typeof doc?.errors?.[0]?.code === 'string' ? doc.errors[0].code : null;
  } catch {
    return null;
  }
}

// =======================================================================================
// What the mirror is known to hold, and the classification rule
// =======================================================================================

/**
 * Content the mirror has answered 200 for, with verified bytes. Keys are per repository
 * (a blob is served in a repository only once linked or referenced there) and tags per
 * Accept set (the mirror caches tags per Accept set).
 */
export class Ledger {
  tags = new Set(); // `${repo}:${tag}|${accept}`
  manifests = new Set(); // `${repo}@${digest}`
  blobs = new Set(); // `${repo}@${digest}`
  tagLists = new Set(); // repo
  /** Images pushed and pulled back intact, shaped like planned images (the final pass re-pulls them). */
  pushedImages = [];
}

/** Down intervals of the upstream: [{ from, to }] (ms epoch; `to` null while down). */
export class UpstreamTimeline {
  downs = [];
  down(at = Date.now()) {
    this.downs.push({ from: at, to: null });
  }
  up(at = Date.now()) {
    const last = this.downs[this.downs.length - 1];
    if (last && last.to === null) last.to = at;
  }
  /** Whether the upstream was down (or hung) at any moment in [from, to]. */
  troubleDuring(from, to) {
    return this.downs.some((d) => d.from <= to && (d.to === null || d.to >= from));
  }
}

/**
 * THE rule for failures (5xx, aborted transfers, connection errors, timeouts). One place,
 * so it can be tightened when the mirror gets better.
 *
 *  - `state` is what the mirror is known to hold for this request: 'pushed' (local
 *    namespace), 'cached' (the ledger saw a verified 200 for it in this repository, with
 *    this Accept set for tags), or 'uncached'.
 *  - A failure is EXPLAINED only when all hold:
 *      1. the content is 'uncached' pull-through content;
 *      2. the answer is 503 UNAVAILABLE, 502 UNAVAILABLE or 429 TOOMANYREQUESTS with the
 *         OCI JSON error body (HEAD: the status alone, it has no body), or a GET whose body
 *         broke off after the headers (a fill whose upstream died: clients see an aborted
 *         transfer, never wrong bytes);
 *      3. the upstream was down or frozen at some moment between (request start − the
 *         mirror's offline window − slack) and the end of the request.
 *  - Everything else is UNEXPLAINED: any 500; any 5xx, abort, reset or timeout for cached
 *    or pushed content; a 5xx with no or another error code; a client-side timeout.
 *
 * Tightened since stale serving across Accept sets and probe-driven recovery landed
 * (issue #8 items 1-2): tag requests mix Accept sets and a tag verified under any of them
 * counts as 'cached'; a failure after the upstream is back is explained only within the
 * mirror's probe interval (plus slack), no longer within its whole offline window.
 */
export function classify({ state, method, res, timeline, recoveryMs, slackMs }) {
  if (state !== 'uncached') return { explained: false, why: `${state} content` };
  const upstreamTrouble = timeline.troubleDuring(res.start - recoveryMs - slackMs, res.end);
  if (!upstreamTrouble) return { explained: false, why: 'upstream was up' };
  // Reported apart: failures while the upstream was really down, and those just after it
  // came back (until the mirror's probe and trial request close its offline window).
  const when = timeline.troubleDuring(res.start, res.end) ? 'while the upstream was down' : 'just after the upstream came back (probe interval)';
  if (res.transport === 'aborted' && method === 'GET') return { explained: true, why: `fill aborted ${when}` };
  if (res.transport) return { explained: false, why: `transport: ${res.error}` };
  const okStatus = res.status === 503 || res.status === 502 || res.status === 429;
  if (!okStatus) return { explained: false, why: `status ${res.status}` };
  if (method === 'HEAD') return { explained: true, why: `HEAD ${res.status} ${when}` };
  const code = errorCode(res);
  const want = res.status === 429 ? 'TOOMANYREQUESTS' : 'UNAVAILABLE';
  if (code !== want) return { explained: false, why: `status ${res.status} with code ${code}` };
  return { explained: true, why: `${res.status} ${code} ${when}` };
}

// =======================================================================================
// Statistics
// =======================================================================================

const MAX_SAMPLES = 40;

export class Stats {
  requests = {}; // kind -> status|transport -> count
  bytes = 0;
  stale = 0; // answers with Warning: 299
  explained = {}; // why -> count
  failures = { wrongBytes: 0, unexplained5xx: 0, unexplainedTransport: 0, unexpectedStatus: 0 };
  samples = [];
  actions = {}; // action -> { ok, failed }

  count(kind, res) {
    const key = res.transport ? res.transport : String(res.status);
    const k = (this.requests[kind] ??= {});
    k[key] = (k[key] ?? 0) + 1;
    this.bytes += res.bytes ?? 0;
    if (res.headers?.warning) this.stale++;
  }

  fail(category, what, detail) {
    this.failures[category]++;
    if (this.samples.length < MAX_SAMPLES) this.samples.push({ at: new Date().toISOString(), category, what, detail });
  }

  total(kind) {
    return Object.values(this.requests[kind] ?? {}).reduce((a, b) => a + b, 0);
  }
}

// =======================================================================================
// A client
// =======================================================================================

/** Small seeded PRNG (mulberry32): reproducible action mixes per client. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ACTIONS = [
  ['warmPull', 25],
  ['digestPull', 15],
  ['head', 20],
  ['tagList', 10],
  ['push', 10],
  ['coldPull', 20],
];
const WEIGHT_SUM = ACTIONS.reduce((a, [, w]) => a + w, 0);

/**
 * One client: its own keep-alive agent (like a node), a loop of weighted random actions
 * until `stopAt`, at most `maxActions`. Never throws: every outcome goes into `ctx.stats`.
 *
 * ctx: { base, images, ledger, stats, timeline, recoveryMs, slackMs, releasedCold(), timeoutMs, thinkMs }
 */
export async function runClient(id, ctx, stopAt, maxActions = 100_000) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 3 });
  const rnd = prng(0x5eed + id * 7919);
  const pick = (xs) => xs[Math.floor(rnd() * xs.length)];
  const c = { id, agent, rnd, pick, pushes: 0, pushedTags: [] };
  try {
    for (let n = 0; n < maxActions && Date.now() < stopAt; n++) {
      let r = rnd() * WEIGHT_SUM;
      let action = ACTIONS[0][0];
      for (const [name, w] of ACTIONS) {
        if (r < w) {
          action = name;
          break;
        }
        r -= w;
      }
      const a = (ctx.stats.actions[action] ??= { ok: 0, failed: 0 });
      const ok = await ACTION_FNS[action](c, ctx);
      if (ok) a.ok++;
      else a.failed++;
      if (ctx.thinkMs > 0) await new Promise((res) => setTimeout(res, rnd() * ctx.thinkMs));
    }
  } finally {
    agent.destroy();
  }
}

/**
 * Send, count and judge one request. `expect`: { digest?, size?, mediaType?, status } for a
 * success. Returns the response when it is the expected success, else null (recorded).
 */
async function call(c, ctx, kind, method, path, { state, headers, body, expect, keepBody = false }) {
  const res = await send(method, `${ctx.base}${path}`, { agent: c.agent, headers, body, timeoutMs: ctx.timeoutMs, keepBody });
  ctx.stats.count(kind, res);
  const what = `${method} ${path}`;
  const wantStatus = expect.status ?? 200;
  if (!res.transport && res.status === wantStatus) {
    const wrong = checkBody(method, res, expect);
    if (wrong) {
      ctx.stats.fail('wrongBytes', what, wrong);
      return null;
    }
    return res;
  }
  if (res.transport || res.status >= 500) {
    const v = classify({ state, method, res, timeline: ctx.timeline, recoveryMs: ctx.recoveryMs, slackMs: ctx.slackMs });
    if (v.explained) {
      ctx.stats.explained[v.why] = (ctx.stats.explained[v.why] ?? 0) + 1;
      return null;
    }
    const detail = `${res.transport ? res.error : `HTTP ${res.status} ${res.body?.toString('utf8').slice(0, 200)}`} (${v.why})`;
    ctx.stats.fail(res.transport ? 'unexplainedTransport' : 'unexplained5xx', what, detail);
    return null;
  }
  ctx.stats.fail('unexpectedStatus', what, `HTTP ${res.status} (want ${wantStatus}): ${res.body?.toString('utf8').slice(0, 200)}`);
  return null;
}

/** Why a success answer is wrong, or null. */
function checkBody(method, res, expect) {
  const h = res.headers;
  if (expect.digest) {
    const dcd = h['docker-content-digest'];
    if (dcd !== undefined && dcd !== expect.digest) return `Docker-Content-Digest ${dcd}, want ${expect.digest}`;
  }
  if (expect.mediaType && String(h['content-type'] ?? '').split(';')[0].trim() !== expect.mediaType) return `Content-Type ${h['content-type']}, want ${expect.mediaType}`;
  if (expect.size !== undefined && method === 'HEAD' && Number(h['content-length']) !== expect.size) return `HEAD Content-Length ${h['content-length']}, want ${expect.size}`;
  if (method === 'GET' && expect.digest && (res.digest !== expect.digest || (expect.size !== undefined && res.bytes !== expect.size))) {
    return `body sha256 ${res.digest} (${res.bytes} bytes), want ${expect.digest} (${expect.size} bytes)`;
  }
  if (expect.check) return expect.check(res);
  return null;
}

// Any Accept set: the mirror serves a cached tag to every client that reads it.
const tagKey = (img) => `${img.repo}:${img.tag}`;
/** The Accept of this request: any set that reads the image (pushed images: their own). */
const acceptFor = (c, img) => (img.accepts && c.pick ? c.pick(img.accepts) : img.accept);
const inRepo = (repo, digest) => `${repo}@${digest}`;

/** Manifest by tag, config, then both layers at once; marks what was verified. */
async function pullImage(c, ctx, img, kind) {
  const { ledger } = ctx;
  const stateOf = (cached) => (img.pushed ? 'pushed' : cached ? 'cached' : 'uncached');
  const m = await call(c, ctx, `${kind}:manifest`, 'GET', `/v2/${img.repo}/manifests/${img.tag}`, {
    state: stateOf(ledger.tags.has(tagKey(img))),
    headers: { accept: acceptFor(c, img) },
    expect: { digest: img.digest, size: img.manifest.length, mediaType: img.mediaType },
  });
  if (!m) return false;
  ledger.tags.add(tagKey(img));
  ledger.manifests.add(inRepo(img.repo, img.digest));
  const blob = async (b) => {
    const key = inRepo(img.repo, b.digest);
    const r = await call(c, ctx, `${kind}:blob`, 'GET', `/v2/${img.repo}/blobs/${b.digest}`, { state: stateOf(ledger.blobs.has(key)), expect: b });
    if (r) ledger.blobs.add(key);
    return r !== null;
  };
  const results = await Promise.all(img.blobs.map(blob));
  return results.every(Boolean);
}

/** One verified pull of `img` on a fresh agent (priming and the final pass). */
export async function pullImageOnce(id, ctx, img) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 3 });
  try {
    return await pullImage({ id, agent }, ctx, img, 'once');
  } finally {
    agent.destroy();
  }
}

const ACTION_FNS = {
  async warmPull(c, ctx) {
    return pullImage(c, ctx, c.pick(ctx.images.warm), 'warm');
  },

  async coldPull(c, ctx) {
    const released = ctx.releasedCold();
    if (released === 0) return pullImage(c, ctx, c.pick(ctx.images.warm), 'warm');
    // Mostly the newest release (concurrent fills of the same image), sometimes an older one.
    const i = c.rnd() < 0.7 ? released - 1 : Math.floor(c.rnd() * released);
    return pullImage(c, ctx, ctx.images.cold[i], 'cold');
  },

  async digestPull(c, ctx) {
    const img = c.pick(ctx.images.warm);
    const { ledger } = ctx;
    const m = await call(c, ctx, 'digest:manifest', 'GET', `/v2/${img.repo}/manifests/${img.digest}`, {
      state: ledger.manifests.has(inRepo(img.repo, img.digest)) ? 'cached' : 'uncached',
      headers: { accept: acceptFor(c, img) },
      expect: { digest: img.digest, size: img.manifest.length, mediaType: img.mediaType },
    });
    if (!m) return false;
    ledger.manifests.add(inRepo(img.repo, img.digest));
    const b = c.pick(img.blobs);
    const key = inRepo(img.repo, b.digest);
    const r = await call(c, ctx, 'digest:blob', 'GET', `/v2/${img.repo}/blobs/${b.digest}`, { state: ledger.blobs.has(key) ? 'cached' : 'uncached', expect: b });
    if (r) ledger.blobs.add(key);
    return r !== null;
  },

  async head(c, ctx) {
    const img = c.pick(ctx.images.warm);
    const { ledger } = ctx;
    const m = await call(c, ctx, 'head:manifest', 'HEAD', `/v2/${img.repo}/manifests/${img.tag}`, {
      state: ledger.tags.has(tagKey(img)) ? 'cached' : 'uncached',
      headers: { accept: acceptFor(c, img) },
      expect: { digest: img.digest, size: img.manifest.length, mediaType: img.mediaType },
    });
    const b = c.pick(img.blobs);
    const r = await call(c, ctx, 'head:blob', 'HEAD', `/v2/${img.repo}/blobs/${b.digest}`, {
      state: ledger.blobs.has(inRepo(img.repo, b.digest)) ? 'cached' : 'uncached',
      expect: b,
    });
    return m !== null && r !== null;
  },

  async tagList(c, ctx) {
    const { ledger } = ctx;
    // A pushed repository of this client's, if any, half of the time; else a pull-through one.
    if (c.pushedTags.length > 0 && c.rnd() < 0.5) {
      const repo = `local/c${c.id}`;
      const want = [...c.pushedTags].sort();
      const r = await call(c, ctx, 'tags:local', 'GET', `/v2/${repo}/tags/list?n=10000`, {
        state: 'pushed',
        keepBody: true,
        expect: { check: (res) => sameList(res, want, false) },
      });
      return r !== null;
    }
    const img = c.pick(ctx.images.warm);
    const want = ctx.images.warm.filter((i) => i.repo === img.repo).map((i) => i.tag).sort();
    // Once listed, or once a tag was resolved there, the mirror has a list to fall back on.
    const known = ledger.tagLists.has(img.repo) || [...ledger.tags].some((k) => k.startsWith(`${img.repo}:`));
    const r = await call(c, ctx, 'tags:pullthrough', 'GET', `/v2/${img.repo}/tags/list`, {
      state: known ? 'cached' : 'uncached',
      keepBody: true,
      expect: { check: (res) => sameList(res, want, true) },
    });
    if (r && !r.headers.warning) ledger.tagLists.add(img.repo);
    return r !== null;
  },

  async push(c, ctx) {
    const repo = `local/c${c.id}`;
    const tag = `t${c.pushes++}`;
    const st = { state: 'pushed' };
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', soak: { client: c.id, tag, nonce: randomBytes(8).toString('hex') } }));
    const layer = randomBytes(64 * 1024 + Math.floor(c.rnd() * 192 * 1024));
    const cfg = { digest: sha256(config), size: config.length };
    const lay = { digest: sha256(layer), size: layer.length };
    // Config: monolithic POST ?digest=. Layer: POST, PATCH, PUT ?digest= (chunked upload).
    const p1 = await call(c, ctx, 'push:blob', 'POST', `/v2/${repo}/blobs/uploads/?digest=${cfg.digest}`, {
      ...st,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(config.length) },
      body: config,
      expect: { status: 201 },
    });
    if (!p1) return false;
    const post = await call(c, ctx, 'push:blob', 'POST', `/v2/${repo}/blobs/uploads/`, { ...st, headers: { 'content-length': '0' }, expect: { status: 202 } });
    if (!post) return false;
    const loc = new URL(post.headers.location, ctx.base);
    const patch = await call(c, ctx, 'push:blob', 'PATCH', loc.pathname + loc.search, {
      ...st,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(layer.length), 'content-range': `0-${layer.length - 1}` },
      body: layer,
      expect: { status: 202 },
    });
    if (!patch) return false;
    const put = new URL(patch.headers.location ?? loc.toString(), ctx.base);
    put.searchParams.set('digest', lay.digest);
    if (!(await call(c, ctx, 'push:blob', 'PUT', put.pathname + put.search, { ...st, headers: { 'content-length': '0' }, expect: { status: 201 } }))) return false;
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MT.ociManifest,
        config: { mediaType: MT.ociConfig, ...cfg },
        layers: [{ mediaType: MT.ociLayer, ...lay }],
      }),
    );
    const mdigest = sha256(manifest);
    const mput = await call(c, ctx, 'push:manifest', 'PUT', `/v2/${repo}/manifests/${tag}`, {
      ...st,
      headers: { 'content-type': MT.ociManifest, 'content-length': String(manifest.length) },
      body: manifest,
      expect: { status: 201, digest: mdigest },
    });
    if (!mput) return false;
    c.pushedTags.push(tag);
    // Pull it back: by tag, and the layer.
    const back = await call(c, ctx, 'push:pullback', 'GET', `/v2/${repo}/manifests/${tag}`, {
      ...st,
      headers: { accept: ACCEPT.oci },
      expect: { digest: mdigest, size: manifest.length, mediaType: MT.ociManifest },
    });
    const blob = await call(c, ctx, 'push:pullback', 'GET', `/v2/${repo}/blobs/${lay.digest}`, { ...st, expect: lay });
    if (back === null || blob === null) return false;
    ctx.ledger.pushedImages.push({ repo, tag, pushed: true, accept: ACCEPT.oci, mediaType: MT.ociManifest, manifest, digest: mdigest, blobs: [cfg, lay] });
    return true;
  },
};

/** Tag list check: exactly `want`, or (stale, with a Warning) a non-empty subset of it. */
function sameList(res, want, staleSubsetOk) {
  let doc;
  try {
    doc = JSON.parse(res.body.toString('utf8'));
  } catch {
    return 'tag list is not JSON';
  }
  const got = Array.isArray(doc.tags) ? [...doc.tags].sort() : null;
  if (!got) return 'tag list has no tags array';
  if (got.join(',') === want.join(',')) return null;
  if (staleSubsetOk && res.headers.warning && got.length > 0 && got.every((t) => want.includes(t))) return null;
  return `tags ${JSON.stringify(got)}, want ${JSON.stringify(want)}`;
}
