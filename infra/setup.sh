#!/usr/bin/env bash
# vmsave set-up for Debian 12 (bookworm). Idempotent: quick when everything is present.
# Installs: nats-server, redis-server, QEMU >= 9.1 (from <codename>-backports, whose apt
# source is derived from the machine's own Debian source entry), Node dependencies (npm ci),
# builds the TypeScript to JavaScript (npm run build: what `npm start` runs), and generates
# local secrets into .vmsave/env (never committed).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
log() { printf '[setup] %s\n' "$*"; }

need_qemu() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 || return 0
  local v; v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  set -- $v
  [ "${1:-0}" -gt 9 ] && return 1
  [ "${1:-0}" -eq 9 ] && [ "${2:-0}" -ge 1 ] && return 1
  return 0
}

missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)
# Headless Chromium for the dashboard's browser tests (driven by playwright-core; no browser downloads).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v fallocate >/dev/null 2>&1 || missing+=(util-linux)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)   # builds the test guest kernel (infra/guest)
if need_qemu; then missing+=(qemu-system-x86); fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ ! -r /etc/os-release ] || ! grep -q '^ID=debian' /etc/os-release || ! command -v apt-get >/dev/null; then
    log "not a Debian system: please install ${missing[*]} (QEMU >= 9.1), nats-server >= 2.9 and redis-server yourself"
    exit 1
  fi
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  . /etc/os-release
  codename=${VERSION_CODENAME:-bookworm}
  # The backports suite is derived from the machine's own Debian source entry (URI and keyring);
  # the same script serves the container images.
  $SUDO bash "$here/infra/docker/add-backports.sh"
  log "installing ${missing[*]}"
  $SUDO apt-get update -qq
  pkgs=(); bppkgs=()
  for p in "${missing[@]}"; do case $p in qemu-*) bppkgs+=("$p");; *) pkgs+=("$p");; esac; done
  [ ${#pkgs[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}"
  [ ${#bppkgs[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t "${codename}-backports" "${bppkgs[@]}"
fi
qemu-system-x86_64 --version | head -1

# Node itself: the versions package.json's engines names (node-gyp and undici need no newer).
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit((a === 20 && b >= 19) || (a === 22 && b >= 12) || a > 22 ? 0 : 1)' \
  || { log "Node $(node --version) is not supported: install Node 20.19+ or 22.12+ (20, 22 and 24 LTS work)"; exit 1; }

# Node dependencies: npm ci when node_modules is missing or older than the lockfile.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund
fi

# Every package and service compiled to its dist/ (turbo's cache makes an unchanged tree quick).
log "npm run build"
npm run build -- --output-logs=errors-only
bash infra/guest/build.sh   # the test guest kernel, infra/guest/build/guest.elf (packages/testguest)

# Local secrets (generated, never committed): one line per secret in .vmsave/env (mode 600).
# A secret already there is kept; a missing one is added, so re-running set-up after an upgrade
# only fills in what is new. Consumed by `npm start` (infra/start.ts) and docker-compose.yml:
#   VMSAVE_DASHBOARD_TOKEN        bearer token of the dashboard
#   VMSAVE_NATS_PASS_<ROLE>       NATS password of each role in infra/nats/nats.conf
#   VMSAVE_NATS_EXECUTOR_SECRET   master secret of the executor hosts' users: the password of
#                                 `executor-<host>` is HMAC-SHA256(it, host), so set-up need not
#                                 know the hosts (npm start derives its host's; docs/operations.md)
#   VMSAVE_REDIS_PASS             Redis password (requirepass) of the private/compose Redis
mkdir -p .vmsave
chmod 700 .vmsave
touch .vmsave/env
chmod 600 .vmsave/env
gen() { head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32; }
added=()
for key in VMSAVE_DASHBOARD_TOKEN \
  VMSAVE_NATS_PASS_CLIENT VMSAVE_NATS_PASS_SCHEDULER VMSAVE_NATS_PASS_EXECUTOR \
  VMSAVE_NATS_PASS_VERIFIER VMSAVE_NATS_PASS_DASHBOARD VMSAVE_NATS_EXECUTOR_SECRET VMSAVE_REDIS_PASS VMSAVE_GRAFANA_PASS; do
  if ! grep -q "^${key}=" .vmsave/env; then
    echo "${key}=$(gen)" >> .vmsave/env
    added+=("$key")
  fi
done
[ ${#added[@]} -eq 0 ] || log "generated ${added[*]} into .vmsave/env"
log "ok"
