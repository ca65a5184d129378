/**
 * Access rules: first rule whose repository pattern matches decides who may pull, push
 * and delete. Principals: `anonymous` (everyone), `authenticated` (any signed-in user),
 * a user name, or `group:<name>`. Pure functions, table-tested.
 */
export type Action = 'pull' | 'push' | 'delete';

export interface AccessRule {
  readonly repositories: string;
  readonly matcher: RegExp;
  readonly pull: readonly string[];
  readonly push: readonly string[];
  readonly delete: readonly string[];
}

/** `*` matches within one path component, `**` across components. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      // `a/**` also matches `a` itself.
      if (glob[i + 2] === undefined && re.endsWith('/')) re = `${re.slice(0, -1)}(?:/.*)?`;
      else re += '.*';
      i++;
    } else if (c === '*') re += '[^/]*';
    else re += c.replace(/[.+?^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

export function makeRule(repositories: string, pull: string[], push: string[], del: string[]): AccessRule {
  return { repositories, matcher: globToRegExp(repositories), pull, push, delete: del };
}

export interface Principal {
  /** null for anonymous requests. */
  user: string | null;
  groups: readonly string[];
}

export const DEFAULT_RULES: readonly AccessRule[] = [makeRule('**', ['anonymous'], ['authenticated'], ['authenticated'])];

function matchesPrincipal(entries: readonly string[], p: Principal): boolean {
  for (const e of entries) {
    if (e === 'anonymous') return true;
    if (p.user === null) continue;
    if (e === 'authenticated' || e === p.user) return true;
    if (e.startsWith('group:') && p.groups.includes(e.slice(6))) return true;
  }
  return false;
}

export function isAllowed(rules: readonly AccessRule[], repo: string, action: Action, p: Principal): boolean {
  const rule = rules.find((r) => r.matcher.test(repo));
  if (!rule) return false;
  return matchesPrincipal(rule[action], p);
}

/** The subset of `actions` the principal holds on `repo` (token scopes are intersected). */
export function allowedActions(rules: readonly AccessRule[], repo: string, actions: readonly Action[], p: Principal): Action[] {
  return actions.filter((a) => isAllowed(rules, repo, a, p));
}
