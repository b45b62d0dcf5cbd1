import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { closure, cycles, findWorkspaces, importsOf, packageOf, readModules, resolveRelative } from '../src/graph.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const workspaces = findWorkspaces(ROOT);
const byName = new Map(workspaces.map((w) => [w.name, w]));
const modules = readModules(workspaces);
const byFile = new Map(modules.map((m) => [m.file, m]));
const rel = (f: string) => path.relative(ROOT, f);

/** Packages that must do no I/O (their whole source, or the closure of their pure entry). */
const PURE_ENTRIES = ['packages/contracts/src/index.ts', 'packages/jobs/src/index.ts', 'packages/image/src/index.ts'];
const IO_MODULES = /^(node:)?(fs|fs\/promises|net|child_process|dgram|http|https|tls|worker_threads|module)$|^fs-ext$|^ioredis$|^@nats-io\/|^usocket$|^pino$/;

describe('the import graph helpers', () => {
  it('reads static, re-exported, side-effect and dynamic imports, not comments', () => {
    const src =
      "import a from './a.ts';\nexport { b } from \"./b.ts\";\nimport './c.ts';\n// import x from './x.ts';\nconst d = await import('./d.ts');\nimport {\n  e,\n} from '@vmsave/e';";
    expect(importsOf(src).sort()).toEqual(['./a.ts', './b.ts', './c.ts', './d.ts', '@vmsave/e']);
  });
  it('finds a cycle and only cycles', () => {
    const edges = new Map([
      ['a', ['b']],
      ['b', ['c']],
      ['c', ['a']],
      ['d', ['a']],
    ]);
    expect(cycles(['a', 'b', 'c', 'd'], edges)).toEqual([['a', 'b', 'c']]);
    expect(cycles(['a', 'b'], new Map([['a', ['b']]]))).toEqual([]);
  });
});

describe('the layout of this house', () => {
  it('finds the workspaces', () => {
    expect(workspaces.filter((w) => w.tier === 'packages').length).toBeGreaterThan(5);
    expect(workspaces.filter((w) => w.tier === 'services').length).toBe(4);
  });

  it('packages depend only on packages, services only on packages', () => {
    const wrong: string[] = [];
    for (const w of workspaces) {
      if (w.tier !== 'packages' && w.tier !== 'services') continue;
      for (const d of w.deps) {
        const t = byName.get(d)?.tier;
        if (t !== 'packages') wrong.push(`${w.name} -> ${d} (${t ?? 'unknown'})`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('no cycle between packages (dependencies and devDependencies)', () => {
    const edges = new Map(workspaces.map((w) => [w.name, w.deps.filter((d) => byName.has(d))]));
    expect(cycles([...edges.keys()], edges)).toEqual([]);
  });

  it('every @vmsave import is a declared dependency, and no relative import leaves its workspace', () => {
    const wrong: string[] = [];
    for (const m of modules) {
      for (const s of m.specifiers) {
        const p = packageOf(s);
        if (p && p !== m.workspace.name && !m.workspace.deps.includes(p)) wrong.push(`${rel(m.file)} imports ${s}, not declared in ${m.workspace.name}`);
        const r = resolveRelative(m.file, s);
        if (r && !r.startsWith(m.workspace.dir + path.sep)) wrong.push(`${rel(m.file)} reaches into ${rel(r)}`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('no cycle between modules of any workspace', () => {
    const files = modules.filter((m) => !m.test).map((m) => m.file);
    const edges = new Map(
      files.map((f) => [
        f,
        byFile
          .get(f)!
          .specifiers.map((s) => resolveRelative(f, s))
          .filter((r): r is string => !!r),
      ]),
    );
    expect(cycles(files, edges).map((c) => c.map(rel))).toEqual([]);
  });

  it('pure packages import no I/O', () => {
    const wrong: string[] = [];
    for (const entry of PURE_ENTRIES) {
      for (const f of closure(path.join(ROOT, entry), byFile)) {
        for (const s of byFile.get(f)?.specifiers ?? []) if (IO_MODULES.test(s)) wrong.push(`${rel(f)} imports ${s}`);
      }
    }
    expect(wrong).toEqual([]);
  });
});
