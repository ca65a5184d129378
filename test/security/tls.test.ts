/**
 * TLS: HTTPS from a PEM cert chain + key, mutual TLS with a client CA, the optional
 * plain-HTTP listener (tls.httpListen), config validation, and certificate reload on
 * SIGHUP with the real CLI as a child process (kept-alive connections survive; new
 * connections get the new certificate; a broken new certificate keeps the old one).
 *
 * Certificates are generated per test with the openssl CLI (test/helpers/certs.ts).
 */
import test, { type ExecutionContext } from 'ava';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { ConfigError, configFromObject } from '../../src/config/load.js';
import { createPki, tlsAgent } from '../helpers/certs.js';
import { req } from '../helpers/authn.js';
import { sha256 } from '../helpers/http.js';
import { startServer, tempDir } from '../helpers/server.js';
import { exited, freePort, stopChild, waitFor } from '../helpers/tools.js';

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const CLI = path.join(REPO_ROOT, 'dist', 'cli.js');

/** Open a TLS connection (trusting `ca`) and resolve once the handshake is done. */
function connectTls(port: number, ca: Buffer, client?: { cert: Buffer; key: Buffer }): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port, ca, ...(client ?? {}) });
    sock.once('secureConnect', () => {
      sock.off('error', reject);
      resolve(sock);
    });
    sock.once('error', reject);
    sock.setTimeout(10_000, () => sock.destroy(new Error('TLS connect timed out')));
  });
}

/**
 * One HTTP/1.1 request on an open (keep-alive) socket; resolves with the status and body
 * once Content-Length bytes arrived, leaving the socket open for the next request.
 */
function exchange(sock: tls.TLSSocket, target: string): Promise<{ status: number; body: string; headers: string }> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => done(new Error(`no response to ${target} within 10 s`)), 10_000);
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const sep = buf.indexOf('\r\n\r\n');
      if (sep < 0) return;
      const head = buf.subarray(0, sep).toString('latin1');
      const len = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? '0');
      if (buf.length < sep + 4 + len) return;
      done(null, { status: Number(head.slice(9, 12)), body: buf.subarray(sep + 4, sep + 4 + len).toString('utf8'), headers: head });
    };
    const onClose = () => done(new Error(`connection closed before the response to ${target}`));
    const onError = (e: Error) => done(e);
    function done(err: Error | null, v?: { status: number; body: string; headers: string }) {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('close', onClose);
      sock.off('error', onError);
      if (err) reject(err);
      else resolve(v!);
    }
    sock.on('data', onData);
    sock.once('close', onClose);
    sock.once('error', onError);
    sock.write(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n`);
  });
}

test('HTTPS serves the configured chain: clients trusting only the root CA connect, others are refused', async (t) => {
  const pki = await createPki(t, 'srv');
  const leaf = await pki.issue('server');
  const s = await startServer(t, { tls: { cert: leaf.chain, key: leaf.key } });
  t.regex(s.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  const port = Number(s.hostPort.split(':')[1]);

  const trusting = await tlsAgent(pki.root.cert);
  t.teardown(() => trusting.close());
  const ok = await req('GET', `${s.url}/v2/`, { dispatcher: trusting });
  t.is(ok.status, 200);
  t.is(ok.header('docker-distribution-api-version'), 'registry/2.0');

  // The server sends leaf + intermediate; the intermediate is what links it to the root.
  const sock = await connectTls(port, await fs.readFile(pki.root.cert));
  const peer = sock.getPeerCertificate(true);
  t.is(peer.fingerprint256, leaf.fingerprint256);
  t.is(peer.issuer.CN, pki.intermediate.name);
  t.is(peer.issuerCertificate?.subject.CN, pki.intermediate.name);
  t.true(sock.authorized);
  sock.destroy();

  // A client without the CA (Node's default trust store) must fail verification.
  await t.throwsAsync(req('GET', `${s.url}/v2/`), { message: /certificate|self.signed|verify/i });
  // Plain HTTP spoken to the TLS port gets no registry answer.
  const plain = await req('GET', `http://${s.hostPort}/v2/`).catch((e: Error) => e);
  t.true(plain instanceof Error || plain.status >= 400, 'plain HTTP on the TLS port is not served');
});

test('a cert file without its intermediate does not verify (the chain in the PEM is what clients get)', async (t) => {
  const pki = await createPki(t, 'nochain');
  const leaf = await pki.issue('server');
  const s = await startServer(t, { tls: { cert: leaf.cert, key: leaf.key } });
  const trusting = await tlsAgent(pki.root.cert);
  t.teardown(() => trusting.close());
  await t.throwsAsync(req('GET', `${s.url}/v2/`, { dispatcher: trusting }), { message: /certificate|verify|issuer/i });
});

test('tls.httpListen: plain HTTP on loopback next to HTTPS, one registry behind both', async (t) => {
  const pki = await createPki(t, 'dual');
  const leaf = await pki.issue('server');
  const httpPort = await freePort();
  const s = await startServer(t, { tls: { cert: leaf.chain, key: leaf.key, httpListen: `127.0.0.1:${httpPort}` } });
  t.deepEqual(s.app.httpAddress(), { host: '127.0.0.1', port: httpPort });
  const trusting = await tlsAgent(pki.root.cert);
  t.teardown(() => trusting.close());

  const plainBase = `http://127.0.0.1:${httpPort}`;
  t.is((await req('GET', `${plainBase}/v2/`)).status, 200);
  const bytes = Buffer.from('pushed over plain http, read over https');
  const d = sha256(bytes);
  const put = await req('POST', `${plainBase}/v2/dual/app/blobs/uploads/?digest=${d}`, { body: bytes, headers: { 'content-type': 'application/octet-stream' } });
  t.is(put.status, 201);
  const got = await req('GET', `${s.url}/v2/dual/app/blobs/${d}`, { dispatcher: trusting });
  t.is(got.status, 200);
  t.deepEqual(got.body, bytes);
});

test('mutual TLS: a client certificate from the configured client CA is required', async (t) => {
  const pki = await createPki(t, 'mtls');
  const clients = await createPki(t, 'clients');
  const leaf = await pki.issue('server');
  const good = await clients.issue('client-good', { usage: 'client', issuer: clients.root });
  const foreign = await pki.issue('client-foreign', { usage: 'client', issuer: pki.root });
  const s = await startServer(t, { tls: { cert: leaf.chain, key: leaf.key, clientCA: clients.root.cert } });

  const noCert = await tlsAgent(pki.root.cert);
  const wrongCa = await tlsAgent(pki.root.cert, { cert: foreign.cert, key: foreign.key });
  const withCert = await tlsAgent(pki.root.cert, { cert: good.cert, key: good.key });
  t.teardown(() => Promise.all([noCert.close(), wrongCa.close(), withCert.close()]).then(() => undefined));

  await t.throwsAsync(req('GET', `${s.url}/v2/`, { dispatcher: noCert }), undefined, 'no client certificate');
  await t.throwsAsync(req('GET', `${s.url}/v2/`, { dispatcher: wrongCa }), undefined, 'client certificate from another CA');
  const ok = await req('GET', `${s.url}/v2/`, { dispatcher: withCert });
  t.is(ok.status, 200);
  // Still healthy for good clients after the refused handshakes.
  t.is((await req('GET', `${s.url}/v2/`, { dispatcher: withCert })).status, 200);
});

test('config: tls cert and key go together, files must exist, clientCA/httpListen need a cert', (t) => {
  const base = { listen: '127.0.0.1:0', storage: '/nonexistent-regmirror-test' };
  t.throws(() => configFromObject({ ...base, tls: { cert: '/etc/hostname' } }), { instanceOf: ConfigError, message: /cert and key/ });
  t.throws(() => configFromObject({ ...base, tls: { cert: '/nonexistent.crt', key: '/nonexistent.key' } }), { instanceOf: ConfigError, message: /does not exist/ });
  t.throws(() => configFromObject({ ...base, tls: { httpListen: '127.0.0.1:5080' } }), { instanceOf: ConfigError, message: /cert and key/ });
  t.throws(() => configFromObject({ ...base, tls: { cert: '/etc/hostname', key: '/etc/hostname', httpListen: 'nope' } }), { instanceOf: ConfigError, message: /httpListen/ });
  t.is(configFromObject(base).tls, null);
});

// ---------------------------------------------------------------------------
// SIGHUP reload with the real CLI

interface Cli {
  child: ChildProcess;
  port: number;
  output: string[];
  /** Resolves when a log line containing `text` appears after `from` lines. */
  waitLog(text: string, from: number): Promise<void>;
}

async function startCli(t: ExecutionContext, config: string): Promise<Cli> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`);
  const child = spawn(process.execPath, [CLI, 'serve', '--config', config], {
    cwd: path.dirname(config),
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', NODE_OPTIONS: '' },
  });
  t.teardown(() => stopChild(child, 'SIGTERM', 5_000));
  const output: string[] = [];
  let partial = '';
  const onData = (chunk: Buffer) => {
    const lines = (partial + chunk.toString('utf8')).split('\n');
    partial = lines.pop() ?? '';
    output.push(...lines);
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const url = await waitFor(
    () => {
      if (exited(child)) throw new Error(`server exited: ${output.join('\n')}`);
      for (const l of output) {
        if (!l.includes('regmirror listening')) continue;
        return (JSON.parse(l) as { url: string }).url;
      }
      return undefined;
    },
    20_000,
    'the "regmirror listening" line',
  );
  const m = /^https:\/\/127\.0\.0\.1:(\d+)$/.exec(url);
  if (!m) throw new Error(`unexpected listen url ${url}`);
  return {
    child,
    port: Number(m[1]),
    output,
    waitLog: async (text, from) => {
      await waitFor(() => (output.slice(from).some((l) => l.includes(text)) ? true : undefined), 10_000, `log line "${text}"`, 20);
    },
  };
}

test('SIGHUP reloads the certificate: kept-alive connections keep working, new connections see the new cert', async (t) => {
  const pki = await createPki(t, 'hup');
  const a = await pki.issue('server-a');
  const b = await pki.issue('server-b');
  t.not(a.fingerprint256, b.fingerprint256);
  const dir = await tempDir(t, 'regmirror-hup-');
  const certFile = path.join(dir, 'tls.crt');
  const keyFile = path.join(dir, 'tls.key');
  await fs.copyFile(a.chain, certFile);
  await fs.copyFile(a.key, keyFile);
  const config = path.join(dir, 'config.yml');
  await fs.writeFile(
    config,
    [
      'listen: 127.0.0.1:0',
      `storage: ${JSON.stringify(path.join(dir, 'storage'))}`,
      'log: { level: info }',
      `tls: { cert: ${JSON.stringify(certFile)}, key: ${JSON.stringify(keyFile)} }`,
      'upstreams: {}',
      'defaultUpstream: null',
      '',
    ].join('\n'),
  );
  const cli = await startCli(t, config);
  const ca = await fs.readFile(pki.root.cert);

  // A kept-alive connection made with certificate A.
  const kept = await connectTls(cli.port, ca);
  t.teardown(() => kept.destroy());
  t.is(kept.getPeerCertificate().fingerprint256, a.fingerprint256);
  t.is((await exchange(kept, '/v2/')).status, 200);

  // Swap the files to certificate B and signal.
  await fs.copyFile(b.key, keyFile);
  await fs.copyFile(b.chain, certFile);
  let mark = cli.output.length;
  process.kill(cli.child.pid!, 'SIGHUP');
  await cli.waitLog('TLS certificate reloaded', mark);
  t.false(exited(cli.child), 'SIGHUP does not stop the server');

  // The old connection is still open and still served, still on certificate A.
  t.false(kept.destroyed);
  const again = await exchange(kept, '/v2/');
  t.is(again.status, 200);
  t.is(again.body, '{}');
  t.is(kept.getPeerCertificate().fingerprint256, a.fingerprint256);

  // New connections get certificate B (and it verifies against the root via its chain).
  const fresh = await connectTls(cli.port, ca);
  t.is(fresh.getPeerCertificate().fingerprint256, b.fingerprint256);
  t.true(fresh.authorized);
  t.is((await exchange(fresh, '/v2/')).status, 200);
  fresh.destroy();

  // A broken certificate file on the next SIGHUP: logged, previous certificate kept.
  await fs.writeFile(certFile, '-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n');
  mark = cli.output.length;
  process.kill(cli.child.pid!, 'SIGHUP');
  await cli.waitLog('TLS reload failed', mark);
  t.false(exited(cli.child));
  const afterBad = await connectTls(cli.port, ca);
  t.is(afterBad.getPeerCertificate().fingerprint256, b.fingerprint256);
  t.is((await exchange(afterBad, '/v2/')).status, 200);
  afterBad.destroy();
  t.is((await exchange(kept, '/v2/')).status, 200, 'the first connection survived both reloads');
});
