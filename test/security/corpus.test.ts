/**
 * A bad-input corpus (well over 100 cases) sent as raw bytes to one live server with
 * client auth, token auth and small limits: traversal paths, weird methods, huge and
 * random headers, garbage Content-Range, random/invalid-UTF-8 bodies, bogus Authorization
 * values, broken framing and non-HTTP bytes. Random cases come from a seeded PRNG, so a
 * failure names a reproducible case.
 *
 * Pass criteria: no 5xx for any case (a closed connection without a response is allowed:
 * that is what node's parser does with some garbage), no error-level log line, the
 * process never dies, and afterwards the server is healthy: GET /v2/ answers and a full
 * push + pull still works.
 */
import test from 'ava';
import net from 'node:net';
import path from 'node:path';
import { basic, pushImageWith, req, writeHtpasswd } from '../helpers/authn.js';
import { http, sha256 } from '../helpers/http.js';
import { startServer, tempDir } from '../helpers/server.js';
import { OCI_INDEX, OCI_MANIFEST, sampleImage } from '../integration/_support.js';

const ALICE = basic('alice', 'alice-corpus-pw');

/** mulberry32: tiny seeded PRNG. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

interface Outcome {
  /** Final (non-1xx) status, or 0 when the server closed without answering. */
  status: number;
  timedOut: boolean;
  raw: string;
}

/** Write exact bytes and collect everything until the server closes (bounded). */
function send(hostPort: string, bytes: Buffer, timeoutMs = 5_000): Promise<Outcome> {
  const [host, port] = hostPort.split(':') as [string, string];
  return new Promise((resolve) => {
    const sock = net.connect({ host, port: Number(port) });
    const chunks: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      sock.destroy();
    }, timeoutMs);
    sock.on('connect', () => sock.end(bytes));
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', () => undefined); // EPIPE/ECONNRESET: the server may hang up mid-write
    sock.on('close', () => {
      clearTimeout(timer);
      const raw = Buffer.concat(chunks).toString('latin1');
      const statuses = [...raw.matchAll(/(?:^|\r\n)HTTP\/1\.[01] (\d{3})/g)].map((m) => Number(m[1]));
      const final = statuses.filter((s) => s >= 200).pop() ?? 0;
      resolve({ status: final, timedOut, raw: raw.slice(0, 300) });
    });
  });
}

/** Run `fn` over `items` with at most `n` in flight. */
async function pool<T, R>(items: readonly T[], n: number, fn: (x: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!, i);
      }
    }),
  );
  return out;
}

test('bad-input corpus: no 5xx, no crash, still healthy afterwards', async (t) => {
  const dir = await tempDir(t, 'regmirror-corpus-');
  const htpasswd = path.join(dir, 'htpasswd');
  await writeHtpasswd(htpasswd, { alice: 'alice-corpus-pw' });
  const s = await startServer(t, {
    auth: { htpasswd, token: { service: 'reg' }, loginRateLimit: { maxFailures: 100_000 } },
    limits: { maxBlobBytes: '1MiB' },
    http: { idleTimeout: '2s', headersTimeout: '2s' },
  });
  const hp = s.hostPort;
  const rnd = prng(0x5eed);
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(rnd() * 256)));
  const printable = (n: number) => Array.from({ length: n }, () => String.fromCharCode(0x21 + Math.floor(rnd() * 94))).join('');
  const obsText = (n: number) => Buffer.from(Array.from({ length: n }, () => 0x20 + Math.floor(rnd() * 224)).map((b) => (b === 0x7f ? 0x41 : b)));

  // Upload sessions to aim Content-Range garbage at.
  const sessions: string[] = [];
  for (let i = 0; i < 4; i++) {
    const r = await http('POST', `${s.url}/v2/corpus/up/blobs/uploads/`, { headers: { authorization: ALICE } });
    t.is(r.status, 202);
    sessions.push(r.header('location')!);
  }

  const cases: Array<{ name: string; bytes: Buffer }> = [];
  const add = (name: string, b: Buffer | string) => cases.push({ name, bytes: typeof b === 'string' ? Buffer.from(b, 'latin1') : b });
  /** A request with Connection: close; headers are raw lines. */
  const reqBytes = (method: string, target: string, headers: Array<string | Buffer> = [], body?: Buffer, withLength = true) => {
    const head: Buffer[] = [Buffer.from(`${method} ${target} HTTP/1.1\r\nHost: ${hp}\r\nConnection: close\r\n`, 'latin1')];
    for (const h of headers) head.push(Buffer.isBuffer(h) ? h : Buffer.from(h, 'latin1'), Buffer.from('\r\n'));
    if (body && withLength) head.push(Buffer.from(`Content-Length: ${body.length}\r\n`));
    head.push(Buffer.from('\r\n'));
    return Buffer.concat([...head, body ?? Buffer.alloc(0)]);
  };
  const auth = `Authorization: ${ALICE}`;
  const digest = sha256('corpus');

  // --- paths and queries -------------------------------------------------------------
  const targets = [
    '/v2/../../../../etc/passwd', '/v2/%2e%2e/%2e%2e/etc/passwd/manifests/x', '/v2/a%2fb/manifests/x', '/v2/a%00b/manifests/x',
    '/v2/a/manifests/%2e%2e%2f%2e%2e', '/v2//etc/manifests/x', '/v2/a\\b/manifests/x', '/v2/a/blobs/sha256:..%2f..%2fx',
    `/v2/${'a/'.repeat(3000)}manifests/x`, `/v2/${'x'.repeat(70_000)}`, '*', 'http://evil.example/v2/', '//v2/', '/v2/./.',
    '/v2/a/manifests/latest?ns=%ff%fe', '/v2/a/tags/list?n=%zz', '/v2/a/tags/list?n=-1', '/v2/a/tags/list?n=1e3',
    '/v2/a/tags/list?n=99999999999999999999', '/v2/_catalog?n=abc', `/v2/_catalog?last=${'z'.repeat(5000)}`, '/v2/_catalog?n=5&n=6&last=a&last=b',
    '/v2/a/referrers/sha256:zz?artifactType=%ff', `/v2/a/referrers/${digest}?artifactType=${'%ff'.repeat(100)}`, '/token?scope=%ff%fe&service=%00',
    `/token?scope=${'repository:a:pull '.repeat(500)}`, '/token?scope=repository::&scope=:::&scope=repository:a', '/api/v1/resolve?path=%ff%fe',
    '/api/v1/resolve?path=a&ns=%00', '/api/v1/resolve?path=a&reference=sha256:%ff', '/api/v1/resolve', `/api/v1/resolve?path=${'a'.repeat(300)}`,
    '/v2/a/manifests/latest#frag', '/v2/a/manifests/latest?a=1&a[b]=2&__proto__[x]=1', '/v2/a/blobs/uploads/?mount=%ff&from=%ff',
    '/v2/a/blobs/uploads/?digest-algorithm=md5', '/v2/a/blobs/uploads/?digest=sha256:%ff', '/v2/a/manifests/', '/v2/a/blobs/', '/v2/a/tags/',
  ];
  for (const target of targets) add(`GET ${target.slice(0, 50)}`, reqBytes('GET', target, [auth]));
  add('raw high bytes in path', Buffer.concat([Buffer.from('GET /v2/'), bytes(20), Buffer.from(`/manifests/x HTTP/1.1\r\nHost: ${hp}\r\nConnection: close\r\n\r\n`)]));
  add('invalid UTF-8 in path', Buffer.concat([Buffer.from('GET /v2/a'), Buffer.from([0xc3, 0x28, 0xa0, 0xa1]), Buffer.from(`/tags/list HTTP/1.1\r\nHost: ${hp}\r\nConnection: close\r\n\r\n`)]));

  // --- methods ---------------------------------------------------------------------------
  for (const m of ['PROPFIND', 'TRACE', 'OPTIONS', 'FOO', 'get', 'M-SEARCH', 'PURGE', 'LINK', 'MKCOL', 'COPY', 'SEARCH', 'A'.repeat(1000), 'GE T', 'PATCH', 'PUT', 'DELETE', 'POST']) {
    add(`method ${m.slice(0, 20)} /v2/`, reqBytes(m, '/v2/', [auth]));
  }
  add('CONNECT', `CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n`);
  add('method on catalog', reqBytes('DELETE', '/v2/_catalog', [auth]));
  add('method on tags', reqBytes('POST', '/v2/a/tags/list', [auth], Buffer.from('x')));
  add('method on referrers', reqBytes('PUT', `/v2/a/referrers/${digest}`, [auth], Buffer.from('x')));
  add('method on token', reqBytes('DELETE', '/token'));
  add('method on resolve', reqBytes('POST', '/api/v1/resolve?path=a', [], Buffer.from('x')));

  // --- headers ---------------------------------------------------------------------------
  add('80 KiB header', reqBytes('GET', '/v2/', [`X-Big: ${'a'.repeat(80 * 1024)}`]));
  add('2000 headers', reqBytes('GET', '/v2/', Array.from({ length: 2000 }, (_, i) => `X-H${i}: v`)));
  add('header name with spaces', reqBytes('GET', '/v2/', ['Bad Name: x']));
  add('header without colon', reqBytes('GET', '/v2/', ['NoColonHere']));
  add('header with NUL', reqBytes('GET', '/v2/', [Buffer.from('X-Nul: a\0b', 'latin1')]));
  add('header with bare CR', reqBytes('GET', '/v2/', [Buffer.from('X-Cr: a\rb', 'latin1')]));
  add('obs-fold header', reqBytes('GET', '/v2/', ['X-Fold: a', ' continued']));
  add('conflicting Content-Length', reqBytes('PUT', '/v2/a/manifests/x', [auth, 'Content-Length: 5', 'Content-Length: 6'], Buffer.from('hello'), false));
  add('negative Content-Length', reqBytes('PUT', '/v2/a/manifests/x', [auth, 'Content-Length: -1']));
  add('non-numeric Content-Length', reqBytes('PUT', '/v2/a/manifests/x', [auth, 'Content-Length: abc']));
  add('overflowing Content-Length', reqBytes('PUT', '/v2/a/manifests/x', [auth, 'Content-Length: 99999999999999999999999']));
  add('huge Content-Length on manifest', reqBytes('PUT', '/v2/a/manifests/x', [auth, `Content-Type: ${OCI_MANIFEST}`, 'Content-Length: 1000000000000'], Buffer.from('{}'), false));
  add('huge Content-Length on blob', reqBytes('POST', `/v2/a/blobs/uploads/?digest=${digest}`, [auth, 'Content-Length: 1000000000000'], Buffer.from('{}'), false));
  add('CL + TE', reqBytes('POST', '/v2/a/blobs/uploads/', [auth, 'Content-Length: 4', 'Transfer-Encoding: chunked'], Buffer.from('0\r\n\r\n'), false));
  add('TE gzip', reqBytes('POST', '/v2/a/blobs/uploads/', [auth, 'Transfer-Encoding: gzip'], Buffer.from('x'), false));
  add('TE chunked, bad chunk size', reqBytes('PATCH', sessions[0]!, [auth, 'Transfer-Encoding: chunked'], Buffer.from('zz\r\nabc\r\n0\r\n\r\n'), false));
  add('TE chunked, size overflow', reqBytes('PATCH', sessions[0]!, [auth, 'Transfer-Encoding: chunked'], Buffer.from('ffffffffffffffffff\r\nabc\r\n0\r\n\r\n'), false));
  add('TE chunked, truncated', reqBytes('PATCH', sessions[0]!, [auth, 'Transfer-Encoding: chunked'], Buffer.from('5\r\nab'), false));
  add('TE twice', reqBytes('POST', '/v2/a/blobs/uploads/', [auth, 'Transfer-Encoding: chunked', 'Transfer-Encoding: identity'], Buffer.from('0\r\n\r\n'), false));
  add('no Host', `GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n`);
  add('two Hosts', reqBytes('GET', '/v2/', ['Host: other.example']));
  add('Host garbage', Buffer.concat([Buffer.from('GET /v2/ HTTP/1.1\r\nHost: '), obsText(40), Buffer.from('\r\nConnection: close\r\n\r\n')]));
  add('Expect 100-continue', reqBytes('PUT', '/v2/a/manifests/x', [auth, 'Expect: 100-continue', `Content-Type: ${OCI_INDEX}`], Buffer.from('{}')));
  add('Expect garbage', reqBytes('PUT', '/v2/a/manifests/x', [auth, 'Expect: teapot'], Buffer.from('{}')));
  add('Upgrade websocket', reqBytes('GET', '/v2/', ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: x', 'Sec-WebSocket-Version: 13']));
  add('Upgrade h2c', reqBytes('GET', '/v2/', ['Upgrade: h2c', 'HTTP2-Settings: AAMAAABkAAQAAP__']));
  add('Accept garbage', reqBytes('GET', '/v2/a/manifests/latest', [Buffer.concat([Buffer.from('Accept: '), obsText(200)])]));
  add('Accept huge list', reqBytes('GET', '/v2/a/manifests/latest', [`Accept: ${'application/x;q=0.1, '.repeat(500)}`]));
  add('Range garbage', reqBytes('GET', `/v2/a/blobs/${digest}`, ['Range: bytes=--,,-9999999999999999999999-']));
  add('Range many', reqBytes('GET', `/v2/a/blobs/${digest}`, [`Range: bytes=${Array.from({ length: 1000 }, (_, i) => `${i}-${i}`).join(',')}`]));
  add('If-None-Match garbage', reqBytes('GET', '/v2/a/manifests/latest', [Buffer.concat([Buffer.from('If-None-Match: '), obsText(100)])]));
  add('Content-Type garbage on manifest', reqBytes('PUT', '/v2/a/manifests/x', [auth, Buffer.concat([Buffer.from('Content-Type: '), obsText(80)])], Buffer.from('{"schemaVersion":2}')));
  for (let i = 0; i < 20; i++) {
    add(`random header value #${i}`, reqBytes('GET', i % 2 ? '/v2/' : '/v2/a/manifests/latest', [Buffer.concat([Buffer.from(`X-R${i}: `), bytes(10 + Math.floor(rnd() * 200))])]));
  }
  for (let i = 0; i < 8; i++) add(`random header name #${i}`, reqBytes('GET', '/v2/', [Buffer.concat([bytes(5 + Math.floor(rnd() * 20)), Buffer.from(': v')])]));

  // --- Authorization -----------------------------------------------------------------------
  const authValues: Array<string | Buffer> = [
    'Basic', 'Basic ', 'Basic !!!', `Basic ${'A'.repeat(10_000)}`, `Bearer ${'x.'.repeat(2000)}`, 'Bearer a.b.c.d.e', 'Bearer ..', 'Digest x', 'NTLM TlRMTVNTUAAB',
    `Basic ${Buffer.from('\u0000:\u0000').toString('base64')}`, `Basic ${Buffer.from(`${'u'.repeat(5000)}:p`).toString('base64')}`, `Bearer ${Buffer.from('{"alg":"none"}').toString('base64url')}.e30.`,
  ];
  for (let i = 0; i < 10; i++) authValues.push(`Basic ${bytes(1 + Math.floor(rnd() * 60)).toString('base64')}`);
  for (let i = 0; i < 6; i++) authValues.push(`Bearer ${bytes(20).toString('base64url')}.${bytes(40).toString('base64url')}.${bytes(64).toString('base64url')}`);
  for (let i = 0; i < 6; i++) authValues.push(Buffer.concat([Buffer.from(rnd() < 0.5 ? 'Basic ' : 'Bearer '), obsText(30)]));
  authValues.forEach((v, i) => {
    const h = Buffer.isBuffer(v) ? Buffer.concat([Buffer.from('Authorization: '), v]) : `Authorization: ${v}`;
    const targets2 = ['/v2/', '/v2/corpus/x/blobs/uploads/', '/token?scope=repository:a:pull', '/v2/_catalog'];
    add(`auth #${i} ${String(v).slice(0, 20)}`, reqBytes(i % 4 === 1 ? 'POST' : 'GET', targets2[i % 4]!, [h]));
  });
  add('two Authorization headers', reqBytes('POST', '/v2/corpus/x/blobs/uploads/', [auth, 'Authorization: Basic Zm9vOmJhcg==']));

  // --- Content-Range and upload framing -----------------------------------------------------
  const ranges = ['', 'bytes', '0-', '-5', 'a-b', '5-1', '0-0-0', '0x1-0x2', 'bytes */*', '0-99999999999999999999', '٠-٩', '0-9/abc', '1-1', ' 0-4 ', '0-4\t'];
  ranges.forEach((cr, i) => {
    const body = Buffer.from('hello');
    add(`Content-Range ${JSON.stringify(cr)}`, reqBytes('PATCH', sessions[1 + (i % 3)]!, [auth, `Content-Range: ${cr}`, 'Content-Type: application/octet-stream'], body));
  });
  add('PUT upload, digest garbage', reqBytes('PUT', `${sessions[1]}?digest=${'%ff'.repeat(10)}`, [auth], Buffer.from('x')));
  add('PUT upload, digest list', reqBytes('PUT', `${sessions[1]}?digest=${digest}&digest=sha256:00`, [auth], Buffer.from('x')));
  add('PATCH body over limit', reqBytes('PATCH', sessions[2]!, [auth], Buffer.alloc(1024 * 1024 + 10, 7)));

  // --- bodies ----------------------------------------------------------------------------------
  const manifestTypes = [OCI_MANIFEST, OCI_INDEX, 'application/vnd.docker.distribution.manifest.v2+json', 'application/json', 'text/plain', ''];
  for (let i = 0; i < 18; i++) {
    const ct = manifestTypes[i % manifestTypes.length]!;
    add(`random manifest body #${i} (${ct || 'no type'})`, reqBytes('PUT', `/v2/corpus/m/manifests/r${i}`, [auth, ...(ct ? [`Content-Type: ${ct}`] : [])], bytes(1 + Math.floor(rnd() * 3000))));
  }
  const jsonBodies = [
    Buffer.concat([Buffer.from('{"schemaVersion":2,"mediaType":"'), Buffer.from([0xff, 0xfe, 0xfd]), Buffer.from('"}')]),
    Buffer.from('{"schemaVersion":2,"__proto__":{"polluted":true},"config":{"__proto__":{"x":1}}}'),
    Buffer.from('{"constructor":{"prototype":{"polluted":true}},"schemaVersion":2,"manifests":[]}'),
    Buffer.from(`{"schemaVersion":2,"mediaType":"${OCI_INDEX}","manifests":[${Array.from({ length: 20_000 }, () => `{"mediaType":"${OCI_MANIFEST}","digest":"${digest}","size":1}`).join(',')}]}`),
    Buffer.from(`{"schemaVersion":2,"config":{"mediaType":"a","digest":"${digest}","size":1e308},"layers":[]}`),
    Buffer.from(`${'['.repeat(200_000)}`),
    Buffer.from(`{"schemaVersion":2,"a":${'{"a":'.repeat(50_000)}1${'}'.repeat(50_000)}}`),
    Buffer.from('{"schemaVersion":2,"subject":{"mediaType":"x","digest":"sha256:zz","size":-0}}'),
    Buffer.from('\ufeff{"schemaVersion":2}'),
    Buffer.from('{"schemaVersion":2}\u0000garbage'),
    Buffer.from('null'),
    Buffer.from('{"schemaVersion":2,"mediaType":{"a":1},"manifests":"x"}'),
  ];
  jsonBodies.forEach((b, i) => add(`crafted JSON #${i}`, reqBytes('PUT', `/v2/corpus/m/manifests/j${i}`, [auth, `Content-Type: ${i % 2 ? OCI_INDEX : OCI_MANIFEST}`], b)));
  for (let i = 0; i < 6; i++) add(`random token form #${i}`, reqBytes('POST', '/token', ['Content-Type: application/x-www-form-urlencoded'], bytes(10 + Math.floor(rnd() * 500))));
  add('token form, huge', reqBytes('POST', '/token', ['Content-Type: application/x-www-form-urlencoded'], Buffer.alloc(200 * 1024, 0x61)));
  add('token form, password grant garbage', reqBytes('POST', '/token', [], Buffer.from('grant_type=password&username=%ff%fe&password=%00&scope=%ff')));
  add('body on GET /v2/', reqBytes('GET', '/v2/', [auth], bytes(3000)));
  add('body on DELETE', reqBytes('DELETE', `/v2/corpus/m/manifests/${digest}`, [auth], bytes(100)));
  for (let i = 0; i < 6; i++) add(`random blob, lying digest #${i}`, reqBytes('POST', `/v2/corpus/b/blobs/uploads/?digest=${digest}`, [auth], bytes(100 + Math.floor(rnd() * 5000))));

  // --- framing and non-HTTP bytes ------------------------------------------------------------
  add('empty request', Buffer.from('\r\n\r\n'));
  add('bare LF request', Buffer.from(`GET /v2/ HTTP/1.1\nHost: ${hp}\nConnection: close\n\n`));
  add('HTTP/0.9', Buffer.from('GET /v2/\r\n'));
  add('HTTP/2.0 over h1', Buffer.from(`GET /v2/ HTTP/2.0\r\nHost: ${hp}\r\n\r\n`));
  add('HTTP/1.2', Buffer.from(`GET /v2/ HTTP/1.2\r\nHost: ${hp}\r\nConnection: close\r\n\r\n`));
  add('HTTP/9.9', Buffer.from(`GET /v2/ HTTP/9.9\r\nHost: ${hp}\r\n\r\n`));
  add('h2 preface', Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
  add('TLS ClientHello', Buffer.from('16030100c8010000c40303' + '00'.repeat(190), 'hex'));
  add('SSH banner', Buffer.from('SSH-2.0-OpenSSH_9.0\r\n'));
  add('request line only', Buffer.from('GET /v2/ HTTP/1.1\r\n\r\n'));
  add('pipelined smuggling attempt', Buffer.from(`POST /v2/ HTTP/1.1\r\nHost: ${hp}\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/_catalog HTTP/1.1\r\nHost: ${hp}\r\nConnection: close\r\n\r\n`));
  add('pipelined requests', Buffer.from(`GET /v2/ HTTP/1.1\r\nHost: ${hp}\r\n\r\nGET /v2/../x HTTP/1.1\r\nHost: ${hp}\r\nConnection: close\r\n\r\n`));
  for (let i = 0; i < 10; i++) add(`random bytes #${i}`, bytes(1 + Math.floor(rnd() * 4000)));
  for (let i = 0; i < 6; i++) add(`random request line #${i}`, Buffer.from(`${printable(3 + Math.floor(rnd() * 8))} /${printable(10 + Math.floor(rnd() * 100))} HTTP/1.1\r\nHost: ${hp}\r\nConnection: close\r\n\r\n`));

  t.true(cases.length >= 100, `${cases.length} cases`);
  const outcomes = await pool(cases, 8, (c) => send(hp, c.bytes));
  const summary = new Map<string, number>();
  const fivexx: string[] = [];
  outcomes.forEach((o, i) => {
    const key = o.timedOut ? 'timeout' : o.status === 0 ? 'closed' : String(o.status);
    summary.set(key, (summary.get(key) ?? 0) + 1);
    if (o.status >= 500) fivexx.push(`${cases[i]!.name}: ${o.raw.replace(/\r\n/g, ' | ')}`);
  });
  t.log(`${cases.length} cases: ${[...summary].sort().map(([k, v]) => `${k}x${v}`).join(' ')}`);
  t.deepEqual(fivexx, [], 'no case answered 5xx');
  t.false(outcomes.some((o) => o.timedOut), 'every exchange ended (answered or closed) within 5 s');

  // Healthy afterwards.
  t.is((await http('GET', `${s.url}/v2/`, { headers: { authorization: ALICE } })).status, 200);
  const img = sampleImage('corpus-after');
  t.is((await pushImageWith(s.url, 'corpus/after', img, 'v1', { headers: { authorization: ALICE } })).status, 201);
  const pulled = await req('GET', `${s.url}/v2/corpus/after/manifests/v1`, { headers: { accept: img.manifest.mediaType } });
  t.is(pulled.status, 200);
  t.deepEqual(pulled.body, img.manifest.bytes);
  t.deepEqual((await req('GET', `${s.url}/v2/corpus/after/blobs/${img.layers[1]!.digest}`)).body, img.layers[1]!.bytes);
  const errors = s.logs.filter((l) => (JSON.parse(l) as { level: number }).level >= 50);
  t.deepEqual(errors.map((l) => l.slice(0, 400)), [], 'no error-level log lines');
  t.false(({} as Record<string, unknown>).polluted === true, 'no prototype pollution');
});
