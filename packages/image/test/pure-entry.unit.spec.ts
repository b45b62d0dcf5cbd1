/**
 * The `.` entry stays pure: bundled for a neutral platform, its module graph reaches no file,
 * process or network module (`node:fs`, `fs-ext`, `node:module`, …) anywhere, no Node built-in
 * at all from this package's own modules, and nothing under src/node/. `./node` is where the
 * file I/O lives.
 */
import { builtinModules } from 'node:module';
import { fileURLToPath } from 'node:url';
import { build, type Plugin } from 'esbuild';
import { describe, expect, it } from 'vitest';

const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));
/** I/O modules no module of the pure graph may import, dependencies included. */
const IO = new Set(
  ['fs', 'fs/promises', 'module', 'child_process', 'net', 'dgram', 'http', 'https', 'http2', 'tls', 'dns', 'worker_threads', 'cluster', 'readline']
    .flatMap((m) => [m, `node:${m}`])
    .concat(['fs-ext']),
);
const OWN = /packages\/image\/src\//;

interface Reach {
  specifier: string;
  importer: string;
}

/** Records (and keeps out of the bundle) every import of a Node built-in or an I/O package. */
function recorder(found: Reach[]): Plugin {
  return {
    name: 'record-io-imports',
    setup(b) {
      b.onResolve({ filter: /.*/ }, (args) => {
        if (builtins.has(args.path) || args.path === 'fs-ext' || args.path.startsWith('fs-ext/')) {
          found.push({ specifier: args.path, importer: args.importer });
          return { path: args.path, external: true };
        }
        return undefined;
      });
    },
  };
}

async function graphOf(entry: string): Promise<{ io: Reach[]; inputs: string[] }> {
  const io: Reach[] = [];
  const r = await build({
    entryPoints: [fileURLToPath(new URL(entry, import.meta.url))],
    // Metafile paths relative to the repository root: packages/image/src/…, packages/contracts/src/…
    absWorkingDir: fileURLToPath(new URL('../../..', import.meta.url)),
    bundle: true,
    write: false,
    metafile: true,
    platform: 'neutral',
    format: 'esm',
    conditions: ['development'],
    mainFields: ['module', 'main'],
    logLevel: 'silent',
    plugins: [recorder(io)],
  });
  return { io, inputs: Object.keys(r.metafile.inputs) };
}

describe('the pure entry (@vmsave/image)', () => {
  it('reaches no I/O module however deep, no Node built-in from its own modules, nothing under src/node/', async () => {
    const { io, inputs } = await graphOf('../src/index.ts');
    expect(
      io.filter((r) => IO.has(r.specifier) || r.specifier.startsWith('fs-ext')),
      'I/O modules reached from src/index.ts',
    ).toEqual([]);
    expect(
      io.filter((r) => OWN.test(r.importer)),
      'Node built-ins imported by the pure modules of this package',
    ).toEqual([]);
    expect(inputs.filter((p) => p.startsWith('packages/image/src/node/'))).toEqual([]);
    // The graph really was walked: the parsers and the contracts they use are in it.
    expect(inputs).toContain('packages/image/src/stream.ts');
    expect(inputs.some((p) => p.startsWith('packages/contracts/src/'))).toBe(true);
  });

  it('the ./node entry is where the file I/O is (the check above can see it)', async () => {
    const { io } = await graphOf('../src/node/index.ts');
    expect(io.map((r) => r.specifier)).toEqual(expect.arrayContaining(['node:fs', 'node:module']));
  });
});
