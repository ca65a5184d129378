/**
 * ops/grafana/regmirror-dashboard.json stays in step with the metrics: valid dashboard
 * JSON, every metric it queries exists, and every metric it filters by `upstream` has
 * that label.
 */
import fs from 'node:fs/promises';
import test from 'ava';
import { Metrics } from '../../src/ops/metrics.js';

interface Panel {
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  targets: Array<{ expr: string; refId: string }>;
}

test('the Grafana dashboard is valid JSON and queries only metrics (and labels) regmirror exports', async (t) => {
  const doc = JSON.parse(await fs.readFile(new URL('../../../ops/grafana/regmirror-dashboard.json', import.meta.url), 'utf8')) as {
    title: string;
    uid: string;
    schemaVersion: number;
    panels: Panel[];
    templating: { list: Array<{ name: string; query: { query: string } }> };
  };
  t.is(doc.title, 'regmirror');
  t.true(doc.uid.length > 0 && doc.uid.length <= 40);
  t.true(Number.isInteger(doc.schemaVersion));
  t.true(doc.panels.length > 0);
  const ids = new Set<number>();
  const metrics = new Metrics({ inflightFills: () => 0, cachedBytes: () => 0 });
  const exported = new Map((await metrics.registry.getMetricsAsJSON()).map((m) => [m.name, m]));
  // Which label names each metric has: from a sample line after one labelled increment.
  metrics.cacheResults.inc({ kind: 'blob', result: 'hit', upstream: 'x' });
  metrics.blobBytesServed.inc({ source: 'disk', upstream: 'x' });
  metrics.upstreamBytes.inc({ upstream: 'x' });
  metrics.upstreamRequests.inc({ upstream: 'x', method: 'GET', status: '200' });
  metrics.rateLimitRemaining.set({ upstream: 'x' }, 1);
  const text = await metrics.registry.metrics();
  let queried = 0;
  for (const p of doc.panels) {
    t.true(['timeseries', 'stat'].includes(p.type), p.title);
    t.true(p.gridPos.w > 0 && p.gridPos.h > 0, p.title);
    for (const target of p.targets) {
      for (const m of target.expr.matchAll(/(regmirror_[a-z_]+)(\{[^}]*\})?/g)) {
        const name = m[1]!;
        queried++;
        t.true(exported.has(name), `${p.title}: ${name} is exported`);
        if (m[2]?.includes('upstream')) t.true(new RegExp(`^${name}\\{[^}]*upstream="x"`, 'm').test(text), `${p.title}: ${name} has an upstream label`);
      }
    }
    t.false(ids.has((p as unknown as { id: number }).id), 'panel ids unique');
    ids.add((p as unknown as { id: number }).id);
  }
  t.true(queried >= 10);
  const upstreamVar = doc.templating.list.find((v) => v.name === 'upstream');
  t.truthy(upstreamVar);
  t.regex(upstreamVar!.query.query, /regmirror_cache_requests_total, upstream/);
});
