/**
 * Turn a configured credential source into what goes on the wire. Files are read when
 * first needed and re-read when they change, so rotated keys take effect without restart.
 * Nothing here logs a secret; callers must not either.
 */
import fs from 'node:fs';
import type { CredentialsConfig } from '../config/schema.js';
import { KNOWN_REGISTRIES } from '../config/known.js';

export type WireCredentials = { kind: 'basic'; username: string; password: string } | { kind: 'bearer'; token: string } | null;

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
}

function readFileCached(): (file: string) => string {
  let cache: { file: string; mtimeMs: number; text: string } | null = null;
  return (file) => {
    const st = fs.statSync(file);
    if (!cache || cache.file !== file || cache.mtimeMs !== st.mtimeMs) cache = { file, mtimeMs: st.mtimeMs, text: fs.readFileSync(file, 'utf8') };
    return cache.text;
  };
}

/** Hosts a docker config.json may use as the key for this upstream. */
function candidateKeys(upstream: string, endpoints: readonly string[]): string[] {
  const keys = [upstream, ...(KNOWN_REGISTRIES[upstream]?.aliases ?? [])];
  if (upstream === 'docker.io') keys.push('https://index.docker.io/v1/', 'https://index.docker.io/v1');
  for (const e of endpoints) keys.push(new URL(e).host, e);
  return keys;
}

export function credentialSource(cfg: CredentialsConfig | null, upstream: string, endpoints: readonly string[]): () => WireCredentials {
  if (!cfg) return () => null;
  switch (cfg.kind) {
    case 'basic':
      return () => ({ kind: 'basic', username: cfg.username, password: cfg.password });
    case 'bearer':
      return () => ({ kind: 'bearer', token: cfg.token });
    case 'googleKey': {
      // GCR / Artifact Registry: Basic `_json_key` with the raw key file to the token endpoint.
      const read = readFileCached();
      return () => ({ kind: 'basic', username: '_json_key', password: read(cfg.file) });
    }
    case 'dockerConfig': {
      const read = readFileCached();
      return () => {
        const doc = JSON.parse(read(cfg.file)) as DockerConfigFile;
        for (const key of candidateKeys(upstream, endpoints)) {
          const e = doc.auths?.[key];
          if (!e) continue;
          if (e.username && e.password) return { kind: 'basic', username: e.username, password: e.password };
          if (e.auth) {
            const decoded = Buffer.from(e.auth, 'base64').toString('utf8');
            const i = decoded.indexOf(':');
            if (i > 0) return { kind: 'basic', username: decoded.slice(0, i), password: decoded.slice(i + 1) };
          }
        }
        return null;
      };
    }
  }
}
