import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { VmDefinition } from '@vmsave/contracts';
import type { QmpClient } from '@vmsave/qmp';

export const MiB = 1024 * 1024;
/** Guest-physical address and size of the pattern the tests put into RAM. */
export const PATTERN_ADDR = 16 * MiB;
export const PATTERN_SIZE = 8 * MiB;

/** Non-zero, non-repeating bytes (so a page in the wrong place would show). */
export function makePattern(size = PATTERN_SIZE, seed = 1): Buffer {
  const b = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b.writeUInt32LE((x | 0x01010101) >>> 0, i);
  }
  return b;
}

export async function tempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A small VM whose RAM holds `pattern` at PATTERN_ADDR from reset on (loaded by QEMU, no guest OS needed). */
export async function patternVm(dir: string, name: string, memoryMiB = 128, pattern = makePattern()): Promise<VmDefinition> {
  const file = path.join(dir, `${name}.pattern`);
  await writeFile(file, pattern);
  return { name, uuid: randomUUID(), machine: 'q35', memoryMiB, vcpus: 1, args: ['-device', `loader,file=${file},addr=${PATTERN_ADDR},force-raw=on`] };
}

/** Guest memory over the pattern region, read with pmemsave. */
export async function guestMemory(qmp: QmpClient, dir: string, addr = PATTERN_ADDR, size = PATTERN_SIZE): Promise<Buffer> {
  const file = path.join(dir, `mem-${randomUUID()}.bin`);
  await qmp.execute('pmemsave', { val: addr, size, filename: file });
  const b = await readFile(file);
  await rm(file, { force: true });
  return b;
}
