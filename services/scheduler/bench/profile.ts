/** A summary of a V8 `.cpuprofile` (from `node --cpu-prof`): self time per function, largest first. */
import { readFile } from 'node:fs/promises';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface HotFunction {
  name: string;
  /** `file:line`, relative to `root` when inside it. */
  where: string;
  selfMs: number;
  /** Self time plus that of everything it called. */
  totalMs: number;
  share: number;
}

export async function summarizeProfile(file: string, root: string, top = 15): Promise<{ totalMs: number; idleMs: number; hot: HotFunction[] }> {
  const p = JSON.parse(await readFile(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const selfUs = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) selfUs.set(p.samples[i]!, (selfUs.get(p.samples[i]!) ?? 0) + (p.timeDeltas[i] ?? 0));
  // Line numbers of tsx-compiled TypeScript do not match the source: name the file only.
  const key = (n: ProfileNode) => {
    const file = n.callFrame.url.replace(`file://${root}/`, '').replace(`${root}/`, '');
    return `${n.callFrame.functionName || '(anonymous)'}\t${file.endsWith('.ts') ? file : `${file}:${n.callFrame.lineNumber + 1}`}`;
  };
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  let allUs = 0;
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const n = byId.get(id)!;
    allUs += us;
    if (n.callFrame.functionName === '(idle)' || n.callFrame.functionName === '(program)') idleUs += us;
    self.set(key(n), (self.get(key(n)) ?? 0) + us);
    // Charge the sample once to every distinct function on its stack.
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const k = key(byId.get(cur)!);
      if (seen.has(k)) continue;
      seen.add(k);
      total.set(k, (total.get(k) ?? 0) + us);
    }
  }
  const hot = [...self.entries()]
    .filter(([k]) => !k.startsWith('(idle)') && !k.startsWith('(program)'))
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([k, us]) => {
      const [name, where] = k.split('\t') as [string, string];
      return { name, where, selfMs: us / 1000, totalMs: (total.get(k) ?? us) / 1000, share: us / Math.max(1, allUs - idleUs) };
    });
  return { totalMs: allUs / 1000, idleMs: idleUs / 1000, hot };
}

/** Inclusive time of the named functions (e.g. `pump`, `pickNext`), for the report. */
export async function inclusiveMs(file: string, names: readonly string[]): Promise<Record<string, number>> {
  const p = JSON.parse(await readFile(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const out = new Map(names.map((n) => [n, 0]));
  for (let i = 0; i < p.samples.length; i++) {
    const seen = new Set<string>();
    for (let cur: number | undefined = p.samples[i]; cur !== undefined; cur = parent.get(cur)) {
      const fn = byId.get(cur)!.callFrame.functionName;
      if (out.has(fn) && !seen.has(fn)) {
        seen.add(fn);
        out.set(fn, out.get(fn)! + (p.timeDeltas[i] ?? 0) / 1000);
      }
    }
  }
  return Object.fromEntries(out);
}
