import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SCHEMAS_DIR, type Generated } from './generate.ts';

/** The repository root (this package lives in tools/asyncapi). */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** Committed files that differ from the generated ones, are missing, or are left over in docs/schemas. */
export async function staleFiles(gen: Generated, root = REPO): Promise<{ path: string; why: 'differs' | 'missing' | 'left over' }[]> {
  const out: { path: string; why: 'differs' | 'missing' | 'left over' }[] = [];
  for (const [rel, content] of gen.files) {
    const have = await readFile(path.join(root, rel), 'utf8').catch(() => undefined);
    if (have === undefined) out.push({ path: rel, why: 'missing' });
    else if (have !== content) out.push({ path: rel, why: 'differs' });
  }
  const present = await readdir(path.join(root, SCHEMAS_DIR)).catch(() => [] as string[]);
  for (const f of present) {
    const rel = `${SCHEMAS_DIR}/${f}`;
    if (!gen.files.has(rel)) out.push({ path: rel, why: 'left over' });
  }
  return out;
}

/** Write every generated file and remove files in docs/schemas that are no longer generated. */
export async function writeGenerated(gen: Generated, root = REPO): Promise<string[]> {
  const changed: string[] = [];
  for (const s of await staleFiles(gen, root)) {
    const abs = path.join(root, s.path);
    if (s.why === 'left over') {
      await rm(abs);
    } else {
      await mkdir(path.dirname(abs), { recursive: true });
      await writeFile(abs, gen.files.get(s.path)!);
    }
    changed.push(`${s.why === 'left over' ? 'removed' : 'wrote'} ${s.path}`);
  }
  return changed;
}
