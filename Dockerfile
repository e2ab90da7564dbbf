# syntax=docker/dockerfile:1
# My Jarvis cloud agent: one image for Render, Railway, Fly and docker compose.
# Build: docker build -t jarvis-cloud .     Run: docker run -p 8080:8080 -v jarvis-data:/data jarvis-cloud
#
# Stages: the web view (Node), the binaries (Rust), then a Debian runtime with the packages of
# deploy/packages.txt (git, bubblewrap for the command sandbox, tini as PID 1; in the default full
# image also the runtimes and test runners the cloud copy's commands use). `--build-arg
# IMAGE=slim` builds without those.

FROM node:20-bookworm-slim AS ui
WORKDIR /src/ui
COPY ui/package.json ui/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY ui/ ./
RUN npm run build

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target dir between builds; the binaries are copied out
# of the mount because its contents are not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p jarvis-cloud -p jarvis-cli \
    && install -D -m 0755 target/release/jarvis-cloud /out/jarvis-cloud \
    && install -D -m 0755 target/release/jarvis /out/jarvis

FROM debian:bookworm-slim AS runtime
# full (default): node + npm, python3 + pip + pytest, build tools and curl for the cloud copy's
# commands; slim: only what the server itself needs. The list is deploy/packages.txt.
ARG IMAGE=full
COPY deploy/packages.txt /tmp/packages.txt
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && awk -v image="$IMAGE" '!/^#/ && NF == 2 && ($2 == "all" || $2 == image) { print $1 }' /tmp/packages.txt \
       | xargs apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /tmp/packages.txt \
    && groupadd --system --gid 10001 jarvis \
    && useradd --system --uid 10001 --gid jarvis --home-dir /home/jarvis --create-home jarvis \
    && mkdir -p /data /app \
    && chown jarvis:jarvis /data
COPY --from=build /out/jarvis-cloud /out/jarvis /usr/local/bin/
COPY --from=ui /src/ui/dist /app/ui
COPY deploy/entrypoint.sh /usr/local/bin/jarvis-entrypoint
# /data is the one place state lives (SQLite, blobs, materialised workspaces). It is not declared
# with VOLUME because Railway refuses images that do; every platform file mounts a disk there.
ENV JARVIS_DATA_DIR=/data \
    JARVIS_UI_DIR=/app/ui \
    JARVIS_HOST=0.0.0.0 \
    PORT=8080 \
    JARVIS_LOG_FORMAT=json \
    RUST_LOG=info \
    HOME=/home/jarvis
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["jarvis-cloud", "healthcheck"]
# The entrypoint starts as root only to hand a freshly mounted, root-owned disk at /data to the
# jarvis user (Fly, Railway and Render mount volumes as root), then drops to uid 10001 for good.
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/jarvis-entrypoint"]
CMD ["jarvis-cloud", "serve"]
