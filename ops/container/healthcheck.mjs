// The image's HEALTHCHECK: GET /healthz on the port config/docker.yml listens on
// (REGMIRROR_LISTEN, default 5000), with node itself (slim and distroless bases have no
// curl). Exit 0 = healthy. Plain HTTP on 127.0.0.1: with tls.* or a listen address that is
// not a wildcard or loopback, override HEALTHCHECK.
const port = (process.env.REGMIRROR_LISTEN ?? '').split(':').pop() || '5000';
try {
  const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(4000) });
  process.exit(res.ok ? 0 : 1);
} catch {
  process.exit(1);
}
