import { randomUUID } from 'node:crypto';
import { constants, openSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { detectAccel, type Accel, type VmDefinition, type VmProcess } from '@vmsave/qemu';
import type { QmpClient } from '@vmsave/qmp';

/** Temp dir + every VM and QMP session a test opened, torn down in reverse order. */
export class Scratch {
  dir = '';
  readonly #vms: VmProcess[] = [];
  readonly #sessions: QmpClient[] = [];
  readonly #fds: number[] = [];

  async init(prefix: string): Promise<void> {
    this.dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  }

  path(name: string): string {
    return path.join(this.dir, name);
  }

  vm<T extends VmProcess>(vm: T): T {
    this.#vms.push(vm);
    return vm;
  }

  qmp<T extends QmpClient>(qmp: T): T {
    this.#sessions.push(qmp);
    return qmp;
  }

  open(file: string, flags: number): number {
    const fd = openSync(file, flags);
    this.#fds.push(fd);
    return fd;
  }

  async release(): Promise<void> {
    for (const qmp of this.#sessions.splice(0)) await qmp.close();
    for (const vm of this.#vms.splice(0)) await vm[Symbol.asyncDispose]();
    const { closeSync } = await import('node:fs');
    for (const fd of this.#fds.splice(0)) {
      try {
        closeSync(fd);
      } catch {
        // already closed by the test
      }
    }
  }

  async dispose(): Promise<void> {
    await this.release();
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * KVM when usable, else TCG. VMSAVE_TEST_ACCEL=tcg forces TCG, to run the
 * suite the way a host without /dev/kvm would.
 */
export async function testAccel(): Promise<Accel> {
  const forced = process.env['VMSAVE_TEST_ACCEL'];
  if (forced === 'tcg' || forced === 'kvm') return forced;
  return detectAccel();
}

export function testVm(name: string, memoryMiB: number, args: string[] = []): VmDefinition {
  return { name, uuid: randomUUID(), machine: 'q35', memoryMiB, vcpus: 1, args };
}

/** Opens with O_DIRECT, or undefined where the file system refuses it (e.g. older tmpfs). */
export function tryOpenDirect(scratch: Scratch, file: string, flags: number): number | undefined {
  try {
    return scratch.open(file, flags | constants.O_DIRECT);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EINVAL') return undefined;
    throw error;
  }
}
