/**
 * The seal's cost on a 4 GiB VM (not a test): a real idle sparse image made by QEMU (paused, so
 * its pages regions are almost all holes) and a dirty one (the same image with its 4 GiB pages
 * region filled with random data by buffered writes + fdatasync, as a save of a busy guest writes
 * it). Prints the write time of those 4 GiB against `sealImage`, and `checkSeal` state / full,
 * with the page cache warm (right after the writes) and cold (`echo 1 > /proc/sys/vm/drop_caches`,
 * skipped when not allowed). Medians of `runs`. Big temp files are deleted at the end.
 *
 *   cd packages/image && npx tsx bench/seal-cost.ts [MiB=4096] [runs=3]
 */
import { randomFillSync } from 'node:crypto';
import { promises as fsp, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { checkSeal, finalizeImage, openFileSource, readImage, sealImage, walkStream } from '../src/node/index.ts';
import { makeVmsaveImage } from '../test/fixtures.ts';

const MiB = 1024 * 1024;
const [mibArg = '4096', runsArg = '3'] = process.argv.slice(2);
const mib = Number(mibArg);
const runs = Number(runsArg);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function dropCaches(): boolean {
  try {
    execFileSync('sync');
    writeFileSync('/proc/sys/vm/drop_caches', '1');
    return true;
  } catch {
    return false;
  }
}

async function timeMs(f: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

/** Median ms of `runs` calls, each after `before()`. */
async function med(f: () => Promise<unknown>, before?: () => void): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < runs; i++) {
    before?.();
    xs.push(await timeMs(f));
  }
  return median(xs);
}

/** Fill the pc.ram pages region with random data: buffered writes in 16 MiB pieces, then fdatasync. */
async function dirty(path: string): Promise<{ bytes: number; ms: number }> {
  const { header } = await readImage(path);
  const src = await openFileSource(path);
  const walk = await walkStream(src, header.streamOffset);
  await src.close();
  const block = walk.ram!.blocks.find((b) => b.name === 'pc.ram')!;
  const start = block.mappedRam!.pagesOffset;
  const piece = Buffer.allocUnsafe(256 * MiB);
  randomFillSync(piece);
  const fh = await fsp.open(path, 'r+');
  const t0 = performance.now();
  for (let off = 0; off < block.usedLength; off += 16 * MiB) {
    const len = Math.min(16 * MiB, block.usedLength - off);
    await fh.write(piece, off % piece.length, len, start + off);
  }
  await fh.datasync();
  const ms = performance.now() - t0;
  await fh.close();
  return { bytes: block.usedLength, ms };
}

const dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-seal-cost-'));
try {
  const coldOk = dropCaches();
  const idle = await makeVmsaveImage(dir, 'idle.vmsave', 'sparse', { memMiB: mib, channels: 2, finalize: false });
  const dirtyPath = join(dir, 'dirty.vmsave');
  execFileSync('cp', ['--sparse=always', idle, dirtyPath]);
  const rows: string[] = [];
  const row = (what: string, ms: number, extra = ''): void => {
    rows.push(`| ${what} | ${(ms / 1000).toFixed(2)} | ${extra} |`);
  };

  // Idle sparse image.
  const idleSeal = await sealImage(idle);
  row(`idle ${mib} MiB sparse: sealImage`, idleSeal.durationMs, `${(idleSeal.bytesRead / MiB).toFixed(1)} MiB read, ${idleSeal.summary.chunks} chunks`);
  await finalizeImage(idle);
  const idleState = await checkSeal(idle, { scope: 'state' });
  row('idle: checkSeal(state), warm', await med(() => checkSeal(idle, { scope: 'state' })), `${(idleState.bytesRead / MiB).toFixed(1)} MiB read`);
  const idleFull = await checkSeal(idle, { scope: 'full' });
  row('idle: checkSeal(full), warm', await med(() => checkSeal(idle, { scope: 'full' })), `${(idleFull.bytesRead / MiB).toFixed(1)} MiB read`);
  if (coldOk) {
    row('idle: checkSeal(state), cold', await med(() => checkSeal(idle, { scope: 'state' }), dropCaches));
    row('idle: checkSeal(full), cold', await med(() => checkSeal(idle, { scope: 'full' }), dropCaches));
  }

  // Dirty sparse image: the write of the RAM, then the seal right after it (page cache warm).
  const w = await dirty(dirtyPath);
  row(`dirty: write ${(w.bytes / MiB).toFixed(0)} MiB random (buffered + fdatasync)`, w.ms, `${(w.bytes / 1024 ** 3 / (w.ms / 1000)).toFixed(2)} GiB/s`);
  const warmSeals: number[] = [];
  let last = idleSeal;
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  for (let i = 0; i < runs; i++) {
    last = await sealImage(dirtyPath);
    warmSeals.push(last.durationMs);
  }
  loop.disable();
  row(
    'dirty: sealImage, warm (right after the write)',
    median(warmSeals),
    `${((100 * median(warmSeals)) / w.ms).toFixed(1)} % of the write; ${(last.bytesRead / MiB).toFixed(0)} MiB read; runs ${warmSeals.map((x) => (x / 1000).toFixed(1)).join('/')} s; event-loop delay max ${(loop.max / 1e6).toFixed(1)} ms, p99 ${(loop.percentile(99) / 1e6).toFixed(1)} ms`,
  );
  if (coldOk) {
    const cold = await med(() => sealImage(dirtyPath), dropCaches);
    row('dirty: sealImage, cold', cold, `${((100 * cold) / w.ms).toFixed(1)} % of the write`);
  }
  await finalizeImage(dirtyPath);
  const ds = await checkSeal(dirtyPath, { scope: 'state' });
  if (!ds.ok) throw new Error(`dirty image state check failed: ${JSON.stringify(ds.checks)}`);
  row('dirty: checkSeal(state), warm', await med(() => checkSeal(dirtyPath, { scope: 'state' })), `${(ds.bytesRead / MiB).toFixed(1)} MiB read`);
  const df = await checkSeal(dirtyPath, { scope: 'full' });
  if (!df.ok) throw new Error(`dirty image full check failed: ${JSON.stringify(df.checks)}`);
  row('dirty: checkSeal(full), warm', await med(() => checkSeal(dirtyPath, { scope: 'full' })), `${(df.bytesRead / MiB).toFixed(0)} MiB read`);
  if (coldOk) {
    row('dirty: checkSeal(state), cold', await med(() => checkSeal(dirtyPath, { scope: 'state' }), dropCaches));
    row('dirty: checkSeal(full), cold', await med(() => checkSeal(dirtyPath, { scope: 'full' }), dropCaches));
  }
  console.log(`\n${mib} MiB VM, median of ${runs}, node ${process.version}${coldOk ? '' : ' (cold runs skipped: drop_caches not allowed)'}`);
  console.log('| what | seconds | notes |');
  console.log('|---|---|---|');
  for (const r of rows) console.log(r);
} finally {
  await fsp.rm(dir, { recursive: true, force: true });
}
