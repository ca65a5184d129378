/**
 * The install keeps working when npm blocks unreviewed install scripts (npm 11 warns,
 * its next major blocks them by default, and then better-sqlite3 would not be built and
 * the server would not start). package.json `allowScripts` approves better-sqlite3 by
 * name: the lockfile carries no `resolved` URLs, so npm cannot match a pinned
 * `better-sqlite3@<version>` entry (that is what `npm approve-scripts better-sqlite3` writes here).
 *
 *  - `npm ci --dry-run --strict-allow-scripts` over the whole lockfile (dev dependencies
 *    too) passes without the "not yet covered by allowScripts" warning; the same lockfile
 *    without the approval fails with ESTRICTALLOWSCRIPTS naming better-sqlite3;
 *  - a real `npm ci --omit=dev --strict-allow-scripts` runs better-sqlite3's install
 *    script. `--script-shell` points at a recorder, so the command is logged instead of
 *    compiling SQLite (minutes on 2 cores); a denied (`false`) package's script would not
 *    reach the shell at all, so this also tells "approved" from "denied".
 *
 * Everything runs in a temp copy of package.json + package-lock.json, never in this
 * checkout's node_modules. Tarballs come from npm's cache (--prefer-offline) or the registry.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../helpers/server.js';
import { type RunResult, requireTool, run } from '../helpers/tools.js';

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const WARNING = /not yet covered by allowScripts/i;

interface PackageJson {
  allowScripts?: Record<string, boolean>;
}

async function readPackageJson(): Promise<PackageJson> {
  return JSON.parse(await fs.readFile(path.join(REPO_ROOT, 'package.json'), 'utf8')) as PackageJson;
}

/** A temp project: the repository's lockfile and the given package.json. */
async function project(t: ExecutionContext, pkg: PackageJson): Promise<string> {
  const dir = await tempDir(t, 'regmirror-install-');
  await fs.writeFile(path.join(dir, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`);
  await fs.copyFile(path.join(REPO_ROOT, 'package-lock.json'), path.join(dir, 'package-lock.json'));
  return dir;
}

/**
 * npm in `cwd` with the user's npm config (registry, cache) but nothing inherited from an
 * outer `npm test` (its npm_config_* variables would override the flags under test).
 */
function npm(cwd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v;
  return run(requireTool('npm', 'npm'), [...args, '--no-audit', '--no-fund', '--update-notifier=false'], { cwd, env, timeoutMs });
}

const out = (r: RunResult) => `exit ${r.code}${r.timedOut ? ' (timed out)' : ''}\n${r.stderr.slice(-3000)}\n${r.stdout.slice(-1000)}`;

test('allowScripts covers every install script in the lockfile: npm ci --strict-allow-scripts passes, without it fails', async (t) => {
  const pkg = await readPackageJson();
  t.is(pkg.allowScripts?.['better-sqlite3'], true, 'better-sqlite3 approved (by name)');

  const approved = await npm(await project(t, pkg), ['ci', '--dry-run', '--strict-allow-scripts', '--prefer-offline'], 120_000);
  t.is(approved.code, 0, out(approved));
  t.notRegex(approved.stdout + approved.stderr, WARNING);
  t.notRegex(approved.stderr, /ESTRICTALLOWSCRIPTS/);
  t.log(`npm ci --dry-run --strict-allow-scripts: ${approved.ms} ms`);

  // The check has teeth: the same lockfile without better-sqlite3's approval is refused.
  const unapproved = { ...pkg, allowScripts: { ...pkg.allowScripts } };
  delete unapproved.allowScripts['better-sqlite3'];
  const refused = await npm(await project(t, unapproved), ['ci', '--dry-run', '--strict-allow-scripts', '--prefer-offline'], 120_000);
  t.not(refused.code, 0, 'unreviewed install script refused');
  t.regex(refused.stderr, /ESTRICTALLOWSCRIPTS/);
  t.regex(refused.stderr, /better-sqlite3@\d/);
  // Every other install script is reviewed (protobufjs's postinstall only prints a version
  // warning and is denied), so better-sqlite3 is the only one left uncovered.
  t.regex(refused.stderr, /\b1 package\(s\) have install scripts/, 'better-sqlite3 is the only uncovered install script');
});

test('npm ci --omit=dev --strict-allow-scripts runs better-sqlite3 install script (recorded, not compiled)', async (t) => {
  t.timeout(5 * 60_000);
  const pkg = await readPackageJson();
  const dir = await project(t, pkg);
  const work = await tempDir(t, 'regmirror-install-shell-');
  const log = path.join(work, 'scripts.log');
  const shell = path.join(work, 'record.sh');
  // npm runs `<script-shell> -c <command>` in the package directory.
  await fs.writeFile(shell, `#!/bin/sh\nprintf '%s\\t%s\\t%s\\n' "$npm_lifecycle_event" "$PWD" "$2" >> '${log}'\n`, { mode: 0o755 });

  const r = await npm(dir, ['ci', '--omit=dev', '--strict-allow-scripts', '--prefer-offline', `--script-shell=${shell}`], 240_000);
  t.is(r.code, 0, out(r));
  t.notRegex(r.stdout + r.stderr, WARNING);
  t.log(`npm ci --omit=dev --strict-allow-scripts: ${r.ms} ms`);

  const installed = JSON.parse(await fs.readFile(path.join(dir, 'node_modules/better-sqlite3/package.json'), 'utf8')) as { scripts?: Record<string, string> };
  const expected = installed.scripts?.install;
  t.truthy(expected, 'better-sqlite3 has an install script');
  const runs = (await fs.readFile(log, 'utf8').catch(() => ''))
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split('\t'));
  t.deepEqual(
    runs.map(([event, cwd, cmd]) => [event, path.relative(dir, cwd!), cmd]),
    [['install', path.join('node_modules', 'better-sqlite3'), expected]],
    'exactly better-sqlite3 install script ran',
  );
});
