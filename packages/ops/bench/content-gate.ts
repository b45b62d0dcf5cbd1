/**
 * The restore's content gate, measured (not a test): a VM saved sparse through `saveVm` (so
 * sealed) while idle and while most of its RAM holds data, then restored with `content: 'state'`
 * and `content: 'full'`. Prints medians of the gate alone (`checkSeal`, with the image's pages in
 * the page cache and dropped from it with `dd iflag=nocache`, that file only), and of the whole
 * restore (`restoreImage` durationMs and its timings.gateMs).
 *
 *   cd packages/ops && npx tsx --conditions=development bench/content-gate.ts [memoryMiB=256] [runs=5]
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { QemuCapabilities } from '@vmsave/contracts';
import { checkSeal } from '@vmsave/image/node';
import { detectAccel, launchVm, probeQemu } from '@vmsave/qemu';
import { MiB, PATTERN_ADDR, makePattern, patternVm } from '@vmsave/testkit';
import { restoreImage, saveVm } from '../src/index.ts';

const memoryMiB = Number(process.argv[2] ?? 256);
const runs = Number(process.argv[3] ?? 5);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const ms = (x: number): string => x.toFixed(1).padStart(8);
const dropCache = (file: string): void => void execFileSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);

const dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-gate-bench-'));
try {
  const q = await probeQemu();
  const accel = await detectAccel();
  const caps: QemuCapabilities = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel };
  const pattern = makePattern();
  // Dirty: pattern copies from PATTERN_ADDR up to 3/4 of RAM; idle: no pattern at all.
  const copies = Math.max(1, Math.floor((memoryMiB * MiB * 0.75 - PATTERN_ADDR) / pattern.length));
  const images: { label: string; file: string }[] = [];
  for (const [label, repeat] of [
    ['idle', 0],
    ['dirty', copies],
  ] as const) {
    const def = repeat ? await patternVm(dir, label, memoryMiB, pattern, repeat) : { ...(await patternVm(dir, label, memoryMiB, pattern)), args: [] };
    const vm = await launchVm(def, { qmpSocketPath: path.join(dir, `${label}.qmp`), accel });
    const qmp = await vm.connectQmp();
    const file = path.join(dir, `${label}.vmsave`);
    const r = await saveVm({
      qmp,
      imagePath: file,
      format: 'sparse',
      channels: 1,
      directIo: false,
      after: 'quit',
      vm: def,
      host: 'bench',
      jobId: `bench-${label}`,
      hostCaps: caps,
    });
    await qmp.close();
    await vm.kill().catch(() => undefined);
    const st = await stat(file);
    console.log(
      `${label}: ${memoryMiB} MiB VM, image ${(st.size / MiB).toFixed(1)} MiB logical, ${((st.blocks * 512) / MiB).toFixed(1)} MiB allocated, sealed in ${r.sealMs.toFixed(1)} ms (${r.seal.chunks} chunks of ${r.seal.chunkBytes / MiB} MiB)`,
    );
    images.push({ label, file });
  }

  console.log(`\nthe gate alone (checkSeal), medians of ${runs}, ms`);
  console.log('image   scope   cached ms   cold ms   bytes read');
  for (const { label, file } of images) {
    for (const scope of ['state', 'full'] as const) {
      const warm: number[] = [];
      const cold: number[] = [];
      let bytes = 0;
      for (let i = 0; i < runs; i++) {
        dropCache(file);
        const c = await checkSeal(file, { scope });
        cold.push(c.durationMs);
        const w = await checkSeal(file, { scope });
        warm.push(w.durationMs);
        bytes = w.bytesRead;
        if (!w.ok || !c.ok) throw new Error(`${label} ${scope}: the seal check failed`);
      }
      console.log(`${label.padEnd(7)} ${scope.padEnd(5)} ${ms(median(warm))}    ${ms(median(cold))}   ${bytes}`);
    }
  }

  console.log(`\nthe whole restore (restoreImage, cached image), medians of ${runs}, ms`);
  console.log('image   verify   restore ms   gateMs (all checks before QEMU)');
  for (const { label, file } of images) {
    for (const content of ['state', 'full'] as const) {
      const total: number[] = [];
      const gate: number[] = [];
      for (let i = 0; i < runs; i++) {
        const r = await restoreImage({ imagePath: file, qmpSocketPath: path.join(dir, `r-${label}-${content}-${i}.qmp`), hostCaps: caps, after: 'paused', accel, content });
        total.push(r.durationMs);
        const timings = (r as { timings?: { gateMs?: number } }).timings;
        gate.push(timings?.gateMs ?? Number.NaN);
        await r.qmp.close();
        await r.vm.kill();
      }
      console.log(`${label.padEnd(7)} ${content.padEnd(6)}  ${ms(median(total))}     ${ms(median(gate))}`);
    }
  }
  console.log(`\nQEMU ${q.version}, accel ${accel}, ${os.cpus().length} CPUs`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
