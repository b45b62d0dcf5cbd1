/** The first-run demo VM: small, q35, no disk, with non-zero RAM content from a generated file. */
import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { VmDefinition } from '@vmsave/contracts';

const MiB = 1024 * 1024;

/** Pseudo-random, incompressible-looking bytes (xorshift), so the demo images carry real data. */
function patternBytes(size: number, seed = 0x5eed): Buffer {
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
 * Write the demo's RAM content file under `dir` and return a definition that loads it at 16 MiB
 * (QEMU's loader device; no guest OS needed). A quarter of RAM holds data, the rest stays zero,
 * so sparse and legacy images differ the way they do on real guests.
 */
export async function writeDemoVm(dir: string, opts: { name?: string; memoryMiB?: number } = {}): Promise<VmDefinition> {
  const name = opts.name ?? 'demo';
  const memoryMiB = opts.memoryMiB ?? 256;
  await mkdir(dir, { recursive: true });
  const file = path.resolve(dir, `${name}.ram`);
  const dataMiB = Math.max(1, Math.min(Math.floor(memoryMiB / 4), memoryMiB - 17));
  await writeFile(file, patternBytes(dataMiB * MiB));
  return {
    name,
    uuid: randomUUID(),
    machine: 'q35',
    memoryMiB,
    vcpus: 1,
    args: ['-device', `loader,file=${file.replaceAll(',', ',,')},addr=${16 * MiB},force-raw=on`],
  };
}
