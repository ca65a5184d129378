#!/usr/bin/env node
/**
 * regmirror command line: `serve`, the offline storage tools (`gc [--evict]`, `fsck`),
 * `config check|default`, and the node-side helpers (`client-config`, `prefetch`). Loads
 * config once, builds the app, handles signals.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from './config/load.js';
import { DEFAULT_CONFIG_YAML } from './config/schema.js';
import { createLogger } from './ops/logger.js';
import { ClientConfigError } from './ops/clientconfig/common.js';

// Each command's modules are imported when it runs: `serve` then never loads the client
// side (undici's whole index for prefetch/import/export, tar-stream), which a long-running
// process would hold for nothing (issue #14 item 3).

const USAGE = `usage: regmirror <command> [options]

commands:
  serve [--config FILE]          run the registry mirror (embedded default config without --config)
  gc [--config FILE] [--dry-run] [--evict]
                                 remove blobs and manifests no repository references;
                                 --evict first applies cache.maxAge and cache.maxBytes
  fsck [--config FILE] [--repair]
                                 re-hash every stored blob (shared storage: also list
                                 content without a row); --repair drops damaged cached
                                 blobs (refetched on the next pull) and those orphans
                                 (locally gc removes them); exit 1 if damage remains.
                                 Shared storage: online, under the gc-leader lease
  config check --config FILE     validate a config file and exit
  config default                 print the embedded default config
  client-config <containerd|containerd-legacy|k3s|registries.conf|idms|itms|anthos>
                --mirror URL [--config FILE] [--ca FILE] [--namespace PREFIX] [--out DIR]
                                 node configuration pointing every configured upstream at
                                 this mirror (containerd hosts.toml per registry, the
                                 legacy containerd 1.x CRI registry.mirrors/configs for
                                 config.toml, k3s/RKE2 registries.yaml, CRI-O/podman
                                 registries.conf, OpenShift ImageDigestMirrorSet /
                                 ImageTagMirrorSet, Anthos bare-metal registryMirrors);
                                 printed, or written under DIR
  prefetch --mirror URL [--file LIST] [--platform OS/ARCH ...] [--user USER:PASS] [IMAGE ...]
                                 pull images through a running mirror (all of an index's
                                 platforms unless --platform), so a rollout finds them
                                 cached; LIST has one image per line (# comments)
  export --mirror URL -o FILE [--file LIST] [--platform OS/ARCH ...] [--gzip] [--user USER:PASS] [IMAGE ...]
                                 write an OCI image layout tar of images (repository paths
                                 on the mirror, REPO:TAG or REPO@DIGEST), pulled through
                                 first if not held; all platforms unless --platform
  import --mirror URL (--namespace PREFIX | --repository NAME) [--user USER:PASS] FILE...
                                 stream image archives (OCI tar, .tar.gz, .tar.xz, bundles)
                                 into a mirror; progress bar on a terminal, JSON lines
                                 otherwise; exit 1 if any archive or image failed
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      'dry-run': { type: 'boolean' },
      evict: { type: 'boolean' },
      repair: { type: 'boolean' },
      mirror: { type: 'string' },
      ca: { type: 'string' },
      namespace: { type: 'string' },
      out: { type: 'string' },
      file: { type: 'string' },
      platform: { type: 'string', multiple: true },
      user: { type: 'string' },
      output: { type: 'string', short: 'o' },
      gzip: { type: 'boolean' },
      repository: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const [cmd, sub] = positionals;
  if (values.help || !cmd) {
    process.stdout.write(USAGE);
    return cmd ? 0 : 2;
  }
  switch (cmd) {
    case 'serve': {
      const config = loadConfig(values.config);
      const logger = createLogger(config);
      const { buildApp } = await import('./app.js');
      const app = await buildApp(config, { logger });
      const addr = await app.listen();
      logger.info({ url: addr.url, storage: config.storage }, 'regmirror listening');
      let closing = false;
      const stop = (signal: string) => {
        if (closing) return;
        closing = true;
        logger.info({ signal }, 'shutting down');
        app.close().then(
          () => process.exit(0),
          () => process.exit(1),
        );
      };
      process.on('SIGHUP', () => {
        try {
          app.reloadTls();
        } catch (err) {
          logger.error({ err }, 'TLS reload failed; keeping the previous certificate');
        }
      });
      process.on('SIGINT', () => stop('SIGINT'));
      process.on('SIGTERM', () => stop('SIGTERM'));
      return -1; // keep running
    }
    case 'gc': {
      const config = loadConfig(values.config);
      const evict = values.evict === true;
      if (evict && config.cache.maxBytes === null && config.cache.maxAgeMs === null) {
        process.stderr.write('regmirror: --evict: neither cache.maxBytes nor cache.maxAge is set; nothing is evicted\n');
      }
      const { collectGarbage } = await import('./ops/gc.js');
      const result = await collectGarbage(config, { dryRun: values['dry-run'] === true, evict });
      process.stdout.write(`${JSON.stringify(result)}\n`);
      return 0;
    }
    case 'fsck': {
      const { fsck } = await import('./ops/fsck.js');
      const result = await fsck(loadConfig(values.config), { repair: values.repair === true });
      process.stdout.write(`${JSON.stringify(result)}\n`);
      return result.problems.some((p) => !p.repaired) || (result.counters && !result.counters.repaired) ? 1 : 0;
    }
    case 'config':
      if (sub === 'default') {
        process.stdout.write(DEFAULT_CONFIG_YAML);
        return 0;
      }
      if (sub === 'check') {
        loadConfig(values.config);
        process.stdout.write('config ok\n');
        return 0;
      }
      process.stderr.write(USAGE);
      return 2;
    case 'client-config': {
      const { CLIENT_KINDS, clientConfig, isClientKind } = await import('./ops/clientconfig.js');
      if (!sub || !isClientKind(sub)) {
        process.stderr.write(`regmirror: client-config needs one of ${CLIENT_KINDS.join(', ')}\n`);
        return 2;
      }
      if (!values.mirror) {
        process.stderr.write('regmirror: client-config needs --mirror URL (the mirror as nodes reach it)\n');
        return 2;
      }
      const config = loadConfig(values.config);
      const files = clientConfig(config, sub, { mirror: values.mirror, ca: values.ca, namespace: values.namespace });
      for (const [rel, content] of Object.entries(files)) {
        if (values.out) {
          const file = path.join(values.out, rel);
          await fs.mkdir(path.dirname(file), { recursive: true });
          await fs.writeFile(file, content);
          process.stdout.write(`wrote ${file}\n`);
        } else {
          process.stdout.write(`# ==> ${rel} <==\n${content}\n`);
        }
      }
      return 0;
    }
    case 'prefetch': {
      if (!values.mirror) {
        process.stderr.write('regmirror: prefetch needs --mirror URL\n');
        return 2;
      }
      const images = positionals.slice(1);
      if (values.file) {
        const text = await fs.readFile(values.file, 'utf8');
        images.push(...text.split('\n').map((l) => l.replace(/#.*/, '').trim()).filter(Boolean));
      }
      if (images.length === 0) {
        process.stderr.write('regmirror: prefetch needs images (arguments or --file)\n');
        return 2;
      }
      const { prefetchImage } = await import('./ops/prefetch.js');
      let failed = 0;
      for (const image of images) {
        const r = await prefetchImage(image, { mirror: values.mirror, platforms: values.platform ?? [], user: values.user });
        if (r.error) failed++;
        process.stdout.write(`${JSON.stringify(r)}\n`);
      }
      return failed > 0 ? 1 : 0;
    }
    case 'export':
      return (await import('./ops/export.js')).exportCommand(values, positionals.slice(1));
    case 'import': {
      const files = positionals.slice(1);
      if (!values.mirror || files.length === 0 || (values.namespace === undefined) === (values.repository === undefined)) {
        process.stderr.write('regmirror: import needs --mirror URL, one of --namespace or --repository, and files\n');
        return 2;
      }
      const { importFiles } = await import('./ops/importclient.js');
      return importFiles(files, { mirror: values.mirror, namespace: values.namespace, repository: values.repository, user: values.user, tty: process.stdout.isTTY === true, out: process.stdout });
    }
    default:
      process.stderr.write(`unknown command: ${cmd}\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ConfigError) process.stderr.write(`regmirror: config error: ${err.message}\n`);
    else if (err instanceof ClientConfigError) process.stderr.write(`regmirror: client-config: ${err.message}\n`);
    else process.stderr.write(`regmirror: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
