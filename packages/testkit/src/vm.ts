import { randomUUID } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

export const MiB = 1024 * 1024;
/** Guest-physical address and size of the pattern the tests put into RAM. */
export const PATTERN_ADDR = 16 * MiB;
export const PATTERN_SIZE = 8 * MiB;

export interface TestVmDefinition {
  name: string;
  uuid: string;
  machine: string;
  memoryMiB: number;
  vcpus: number;
  args: string[];
}

/** Non-zero, non-repeating bytes (so a page in the wrong place would show). */
export function makePattern(size = PATTERN_SIZE, seed = 1): Buffer {
  const b = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b.writeUInt32LE((x | 0x01010101) >>> 0, i);
  }
  return b;
}

/**
 * A small VM whose RAM holds `pattern` at PATTERN_ADDR from reset on (QEMU's loader device
 * copies it in; no guest OS is needed). `repeat` loads the same file that many times in a row.
 */
export async function patternVm(dir: string, name: string, memoryMiB = 128, pattern = makePattern(), repeat = 1): Promise<TestVmDefinition> {
  const file = path.join(dir, `${name}.pattern`);
  await writeFile(file, pattern);
  const args: string[] = [];
  for (let i = 0; i < repeat; i++) args.push('-device', `loader,file=${file},addr=${PATTERN_ADDR + i * pattern.length},force-raw=on`);
  return { name, uuid: randomUUID(), machine: 'q35', memoryMiB, vcpus: 1, args };
}

interface Qmp {
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
}

/** Guest memory over a region, read with pmemsave. */
export async function guestMemory(qmp: Qmp, dir: string, addr = PATTERN_ADDR, size = PATTERN_SIZE): Promise<Buffer> {
  const file = path.join(dir, `mem-${randomUUID()}.bin`);
  await qmp.execute('pmemsave', { val: addr, size, filename: file });
  const b = await readFile(file);
  await rm(file, { force: true });
  return b;
}
