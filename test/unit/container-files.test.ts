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
import { parseConfigYaml } from '../../src/config/load.js';
import { REPO_ROOT } from '../helpers/cli.js';

const read = (f: string) => fs.readFile(path.join(REPO_ROOT, f), 'utf8');

interface Compose {
  services: Record<
    string,
    {
      environment?: Record<string, string>;
      volumes?: string[];
      ports?: string[];
      secrets?: string[];
      command?: string[];
      configs?: Array<{ source: string }>;
      hostname?: string;
    }
  >;
  secrets?: Record<string, { file?: string }>;
  configs?: Record<string, { content?: string }>;
}

/** The `${VAR}` names a config file's settings (not its comments) read. */
function configVars(configText: string): Set<string> {
  const settings = configText.split('\n').filter((l) => !l.trim().startsWith('#')).join('\n');
  return new Set([...settings.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1]!));
}

test('docker-compose.yml passes what config/docker.yml reads, mounts its storage and serves its port', async (t) => {
  const [composeText, configText, dockerfile] = await Promise.all([read('docker-compose.yml'), read('config/docker.yml'), read('Dockerfile')]);
  const compose = YAML.parse(composeText) as Compose;
  const svc = compose.services.regmirror!;
  const config = YAML.parse(configText) as { listen: string; storage: string; auth: { htpasswd: string } };
  const vars = configVars(configText);
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

test('docker-compose.ha.yml: two replicas on config/docker-ha.yml (shared driver), one token key, PostgreSQL, S3 and a balancer over both', async (t) => {
  const [composeText, configText] = await Promise.all([read('docker-compose.ha.yml'), read('config/docker-ha.yml')]);
  const compose = YAML.parse(composeText, { merge: true }) as Compose;
  const replicas = Object.keys(compose.services).filter((n) => n.startsWith('regmirror-'));
  t.deepEqual(replicas, ['regmirror-1', 'regmirror-2']);
  const vars = configVars(configText);
  const env: Record<string, string> = {};
  for (const name of replicas) {
    const svc = compose.services[name]!;
    t.deepEqual(svc.command, ['serve', '--config', '/app/config/docker-ha.yml']);
    t.true((svc.volumes ?? []).includes('./config/docker-ha.yml:/app/config/docker-ha.yml:ro'), `${name} mounts the config`);
    for (const v of vars) t.true(v in (svc.environment ?? {}), `${name} gets ${v}`);
    t.true(svc.secrets?.includes('token-key.pem'), `${name} has the shared token key`);
    Object.assign(env, svc.environment);
  }
  t.truthy(compose.secrets?.['token-key.pem']?.file);
  // The config as a replica reads it: shared driver on the compose services, the secret's key.
  // Long enough for any secret's minimum length (cluster.secret: 16).
  for (const v of vars) process.env[v] = env[v]?.startsWith('/') ? env[v] : 'x'.repeat(32);
  delete process.env.REGMIRROR_HTPASSWD;
  const cfg = parseConfigYaml(configText, 'docker-ha.yml');
  t.is(cfg.store.driver, 'shared');
  t.regex(cfg.store.postgres?.url ?? '', /@postgres:5432\//);
  t.regex(cfg.store.s3?.endpoint ?? '', /^http:\/\/minio:\d+$/);
  t.false(cfg.store.s3?.redirect, 'clients outside compose cannot reach http://minio');
  t.is(cfg.auth?.token?.key, '/run/secrets/token-key.pem');
  t.truthy(cfg.cluster.secret, 'replicas share fills over the internal endpoint');
  t.truthy(compose.services.postgres && compose.services.minio);
  t.is(compose.services.postgres!.environment?.POSTGRES_PASSWORD, env.REGMIRROR_PG_PASSWORD);
  t.is(compose.services.minio!.environment?.MINIO_ROOT_USER, env.REGMIRROR_S3_ACCESS_KEY);
  t.is(compose.services.minio!.environment?.MINIO_ROOT_PASSWORD, env.REGMIRROR_S3_SECRET_KEY);
  const lb = compose.services.lb!;
  t.deepEqual(lb.ports, ['5000:5000']);
  const nginx = compose.configs?.[lb.configs?.[0]?.source ?? '']?.content ?? '';
  for (const name of replicas) t.true(nginx.includes(`server ${name}:${cfg.listen.port}`), `the balancer sends to ${name} on the port it listens on`);
  // Fills between replicas: each advertises a URL the other can dial (its host name when
  // cluster.advertiseUrl is unset: a container's default is its id, which nothing resolves).
  t.is(cfg.listen.host, '0.0.0.0', 'listens on every interface (the balancer and the peers connect from outside)');
  for (const name of replicas) {
    const advertised = new URL(cfg.cluster.advertiseUrl ?? `http://${compose.services[name]!.hostname ?? 'container-id'}:${cfg.listen.port}`);
    t.true(replicas.includes(advertised.hostname), `${name} advertises ${advertised.href}, a host compose resolves`);
    t.is(Number(advertised.port), cfg.listen.port);
    t.is(compose.services[name]!.hostname, name, `${name}'s peers reach it as ${name}`);
  }
  t.is(new Set(replicas.map((n) => compose.services[n]!.hostname)).size, replicas.length, 'one host name per replica');
  // One secret for every replica's internal endpoint (a peer's bearer token is its own).
  t.is(new Set(replicas.map((n) => compose.services[n]!.environment?.REGMIRROR_CLUSTER_SECRET)).size, 1);
  // The database the URL names is the one compose creates, as its user.
  const pgUrl = new URL(cfg.store.postgres?.url ?? 'missing:');
  t.is(pgUrl.username, compose.services.postgres!.environment?.POSTGRES_USER ?? '(none)');
  t.is(pgUrl.pathname, `/${compose.services.postgres!.environment?.POSTGRES_DB ?? '(none)'}`);
  t.is(new URL(cfg.store.s3?.endpoint ?? 'missing:').port, '9000', "MinIO's API port");
  t.true(nginx.includes('client_max_body_size 0') && nginx.includes('proxy_request_buffering off'), 'pushes stream through');
});
