#!/usr/bin/env node
/**
 * The reference for small requests (issue #14 item 2): a bare `node:http` server answering
 * fixed bodies with fixed headers, what this stack can do at best for a request of that
 * size. `bench/run.mjs` starts it as its own process (so its CPU is counted apart) with
 * `node bench/refserver.mjs <port> <routes.json>`; routes.json maps a path to
 * `{ headers, bodyFile }` captured from regmirror's own answer, so both send the same
 * headers and bytes. HEAD answers the headers without the body; `/v2/` answers `{}`
 * (readiness probe). Binds 127.0.0.1 only.
 */
import fs from 'node:fs';
import http from 'node:http';

const [port, routesFile] = process.argv.slice(2);
const routes = new Map();
for (const [p, r] of Object.entries(JSON.parse(fs.readFileSync(routesFile, 'utf8')))) {
  routes.set(p, { headers: r.headers, body: fs.readFileSync(r.bodyFile) });
}
routes.set('/v2/', { headers: { 'content-type': 'application/json', 'content-length': '2' }, body: Buffer.from('{}') });

const server = http.createServer((req, res) => {
  const r = routes.get(req.url);
  if (!r) {
    res.writeHead(404, { 'content-length': '0' });
    return res.end();
  }
  res.writeHead(200, r.headers);
  res.end(req.method === 'HEAD' ? undefined : r.body);
});
// As regmirror's default (http.keepAliveTimeout 65 s): neither closes benchmark connections.
server.keepAliveTimeout = 65_000;
server.listen(Number(port), '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
