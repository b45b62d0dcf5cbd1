/**
 * Re-renders docs/benchmarks.md's generated section and the chart from a results JSON file,
 * without running anything (e.g. after changing the report's layout, or to view an old run).
 *
 *   npx tsx src/render.ts [results.json] [out.md]   (defaults: docs/benchmarks/results.json, docs/benchmarks.md)
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { REPO } from '@vmsave/e2e';
import { renderChart, renderSection, spliceSection, type Results } from './report.ts';

const input = path.resolve(REPO, process.argv[2] ?? 'docs/benchmarks/results.json');
const outMd = path.resolve(REPO, process.argv[3] ?? 'docs/benchmarks.md');
const results = JSON.parse(await readFile(input, 'utf8')) as Results;
results.failures ??= [];
const state = results.vmsave.some((s) => s.state === 'dirty') || results.raw.some((s) => s.state === 'dirty') ? 'dirty' : 'idle';
await writeFile(path.join(path.dirname(outMd), 'benchmarks', 'chart.svg'), `${renderChart(results, state)}\n`);
const existing = await readFile(outMd, 'utf8').catch(() => undefined);
await writeFile(outMd, spliceSection(existing, renderSection(results), '# Benchmarks'));
console.log(`rendered ${path.relative(REPO, input)} into ${path.relative(REPO, outMd)} and the chart`);
