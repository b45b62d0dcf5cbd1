/**
 * Verify-time benchmark (not a test): sparse images of two RAM sizes made by real QEMU,
 * each verified a few times. Shows that verifying a sparse image reads only metadata:
 * the bytes read (rchar from /proc/self/io) grow with the bitmaps, not with the RAM size.
 *
 *   cd packages/image && npx tsx bench/verify-bench.ts [MiB ...]   (default: 256 2048)
 */
import { readFileSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { verifyImage } from '../src/node/index.ts';
import { makeVmsaveImage } from '../test/fixtures.ts';

const rchar = (): number => Number(/rchar:\s*(\d+)/.exec(readFileSync('/proc/self/io', 'utf8'))![1]);
const sizes = process.argv
  .slice(2)
  .map(Number)
  .filter((n) => n > 0);
const dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-bench-'));
try {
  console.log('RAM MiB | logical bytes | allocated bytes | verify ms (median of 5) | bytes read by verify | ok');
  for (const mib of sizes.length ? sizes : [256, 2048]) {
    const path = await makeVmsaveImage(dir, `sparse-${mib}.vmsave`, 'sparse', { memMiB: mib, channels: 2 });
    const st = await fsp.stat(path);
    const times: number[] = [];
    let read = 0;
    let ok = true;
    for (let i = 0; i < 5; i++) {
      const r0 = rchar();
      const t0 = performance.now();
      const r = await verifyImage(path);
      times.push(performance.now() - t0);
      read = rchar() - r0;
      ok &&= r.ok;
    }
    times.sort((a, b) => a - b);
    console.log(`${mib} | ${st.size} | ${st.blocks * 512} | ${times[2]!.toFixed(1)} | ${read} | ${ok}`);
    await fsp.rm(path);
  }
} finally {
  await fsp.rm(dir, { recursive: true, force: true });
}
