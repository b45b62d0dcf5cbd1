import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { REPO } from './stack.ts';

export interface FaultRow {
  fault: string;
  injection: string;
  checked: string;
  result: 'pass' | 'fail';
  detail: string;
}

const OUT = path.join(REPO, 'test-results', 'reliability.json');

/** Forget the rows of earlier runs (the suite's global setup). */
export async function resetFaults(): Promise<void> {
  await rm(OUT, { force: true });
}

/** Record one fault's outcome; the suite's rows become docs/reliability.md (see `writeReliabilityDoc`). */
export async function recordFault(row: FaultRow): Promise<void> {
  await mkdir(path.dirname(OUT), { recursive: true });
  const rows: FaultRow[] = JSON.parse(await readFile(OUT, 'utf8').catch(() => '[]'));
  const i = rows.findIndex((r) => r.fault === row.fault);
  if (i >= 0) rows[i] = row;
  else rows.push(row);
  await writeFile(OUT, JSON.stringify(rows, null, 2));
}

/** Render the recorded rows as Markdown; written to test-results/ and, with VMSAVE_WRITE_DOCS=1, to docs/. */
export async function writeReliabilityDoc(): Promise<string> {
  const rows: FaultRow[] = JSON.parse(await readFile(OUT, 'utf8').catch(() => '[]'));
  const esc = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
  const md = [
    '# Reliability: faults and bad input',
    '',
    `Produced by the end-to-end suite (\`test/e2e/test/*.e2e.spec.ts\`) on ${new Date().toISOString().slice(0, 10)}${process.env.VMSAVE_SOAK === '1' ? ' with `VMSAVE_SOAK=1` (the cluster, the 200-VM load and the soak rows are on-demand; `npm test` runs the rest, with a 12-VM load)' : ''}; regenerate with \`VMSAVE_SOAK=1 VMSAVE_WRITE_DOCS=1 npm test -w @vmsave/e2e\`. Every row is a real injection against the real NATS, Redis and QEMU; the fault-at-a-point rows use the executor's failpoints (\`VMSAVE_FAILPOINTS\`) to hold a save exactly there while the fault is injected.`,
    '',
    '| fault | how it was injected | what was checked | result | detail |',
    '|---|---|---|---|---|',
    ...rows.map((r) => `| ${esc(r.fault)} | ${esc(r.injection)} | ${esc(r.checked)} | ${r.result === 'pass' ? 'pass' : '**FAIL**'} | ${esc(r.detail)} |`),
    '',
  ].join('\n');
  await writeFile(path.join(REPO, 'test-results', 'reliability.md'), md);
  if (process.env.VMSAVE_WRITE_DOCS === '1') await writeFile(path.join(REPO, 'docs', 'reliability.md'), md);
  return md;
}
