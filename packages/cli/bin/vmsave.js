#!/usr/bin/env node
// The `vmsave` command. Normally runs the esbuild bundle (dist/bin/main.js, made by
// `npm run build` / `npm run setup`) in this process, with plain node. A checkout that was
// never built, or VMSAVE_CLI_FROM_SOURCE=1 (tests, CLI development), runs src/main.ts through
// tsx in a child node instead (the workspace packages then resolve to their sources through
// the `development` export condition, which only a node flag can turn on).
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';

const bundle = new URL('../dist/bin/main.js', import.meta.url);
const fromSource = process.env.VMSAVE_CLI_FROM_SOURCE === '1';
if (!fromSource && existsSync(bundle)) {
  await import(bundle.href);
} else {
  // Told to people only (a terminal): scripts and tests parse stderr.
  if (!fromSource && process.stderr.isTTY) {
    process.stderr.write('vmsave: not built, running the TypeScript sources through tsx (slower start; npm run build -w @vmsave/cli)\n');
  }
  let tsx;
  try {
    tsx = import.meta.resolve('tsx');
  } catch {
    // A production install has no tsx (a dev dependency): only the bundle can run there.
    process.stderr.write('vmsave: dist/bin/main.js is missing and tsx is not installed: run npm run build (or npm run setup)\n');
    process.exit(1);
  }
  const { spawn } = await import('node:child_process');
  const main = fileURLToPath(new URL('../src/main.ts', import.meta.url));
  const child = spawn(process.execPath, ['--conditions=development', '--import', tsx, main, ...process.argv.slice(2)], { stdio: 'inherit' });
  // Ctrl-C reaches the child from the terminal itself; a second copy would read as a second Ctrl-C.
  process.on('SIGINT', () => {});
  for (const s of ['SIGTERM', 'SIGHUP']) process.on(s, () => child.kill(s));
  child.once('error', (err) => {
    process.stderr.write(`vmsave: cannot start node for the sources: ${err.message}\n`);
    process.exitCode = 1;
  });
  child.once('exit', (code, signal) => {
    process.exitCode = code ?? 128 + (signal ? constants.signals[signal] : 0);
  });
}
