#!/usr/bin/env node
/**
 * Bundles the `vmsave` command (src/main.ts) into dist/bin/ with esbuild: ESM with code
 * splitting, so every command's implementation (`src/run/*`, `commands/offline.ts`,
 * `commands/vm.ts`) stays its own chunk, imported only when that command runs — `--help`
 * loads the entry chunk and nothing of NATS, Redis, QEMU or the image code.
 *
 * Native addons cannot be bundled: they stay external and are resolved from node_modules at
 * run time. Bundled CommonJS dependencies that call `require` get one from `createRequire`.
 *
 *   node scripts/bundle.mjs [--outdir DIR]   (default dist/bin)
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Packages with native code (a `.node` file), loaded by node at run time. */
export const NATIVE = ['usocket', 'fs-ext', '*.node'];

/** Bundle into `outdir`; resolves to esbuild's metafile. */
export async function bundle(outdir = path.join(PKG, 'dist', 'bin')) {
  // Chunk names carry content hashes: clear the old ones.
  await rm(outdir, { recursive: true, force: true });
  const r = await build({
    absWorkingDir: PKG,
    entryPoints: { main: 'src/main.ts' },
    outdir,
    bundle: true,
    splitting: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // Workspace packages are bundled from their sources (the `development` export condition), so
    // the bundle does not depend on their dist/ being built first.
    conditions: ['development'],
    external: NATIVE,
    banner: { js: "import { createRequire as __vmsaveCreateRequire } from 'node:module'; const require = __vmsaveCreateRequire(import.meta.url);" },
    chunkNames: 'chunks/[name]-[hash]',
    sourcemap: 'linked',
    metafile: true,
    logLevel: 'warning',
    legalComments: 'none',
  });
  return r.metafile;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--outdir');
  await bundle(i > 0 ? path.resolve(process.argv[i + 1]) : undefined);
}
