/**
 * The house's layout, read from the code itself: the workspaces and their declared
 * dependencies (package.json), and every module's imports (the source text).
 */
import { readdirSync, readFileSync, statSync, existsSync } from 'node:fs';
import path from 'node:path';

export type Tier = 'packages' | 'services' | 'tools' | 'test' | 'other';

export interface Workspace {
  name: string;
  dir: string;
  tier: Tier;
  /** `@vmsave/*` names from dependencies and devDependencies. */
  deps: string[];
}

export interface Module {
  file: string;
  workspace: Workspace;
  /** Import specifiers as written (static, re-exports, dynamic with a literal). */
  specifiers: string[];
  test: boolean;
}

const SCOPE = '@vmsave/';

export function findWorkspaces(root: string): Workspace[] {
  const rootPkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { workspaces: string[] };
  const dirs: string[] = [];
  for (const pattern of rootPkg.workspaces) {
    if (pattern.endsWith('/*')) {
      const base = path.join(root, pattern.slice(0, -2));
      if (!existsSync(base)) continue;
      for (const d of readdirSync(base)) if (existsSync(path.join(base, d, 'package.json'))) dirs.push(path.join(base, d));
    } else if (existsSync(path.join(root, pattern, 'package.json'))) {
      dirs.push(path.join(root, pattern));
    }
  }
  return dirs.map((dir) => {
    const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as {
      name: string;
      dependencies?: Record<string, string>;
      devDependencies?: Record<string, string>;
    };
    const rel = path.relative(root, dir).split(path.sep)[0] ?? '';
    const tier: Tier = rel === 'packages' || rel === 'services' || rel === 'tools' || rel === 'test' ? rel : 'other';
    const deps = Object.keys({ ...pkg.dependencies, ...pkg.devDependencies }).filter((d) => d.startsWith(SCOPE));
    return { name: pkg.name, dir, tier, deps };
  });
}

const SKIP_DIRS = new Set(['node_modules', 'dist', '.turbo', 'coverage', 'public']);

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      if (SKIP_DIRS.has(name)) continue;
      const p = path.join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (/\.(ts|mts|tsx)$/.test(name) && !name.endsWith('.d.ts')) out.push(p);
    }
  };
  walk(dir);
  return out;
}

/** Remove comments so that an example in a comment is not read as an import. */
function stripComments(src: string): string {
  return src.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
}

export function importsOf(src: string): string[] {
  const text = stripComments(src);
  const out = new Set<string>();
  for (const re of [/(?:^|[\s;])(?:import|export)\s[^'";]*?\sfrom\s*['"]([^'"]+)['"]/g, /(?:^|[\s;])import\s*['"]([^'"]+)['"]/g, /import\(\s*['"]([^'"]+)['"]\s*\)/g]) {
    for (const m of text.matchAll(re)) out.add(m[1]!);
  }
  return [...out];
}

export function readModules(ws: Workspace[]): Module[] {
  const mods: Module[] = [];
  for (const w of ws) {
    for (const file of sourceFiles(w.dir)) {
      const rel = path.relative(w.dir, file);
      const test = /\.spec\.ts$/.test(file) || rel.startsWith(`test${path.sep}`) || rel.startsWith(`bench${path.sep}`);
      mods.push({ file, workspace: w, specifiers: importsOf(readFileSync(file, 'utf8')), test });
    }
  }
  return mods;
}

/** Resolve a relative specifier to a file of the tree, if it names one. */
export function resolveRelative(from: string, spec: string): string | undefined {
  if (!spec.startsWith('.')) return undefined;
  const base = path.resolve(path.dirname(from), spec);
  const candidates = [base, base.replace(/\.js$/, '.ts'), `${base}.ts`, path.join(base, 'index.ts')];
  return candidates.find((c) => existsSync(c) && statSync(c).isFile());
}

/** The package a bare `@vmsave/x[/sub]` specifier names. */
export const packageOf = (spec: string): string | undefined => (spec.startsWith(SCOPE) ? spec.split('/').slice(0, 2).join('/') : undefined);

/** Strongly connected components with more than one node (or a self-loop): the cycles. */
export function cycles(nodes: readonly string[], edges: ReadonlyMap<string, readonly string[]>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const strong = (v: string) => {
    idx.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    on.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!idx.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) {
        low.set(v, Math.min(low.get(v)!, idx.get(w)!));
      }
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (edges.get(v) ?? []).includes(v)) out.push(comp.sort());
    }
  };
  for (const n of nodes) if (!idx.has(n)) strong(n);
  return out;
}

/** The closure of a module's relative imports (itself included). */
export function closure(start: string, mods: ReadonlyMap<string, Module>): string[] {
  const seen = new Set<string>();
  const todo = [start];
  while (todo.length) {
    const f = todo.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    for (const s of mods.get(f)?.specifiers ?? []) {
      const r = resolveRelative(f, s);
      if (r) todo.push(r);
    }
  }
  return [...seen];
}
