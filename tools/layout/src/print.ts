/**
 * Prints the house's package graph and its checks, from the code as it stands:
 *   npm run graph -w @vmsave/layout
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cycles, findWorkspaces, readModules, resolveRelative } from './graph.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const ws = findWorkspaces(ROOT);
const names = new Set(ws.map((w) => w.name));
for (const tier of ['packages', 'services', 'tools', 'test', 'other'] as const) {
  const here = ws.filter((w) => w.tier === tier);
  if (!here.length) continue;
  console.log(`${tier}/`);
  for (const w of here)
    console.log(
      `  ${w.name.padEnd(22)} -> ${
        w.deps
          .filter((d) => names.has(d))
          .map((d) => d.replace('@vmsave/', ''))
          .join(', ') || '(none)'
      }`,
    );
}
const mods = readModules(ws).filter((m) => !m.test);
const edges = new Map(mods.map((m) => [m.file, m.specifiers.map((s) => resolveRelative(m.file, s)).filter((r): r is string => !!r)]));
const pkgEdges = new Map(ws.map((w) => [w.name, w.deps.filter((d) => names.has(d))]));
const modCycles = cycles([...edges.keys()], edges);
const pkgCycles = cycles([...pkgEdges.keys()], pkgEdges);
console.log(`\n${mods.length} modules, ${[...edges.values()].reduce((n, e) => n + e.length, 0)} relative imports`);
console.log(`cycles between packages: ${pkgCycles.length ? pkgCycles.map((c) => c.join(' <-> ')).join('; ') : 'none'}`);
console.log(`cycles between modules: ${modCycles.length ? modCycles.map((c) => c.map((f) => path.relative(ROOT, f)).join(' <-> ')).join('; ') : 'none'}`);
const wrong = ws.filter((w) => (w.tier === 'packages' || w.tier === 'services') && w.deps.some((d) => ws.find((x) => x.name === d)?.tier !== 'packages'));
console.log(`packages or services depending on a non-package: ${wrong.length ? wrong.map((w) => w.name).join(', ') : 'none'}`);
