/**
 * OpenShift `ImageDigestMirrorSet` / `ImageTagMirrorSet` (config.openshift.io/v1, cluster
 * scoped; field names and patterns from openshift/api config/v1
 * types_image_digest_mirror_set.go / types_image_tag_mirror_set.go).
 *
 * MCO renders each entry into registries.conf on every node (`pull-from-mirror =
 * "digest-only"` for IDMS, `"tag-only"` for ITMS), so CRI-O asks the mirror for
 * `/v2/<mirror path>/<rest of the name>` without `?ns=`: the mirror path must name the
 * upstream, exactly as for registries.conf (a namespace prefix mapped to it, else its host).
 * `mirrorSourcePolicy` is left unset (= AllowContactingSource): the registry stays the
 * fallback when the mirror is down, as with the other generators.
 */
import type { Config } from '../../config/schema.js';
import { type ClientFiles, mirrorPaths, quote, skippedNote } from './common.js';

export type MirrorSetKind = 'idms' | 'itms';

const KINDS = {
  idms: { kind: 'ImageDigestMirrorSet', list: 'imageDigestMirrors', file: 'imagedigestmirrorset.yaml', by: 'digest' },
  itms: { kind: 'ImageTagMirrorSet', list: 'imageTagMirrors', file: 'imagetagmirrorset.yaml', by: 'tag' },
} as const;

export function mirrorSetFiles(config: Config, mirror: URL, kind: MirrorSetKind): ClientFiles {
  const k = KINDS[kind];
  const lines = [
    `# oc apply -f ${k.file}: the Machine Config Operator writes registries.conf on every node and`,
    `# CRI-O then pulls images referenced by ${k.by} through the mirror (the registry itself stays the fallback).`,
  ];
  if (mirror.protocol === 'http:') {
    lines.push(`# Plain http: also list ${mirror.host} in image.config.openshift.io/cluster spec.registrySources.insecureRegistries.`);
  }
  lines.push('apiVersion: config.openshift.io/v1', `kind: ${k.kind}`, 'metadata:', '  name: regmirror', 'spec:', `  ${k.list}:`);
  const { paths, skipped } = mirrorPaths(config);
  for (const { up, prefix } of paths) {
    lines.push(`    - source: ${quote(up.name)}`, '      mirrors:', `        - ${quote(`${mirror.host}/${prefix}`)}`);
  }
  for (const name of skipped) lines.push(skippedNote(name, '  #'));
  return { [k.file]: `${lines.join('\n')}\n` };
}
