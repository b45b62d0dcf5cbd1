#!/usr/bin/env bash
# The production tree of the four vmsave services, in <out-dir> (which must not exist or be empty):
#
#   npm run build && bash infra/prod-tree.sh /tmp/vmsave-prod
#   cd /tmp/vmsave-prod && npm ci --omit=dev && node services/scheduler/dist/main.js
#
# 1. `turbo prune --production` of scheduler, verifier, executor and dashboard: root package.json,
#    a lockfile cut down to what they use, and only the workspace packages they depend on at run
#    time (no testkit, no test/*, no CLI).
# 2. The devDependencies of those packages are dropped from their package.json and from the
#    lockfile: they name test-only workspace packages the pruned tree no longer has, and a
#    production install needs none of them.
# 3. Each package keeps what it would ship: its package.json and what its `files` names (built
#    dist/, a service's static files), copied from this tree (dist/ is ignored by git, so prune
#    leaves it out); sources, tests and scripts stay behind, as in an installed package.
#
# infra/docker/vmsave.Dockerfile builds its images this way; test/infra/prod-install.int.spec.ts
# runs it, installs the result and starts every service from it.
set -euo pipefail
out=${1:?usage: infra/prod-tree.sh <out-dir>}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  echo "[prod-tree] $out exists and is not empty" >&2
  exit 1
fi
services=(scheduler verifier executor dashboard)
for s in "${services[@]}"; do
  [ -f "services/$s/dist/main.js" ] || { echo "[prod-tree] services/$s/dist/main.js is missing: run npm run build first" >&2; exit 1; }
done

npx turbo prune "${services[@]/#/@vmsave/}" --production --out-dir "$out" >&2

node -e '
const fs = require("node:fs");
const path = require("node:path");
const [out, root] = process.argv.slice(1);
const lockFile = path.join(out, "package-lock.json");
const lock = JSON.parse(fs.readFileSync(lockFile, "utf8"));
for (const [dir, entry] of Object.entries(lock.packages)) {
  if (dir === "" || dir.startsWith("node_modules/")) continue;
  delete entry.devDependencies;
  const file = path.join(out, dir, "package.json");
  const pkg = JSON.parse(fs.readFileSync(file, "utf8"));
  delete pkg.devDependencies;
  if (!pkg.files) throw new Error(`${dir}/package.json has no "files": it says what a production install of it holds`);
  for (const f of fs.readdirSync(path.join(out, dir))) if (f !== "package.json") fs.rmSync(path.join(out, dir, f), { recursive: true, force: true });
  fs.writeFileSync(file, `${JSON.stringify(pkg, null, 2)}\n`);
  for (const f of pkg.files) {
    const from = path.join(root, dir, f);
    if (!fs.existsSync(from)) throw new Error(`${dir}/${f} is missing: run npm run build first`);
    fs.cpSync(from, path.join(out, dir, f), { recursive: true });
  }
}
fs.writeFileSync(lockFile, `${JSON.stringify(lock, null, 2)}\n`);
' "$out" "$root"
echo "[prod-tree] $out: $(cd "$out" && ls -d packages/* services/* | tr '\n' ' ')" >&2
