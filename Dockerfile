# regmirror container image.
#
#   docker build -t regmirror .        (or podman/buildah: a normal build from source)
#
# Build arguments:
#   BASE        runtime base with node >= 20.19 (default node:22-bookworm-slim); needs no
#               shell: every RUN here is node in exec form
#   BUILD_BASE  base of the build stage: node + npm, Debian apt for the compiler that
#               better-sqlite3's native module needs (default: BASE)
#   UID, GID    the runtime user (default 1000:1000, `node` in the official images)
#
# Target `prebuilt` packages an already built checkout instead (dist/ and a production
# node_modules in the build context, built for BASE's node and libc), with no build stage:
# the e2e test uses it on machines that cannot pull a base image. Not for releases.
ARG BASE=node:22-bookworm-slim
ARG BUILD_BASE=${BASE}

FROM ${BUILD_BASE} AS build
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --no-audit --no-fund
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM ${BASE} AS runtime
ARG UID=1000
ARG GID=1000
LABEL org.opencontainers.image.title="regmirror" \
      org.opencontainers.image.description="Pull-through caching OCI registry mirror" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production
WORKDIR /app
# The volume's mount point must exist and belong to the runtime user before VOLUME: a
# fresh named volume is initialised from it (owner included), else the server, not
# root, cannot write its storage.
RUN ["node", "-e", "const d = '/var/lib/regmirror'; fs.mkdirSync(d, { recursive: true }); fs.chownSync(d, Number(process.env.UID), Number(process.env.GID)); fs.chmodSync(d, 0o750)"]
# Application files stay root-owned: the server cannot modify its own code or config.
COPY package.json ./
COPY config ./config
COPY ops/container/healthcheck.mjs ./healthcheck.mjs
VOLUME /var/lib/regmirror
EXPOSE 5000
USER ${UID}:${GID}
# Kept by `docker build` and by podman/buildah with `--format docker` (OCI images have no healthcheck).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["node", "/app/healthcheck.mjs"]
# node runs as PID 1: it ignores signals it has no handler for, but `serve` handles
# SIGTERM/SIGINT (drain and exit 0) and starts no child processes, so no init is needed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD ["serve", "--config", "/app/config/docker.yml"]

FROM runtime AS prebuilt
COPY dist ./dist
COPY node_modules ./node_modules

# The default target: built from source above.
FROM runtime
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
