# syntax=docker/dockerfile:1
# vmsave images, built from the repository root (the whole npm workspace):
#   docker build -f infra/docker/vmsave.Dockerfile --target service  -t vmsave/service .
#   docker build -f infra/docker/vmsave.Dockerfile --target executor -t vmsave/executor .
# `service` runs the scheduler, verifier and dashboard; `executor` adds QEMU from
# <codename>-backports (derived from the base image's own apt source, like infra/setup.sh).
# docker-compose.yml builds both. Which service a container runs is its command:
#   node --import tsx services/<name>/src/main.ts

ARG NODE_IMAGE=node:20-bookworm

FROM ${NODE_IMAGE} AS base
# The npm of package.json's packageManager: it honours `allowScripts` (native addons usocket, fs-ext).
RUN npm install -g npm@11 --no-audit --no-fund
WORKDIR /app

FROM base AS deps
COPY . .
# Dev dependencies included: services run from TypeScript through tsx.
RUN npm ci --no-audit --no-fund

FROM base AS service
COPY --from=deps /app /app
USER node
CMD ["node", "--import", "tsx", "services/scheduler/src/main.ts"]

FROM base AS executor
COPY infra/docker/add-backports.sh /usr/local/sbin/vmsave-add-backports
RUN set -eux; \
    vmsave-add-backports; \
    . /etc/os-release; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -t "${VERSION_CODENAME}-backports" qemu-system-x86 qemu-utils; \
    rm -rf /var/lib/apt/lists/*; \
    qemu-system-x86_64 --version
COPY --from=deps /app /app
# Root: QEMU needs /dev/kvm (whose group differs between hosts) and the mounted image directory.
CMD ["node", "--import", "tsx", "services/executor/src/main.ts"]
