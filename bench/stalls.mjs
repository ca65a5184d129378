/**
 * What blocked a process's event loop: reads a V8 CPU profile (`node --cpu-prof`) and prints
 * its longest busy stretches (consecutive samples not idle) with the functions that took
 * most of each, by self time. Used for the fill owner's stalls (results/ttfb-nonowner-4.md).
 *
 *   node bench/stalls.mjs <file.cpuprofile> [stretches=8] [minMs=5]
 */
import fs from 'node:fs';

const [file, nArg = '8', minArg = '5'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/stalls.mjs <file.cpuprofile> [stretches] [minMs]');
  process.exit(2);
}
const prof = JSON.parse(fs.readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const label = (n) => {
  const f = n.callFrame;
  const where = f.url ? `${f.url.replace(/^.*\/(node_modules|dist|build)\//, '$1/')}:${f.lineNumber + 1}` : '';
  return `${f.functionName || '(anonymous)'} ${where}`.trim();
};
const idle = (n) => n.callFrame.functionName === '(idle)';

// Busy stretches: runs of non-idle samples; a sample's duration is the next time delta.
const stretches = [];
let cur = null;
let t = 0;
for (let i = 0; i < prof.samples.length; i++) {
  t += prof.timeDeltas[i] / 1000;
  const node = byId.get(prof.samples[i]);
  const dt = (prof.timeDeltas[i + 1] ?? 0) / 1000;
  if (idle(node)) {
    if (cur) stretches.push(cur);
    cur = null;
    continue;
  }
  cur ??= { startMs: t, ms: 0, self: new Map() };
  cur.ms += dt;
  const k = label(node);
  cur.self.set(k, (cur.self.get(k) ?? 0) + dt);
}
if (cur) stretches.push(cur);

const total = stretches.reduce((a, s) => a + s.ms, 0);
const long = stretches.filter((s) => s.ms >= Number(minArg));
console.log(`${file}: ${stretches.length} busy stretches, ${total.toFixed(0)} ms busy; ${long.length} of >= ${minArg} ms`);
for (const s of [...long].sort((a, b) => b.ms - a.ms).slice(0, Number(nArg))) {
  const top = [...s.self].sort((a, b) => b[1] - a[1]).slice(0, 5);
  console.log(`\n${s.ms.toFixed(1)} ms at +${(s.startMs / 1000).toFixed(2)} s`);
  for (const [k, ms] of top) console.log(`  ${ms.toFixed(1).padStart(7)} ms  ${k}`);
}
