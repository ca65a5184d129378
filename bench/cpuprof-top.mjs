/**
 * Summary of a V8 CPU profile (node --cpu-prof): self and inclusive milliseconds per
 * function (name, file:line), largest first. Inclusive time counts each sample once per
 * function on its stack, so a db.ts method's figure includes the native SQLite work it
 * called synchronously (better-sqlite3): where an eviction unit's time goes.
 * Usage: node bench/cpuprof-top.mjs <file.cpuprofile> [rows 25] [filter substring]
 */
import fs from 'node:fs';

const [file, rowsArg, filter] = process.argv.slice(2);
if (!file) throw new Error('usage: cpuprof-top.mjs <file.cpuprofile> [rows] [filter]');
const prof = JSON.parse(fs.readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const key = (n) => {
  const f = n.callFrame;
  const where = f.url ? `${f.url.replace(/^.*\/(dist|src|bench|node_modules)\//, '$1/')}:${f.lineNumber + 1}` : '';
  return `${f.functionName || '(anonymous)'} ${where}`.trim();
};
// Sample i lasted timeDeltas[i + 1] (the delta before the next sample); the last one ~0.
const self = new Map();
const incl = new Map();
for (let i = 0; i < prof.samples.length; i++) {
  const us = prof.timeDeltas[i + 1] ?? 0;
  let id = prof.samples[i];
  const k0 = key(byId.get(id));
  self.set(k0, (self.get(k0) ?? 0) + us);
  const seen = new Set();
  for (; id !== undefined; id = parent.get(id)) {
    const k = key(byId.get(id));
    if (seen.has(k)) continue;
    seen.add(k);
    incl.set(k, (incl.get(k) ?? 0) + us);
  }
}
const total = (prof.endTime - prof.startTime) / 1000;
const rows = Number(rowsArg ?? 25);
const pick = (m) =>
  [...m]
    .filter(([k]) => !filter || k.includes(filter))
    .sort((a, b) => b[1] - a[1])
    .slice(0, rows)
    .map(([k, us]) => `${(us / 1000).toFixed(0).padStart(8)} ms  ${k}`);
console.log(`profile ${total.toFixed(0)} ms, ${prof.samples.length} samples`);
console.log('-- self'), console.log(pick(self).join('\n'));
console.log('-- inclusive'), console.log(pick(incl).join('\n'));
