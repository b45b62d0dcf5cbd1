#!/usr/bin/env node
/**
 * Bundles the page's TypeScript (`src/browser/main.ts`, with `@vmsave/jobs/view` and uPlot) into
 * `dist/public/app.js` for the browser. The static files (`public/`) are served as they are.
 *
 *   node scripts/build-browser.mjs          # part of `npm run build`
 *
 * `ensureBrowserBundle()` is what the server calls when it runs from the sources (dev, tests):
 * it builds only when the bundle is missing or older than one of the files it was built from.
 */
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const BUNDLE_DIR = path.join(ROOT, 'dist', 'public');
const ENTRY = path.join(ROOT, 'src', 'browser', 'main.ts');
/** The inputs of the last build (esbuild's metafile), to tell whether the bundle is stale. */
const META = path.join(ROOT, 'dist', 'browser-inputs.json');

/** Build the bundle; files are written next to their final name and renamed, so a reader never sees half of one. */
export async function buildBrowser() {
  const esbuild = await import('esbuild');
  const result = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: [ENTRY],
    outfile: path.join(BUNDLE_DIR, 'app.js'),
    bundle: true,
    // A Node module in the page's imports is a build error, not a surprise in the browser.
    platform: 'browser',
    format: 'esm',
    target: 'es2022',
    // The workspace packages' TypeScript sources, whether or not they were built.
    conditions: ['development'],
    minify: true,
    sourcemap: 'linked',
    metafile: true,
    write: false,
    logLevel: 'warning',
  });
  await mkdir(BUNDLE_DIR, { recursive: true });
  const tag = `${process.pid}.${Date.now()}`;
  // The map first: the bundle that names it appears last.
  const files = [...result.outputFiles].sort((a, b) => Number(a.path.endsWith('.js')) - Number(b.path.endsWith('.js')));
  for (const f of files) {
    await writeFile(`${f.path}.${tag}`, f.contents);
    await rename(`${f.path}.${tag}`, f.path);
  }
  await writeFile(`${META}.${tag}`, JSON.stringify(Object.keys(result.metafile.inputs)));
  await rename(`${META}.${tag}`, META);
  return { outfile: path.join(BUNDLE_DIR, 'app.js'), inputs: Object.keys(result.metafile.inputs).length };
}

/** The files the last build read (relative to the package), if it recorded them. */
export async function bundleInputs() {
  return readFile(META, 'utf8').then(
    (s) => JSON.parse(s),
    () => undefined,
  );
}

const mtime = (p) =>
  stat(p).then(
    (s) => s.mtimeMs,
    () => undefined,
  );

/** Why the bundle needs building, or undefined when it is up to date with its inputs. */
export async function staleness() {
  const built = await mtime(path.join(BUNDLE_DIR, 'app.js'));
  if (built === undefined) return 'missing';
  const inputs = await bundleInputs();
  if (!inputs) return 'no record of its inputs';
  for (const f of [ENTRY, ...inputs.map((i) => path.resolve(ROOT, i))]) {
    const t = await mtime(f);
    if (t !== undefined && t > built) return `${path.relative(ROOT, f)} changed`;
  }
  return undefined;
}

/** Build the bundle if it is missing or stale (only possible where the sources are). */
export async function ensureBrowserBundle() {
  const why = await staleness();
  if (!why) return { built: false, dir: BUNDLE_DIR };
  if ((await mtime(ENTRY)) === undefined)
    throw new Error(`the dashboard page's bundle ${path.join(BUNDLE_DIR, 'app.js')} is ${why}, and its sources are not here: run npm run build -w @vmsave/dashboard`);
  await buildBrowser();
  return { built: true, why, dir: BUNDLE_DIR };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const r = await buildBrowser();
  console.log(`built ${path.relative(process.cwd(), r.outfile)} from ${r.inputs} files`);
}
