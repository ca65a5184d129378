/**
 * Anthos / GDC bare metal `registryMirrors` (cluster config file, formats.md §5): one
 * mirror entry whose `hosts` lists every upstream, so containerd on the nodes sends each
 * of those registries to the mirror with `?ns=<registry>`, which routes it. With a
 * namespace the endpoint is `<mirror>/v2/<prefix>` (the guide's form; `/v2` is required)
 * and the namespace must be `{upstream: ns}`, since one endpoint serves every registry.
 * `pullCredentialConfigPath` names a file on the admin workstation, written only as a
 * commented placeholder (never credentials).
 */
import type { Config } from '../../config/schema.js';
import { type ClientConfigOptions, type ClientFiles, quote, sortedUpstreams } from './common.js';

export function anthosFiles(config: Config, endpoint: string, opts: ClientConfigOptions): ClientFiles {
  const lines = [
    '# Paste into the bare-metal cluster config file (bmctl create/update cluster), top level.',
    'registryMirrors:',
    `  - endpoint: ${quote(endpoint)}`,
  ];
  if (opts.ca) lines.push(`    caCertPath: ${quote(opts.ca)}`);
  lines.push(
    '    # If the mirror requires a login (auth.rules): a Docker config.json with its credentials.',
    '    # pullCredentialConfigPath: "/root/.docker/config.json"',
    '    hosts:',
    ...sortedUpstreams(config).map((up) => `      - ${quote(up.name)}`),
  );
  return { 'registry-mirrors.yaml': `${lines.join('\n')}\n` };
}
