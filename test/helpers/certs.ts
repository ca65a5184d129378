/**
 * A throw-away PKI for TLS tests, made with the openssl CLI in a temp dir:
 *
 *   root CA  ──signs──>  intermediate CA  ──signs──>  server / client leaf certificates
 *
 * `issue()` returns the leaf alone (`cert`) and the leaf followed by its intermediate
 * (`chain`), which is what a server's cert file holds ("PEM with chain"): clients trust
 * only the root, so a handshake succeeds only if the server really sends the chain.
 * EC P-256 keys, SANs for 127.0.0.1/localhost, proper key usages (Go's crypto/x509, used
 * by skopeo and containerd, insists on SANs and on CA:TRUE for issuers).
 */
import { X509Certificate, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { Agent } from 'undici';
import { tempDir } from './server.js';
import { requireTool, runOk } from './tools.js';

const OPENSSL_TIMEOUT_MS = 20_000;

export interface Ca {
  name: string;
  /** PEM file of this CA's certificate. */
  cert: string;
  key: string;
}

export interface Leaf {
  /** The leaf certificate alone. */
  cert: string;
  /** Leaf + intermediate (when issued by an intermediate): a server's cert file. */
  chain: string;
  key: string;
  /** SHA-256 fingerprint as node's getPeerCertificate().fingerprint256 prints it. */
  fingerprint256: string;
}

export interface Pki {
  dir: string;
  root: Ca;
  intermediate: Ca;
  /** Issue a leaf under the intermediate (default) or directly under the root. */
  issue(name: string, opts?: { usage?: 'server' | 'client'; sans?: string[]; issuer?: Ca }): Promise<Leaf>;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await runOk(requireTool('openssl', 'openssl'), args, { cwd, timeoutMs: OPENSSL_TIMEOUT_MS, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: cwd } });
}

const KEY_ARGS = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function serial(): string {
  // Positive, 64 bits, never starting with 0 (some parsers dislike leading zero bytes).
  return `0x4${randomBytes(8).toString('hex').slice(1)}`;
}

async function selfSignedCa(dir: string, name: string): Promise<Ca> {
  const cert = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  await openssl(
    [
      'req', '-x509', ...KEY_ARGS, '-keyout', key, '-out', cert, '-days', '3', '-subj', `/CN=${name}`, '-set_serial', serial(),
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
      '-addext', 'subjectKeyIdentifier=hash',
    ],
    dir,
  );
  return { name, cert, key };
}

async function signed(dir: string, name: string, issuer: Ca, extensions: string[]): Promise<{ cert: string; key: string }> {
  const cert = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const ext = path.join(dir, `${name}.ext`);
  await fs.writeFile(ext, `[v3]\n${extensions.join('\n')}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n`);
  await openssl(['req', '-new', ...KEY_ARGS, '-keyout', key, '-out', csr, '-subj', `/CN=${name}`], dir);
  await openssl(
    ['x509', '-req', '-in', csr, '-CA', issuer.cert, '-CAkey', issuer.key, '-set_serial', serial(), '-days', '2', '-out', cert, '-extfile', ext, '-extensions', 'v3'],
    dir,
  );
  return { cert, key };
}

/** A root CA plus an intermediate, in a temp dir removed at teardown. */
export async function createPki(t: ExecutionContext, label = 'pki'): Promise<Pki> {
  const dir = await tempDir(t, `regmirror-${label}-`);
  const root = await selfSignedCa(dir, `${label}-root`);
  const int = await signed(dir, `${label}-intermediate`, root, ['basicConstraints=critical,CA:TRUE,pathlen:0', 'keyUsage=critical,keyCertSign,cRLSign']);
  const intermediate: Ca = { name: `${label}-intermediate`, ...int };
  let n = 0;
  return {
    dir,
    root,
    intermediate,
    async issue(name, opts = {}) {
      const usage = opts.usage ?? 'server';
      const issuer = opts.issuer ?? intermediate;
      const sans = opts.sans ?? ['IP:127.0.0.1', 'DNS:localhost'];
      const leafName = `${name}-${++n}`;
      const ext = [
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment',
        `extendedKeyUsage=${usage === 'server' ? 'serverAuth' : 'clientAuth'}`,
        ...(usage === 'server' || opts.sans ? [`subjectAltName=${sans.join(',')}`] : []),
      ];
      const leaf = await signed(dir, leafName, issuer, ext);
      const chain = path.join(dir, `${leafName}.chain.pem`);
      const leafPem = await fs.readFile(leaf.cert, 'utf8');
      const issuerPem = issuer === root ? '' : await fs.readFile(issuer.cert, 'utf8');
      await fs.writeFile(chain, leafPem + issuerPem);
      return { cert: leaf.cert, chain, key: leaf.key, fingerprint256: new X509Certificate(leafPem).fingerprint256 };
    },
  };
}

/** An undici Agent that trusts `caFile` (and presents a client certificate when given). */
export async function tlsAgent(caFile: string, client?: { cert: string; key: string }): Promise<Agent> {
  const ca = await fs.readFile(caFile);
  const extra = client ? { cert: await fs.readFile(client.cert), key: await fs.readFile(client.key) } : {};
  return new Agent({ keepAliveTimeout: 10, keepAliveMaxTimeout: 10, connect: { ca, ...extra } });
}
