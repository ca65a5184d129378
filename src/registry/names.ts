/**
 * Pure parsers for repository names, tags, digests and references
 * (distribution-spec "Pulling manifests" grammar; image-spec descriptor.md for digests).
 * Values that pass are branded, so storage and SQL only ever see checked strings.
 */
import { RegistryError } from './errors.js';

export type RepoName = string & { readonly __brand: 'RepoName' };
export type Tag = string & { readonly __brand: 'Tag' };
export type Digest = string & { readonly __brand: 'Digest' };
export type DigestAlgorithm = 'sha256' | 'sha512';

const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const DIGEST_RE = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
/** Any well-formed digest, including algorithms we do not implement. */
const DIGEST_GRAMMAR_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** Clients limit `host[:port]/name` to 255 characters; keep room for the host. */
export const MAX_NAME_LENGTH = 255;

export function parseRepoName(raw: string): RepoName {
  if (raw.length === 0 || raw.length > MAX_NAME_LENGTH || !NAME_RE.test(raw)) {
    throw new RegistryError('NAME_INVALID', 'invalid repository name', { detail: { name: raw.slice(0, 300) } });
  }
  return raw as RepoName;
}

export function parseTag(raw: string): Tag {
  if (!TAG_RE.test(raw)) throw new RegistryError('TAG_INVALID', 'invalid tag', { detail: { tag: raw.slice(0, 200) } });
  return raw as Tag;
}

export function isDigest(raw: string): raw is Digest {
  return DIGEST_RE.test(raw);
}

export function parseDigest(raw: string): Digest {
  if (!DIGEST_RE.test(raw)) {
    const detail = { digest: raw.slice(0, 200) };
    if (DIGEST_GRAMMAR_RE.test(raw) && !raw.startsWith('sha256:') && !raw.startsWith('sha512:')) {
      throw new RegistryError('DIGEST_INVALID', 'unsupported digest algorithm', { detail });
    }
    throw new RegistryError('DIGEST_INVALID', 'invalid digest', { detail });
  }
  return raw as Digest;
}

export function digestAlgorithm(d: Digest): DigestAlgorithm {
  return d.startsWith('sha512:') ? 'sha512' : 'sha256';
}

export function digestHex(d: Digest): string {
  return d.slice(d.indexOf(':') + 1);
}

export type Reference = { kind: 'tag'; tag: Tag } | { kind: 'digest'; digest: Digest };

/** A manifest reference is a tag or a digest; anything with ':' is a digest attempt. */
export function parseReference(raw: string): Reference {
  if (raw.includes(':')) return { kind: 'digest', digest: parseDigest(raw) };
  if (!TAG_RE.test(raw)) {
    throw new RegistryError('TAG_INVALID', 'invalid tag', { detail: { reference: raw.slice(0, 200) } });
  }
  return { kind: 'tag', tag: raw as Tag };
}
