/**
 * docker-compose.yml cannot be run here (no Docker engine), so at least check that it
 * agrees with what it starts: every variable config/docker.yml reads is passed, the
 * htpasswd path is the compose secret's mount, the volume is the config's storage, the
 * port is the one the config listens on, and the Dockerfile's CMD names the shipped config.
 */
import test from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import YAML from 'yaml';
import { REPO_ROOT } from '../helpers/cli.js';

const read = (f: string) => fs.readFile(path.join(REPO_ROOT, f), 'utf8');

interface Compose {
  services: Record<string, { environment?: Record<string, string>; volumes?: string[]; ports?: string[]; secrets?: string[] }>;
  secrets?: Record<string, { file?: string }>;
}

test('docker-compose.yml passes what config/docker.yml reads, mounts its storage and serves its port', async (t) => {
  const [composeText, configText, dockerfile] = await Promise.all([read('docker-compose.yml'), read('config/docker.yml'), read('Dockerfile')]);
  const compose = YAML.parse(composeText) as Compose;
  const svc = compose.services.regmirror!;
  const config = YAML.parse(configText) as { listen: string; storage: string; auth: { htpasswd: string } };
  const settings = configText.split('\n').filter((l) => !l.trim().startsWith('#')).join('\n');
  const vars = new Set([...settings.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]!));
  t.true(vars.has('DOCKERHUB_TOKEN') && vars.has('REGMIRROR_HTPASSWD'));
  // REGMIRROR_LISTEN keeps its default inside the container (the port mapping is compose's job).
  for (const v of [...vars].filter((v) => v !== 'REGMIRROR_LISTEN')) t.true(v in (svc.environment ?? {}), `compose passes ${v}`);
  const secret = svc.secrets?.[0];
  t.truthy(secret && compose.secrets?.[secret]?.file, 'the htpasswd secret comes from a file');
  t.is(svc.environment?.REGMIRROR_HTPASSWD, `/run/secrets/${secret}`);
  t.regex(config.auth.htpasswd, /^\$\{REGMIRROR_HTPASSWD:-\}$/);
  t.true((svc.volumes ?? []).some((v) => v.split(':')[1] === config.storage), `a volume at ${config.storage}`);
  t.true(dockerfile.includes(`VOLUME ${config.storage}`));
  const port = /:-[^}]*:(\d+)\}/.exec(config.listen)?.[1];
  t.is(port, '5000');
  t.deepEqual(svc.ports, [`${port}:${port}`]);
  t.true(dockerfile.includes(`EXPOSE ${port}`));
  t.true(dockerfile.includes('CMD ["serve", "--config", "/app/config/docker.yml"]'));
});
