# syntax=docker/dockerfile:1
# vmsave images, built from the repository root (the whole npm workspace):
#   docker build -f infra/docker/vmsave.Dockerfile --target service  -t vmsave/service .
#   docker build -f infra/docker/vmsave.Dockerfile --target executor -t vmsave/executor .
# `service` runs the scheduler, verifier and dashboard; `executor` adds QEMU from
# <codename>-backports (derived from the base image's own apt source, like infra/setup.sh).
# docker-compose.yml builds both. Which service a container runs is its command:
#   node services/<name>/dist/main.js
# The images hold built JavaScript and production dependencies only (no tsx, TypeScript or
# vitest): the `build` stage compiles the workspace and prunes it to the services
# (infra/prod-tree.sh, the tree test/infra/prod-install.int.spec.ts installs and starts), the
# `runtime` stage installs that tree with `npm ci --omit=dev`.

ARG NODE_IMAGE=node:20-bookworm

FROM ${NODE_IMAGE} AS base
# The npm of package.json's packageManager: it honours `allowScripts` (native addons usocket, fs-ext).
RUN npm install -g npm@11 --no-audit --no-fund
WORKDIR /app

FROM base AS build
COPY . .
# Dev dependencies included: the compiler and turbo.
RUN npm ci --no-audit --no-fund
RUN npm run build
RUN bash infra/prod-tree.sh /prod

FROM base AS runtime
COPY --from=build /prod /app
# Production dependencies only; the native addons are compiled here, for this image's Node.
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM base AS service
COPY --from=runtime /app /app
USER node
CMD ["node", "--single-threaded-gc", "services/scheduler/dist/main.js"]

FROM base AS executor
COPY infra/docker/add-backports.sh /usr/local/sbin/vmsave-add-backports
RUN set -eux; \
    vmsave-add-backports; \
    . /etc/os-release; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -t "${VERSION_CODENAME}-backports" qemu-system-x86 qemu-utils; \
    rm -rf /var/lib/apt/lists/*; \
    qemu-system-x86_64 --version
COPY --from=runtime /app /app
# Root: QEMU needs /dev/kvm (whose group differs between hosts) and the mounted image directory.
CMD ["node", "services/executor/dist/main.js"]
