import { randomUUID } from 'node:crypto';
import { access, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchVm, type LaunchOptions, type VmDefinition, type VmProcess } from '@vmsave/qemu';
import { parseHeartbeat, type HeartbeatSample } from '../checker.ts';
import { HEARTBEAT_ADDR, PAGE_SIZE } from '../layout.ts';
import { guestAppend, type GuestParams } from '../params.ts';

/** Where `infra/guest/build.sh` (run by `infra/setup.sh`) writes the guest kernel. */
export const GUEST_KERNEL = fileURLToPath(new URL('../../../../infra/guest/build/guest.elf', import.meta.url));

/** Undefined when the guest kernel is there, else why not (for a test's skip message). */
export async function guestKernelMissing(kernel = GUEST_KERNEL): Promise<string | undefined> {
  try {
    await access(kernel);
    return undefined;
  } catch {
    return `test guest kernel ${kernel} is missing: run infra/guest/build.sh (npm run setup does)`;
  }
}

/**
 * The host's TSC frequency in kHz from /proc/cpuinfo, when the CPU has a constant TSC (then a
 * KVM guest's TSC runs at it); undefined otherwise.
 */
export async function hostTscKhz(): Promise<number | undefined> {
  const info = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  if (!/^flags\s*:.*\bconstant_tsc\b/m.test(info)) return undefined;
  const mhz = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(info)?.[1];
  return mhz ? Math.round(Number(mhz) * 1000) : undefined;
}

/** QEMU arguments that boot the guest kernel with these parameters. */
export function testGuestArgs(params: GuestParams, kernel = GUEST_KERNEL): string[] {
  return ['-kernel', kernel, '-append', guestAppend(params)];
}

export interface TestGuestOptions extends GuestParams, Omit<LaunchOptions, 'incoming'> {
  name?: string;
  /** Guest RAM; keep it small in tests (default 64). */
  memoryMiB?: number;
  kernel?: string;
  /** Extra QEMU arguments. */
  args?: string[];
}

/** The VM definition of a test guest (q35, one vCPU), for `launchVm` or a vmsave VM definition. */
export function testGuestDefinition(opts: TestGuestOptions): VmDefinition {
  return {
    name: opts.name ?? 'testguest',
    uuid: randomUUID(),
    machine: 'q35',
    memoryMiB: opts.memoryMiB ?? 64,
    vcpus: 1,
    args: [...testGuestArgs(opts, opts.kernel), ...(opts.args ?? [])],
  };
}

/** Starts the test guest (its `tscKhz` defaults to {@link hostTscKhz}). Dispose the handle to stop it. */
export async function launchTestGuest(opts: TestGuestOptions): Promise<{ vm: VmProcess; definition: VmDefinition }> {
  const tscKhz = opts.tscKhz ?? (await hostTscKhz());
  const definition = testGuestDefinition({ ...opts, tscKhz });
  const { name: _n, memoryMiB: _m, kernel: _k, args: _a, rate: _r, share: _s, seed: _e, tscKhz: _t, stallTicks: _st, ...launch } = opts;
  return { vm: await launchVm(definition, launch), definition };
}

interface Qmp {
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
}

/** Guest memory `[addr, addr + size)` through QMP `pmemsave` into `file` (read back, then removed). */
export async function readGuestMemory(qmp: Qmp, dir: string, addr: number, size: number): Promise<Buffer> {
  const file = path.join(dir, `testguest-${randomUUID()}.bin`);
  try {
    await qmp.execute('pmemsave', { val: addr, size, filename: file });
    return await readFile(file);
  } finally {
    await rm(file, { force: true });
  }
}

/** The heartbeat now (undefined before the guest wrote it), stamped with `performance.now()` halfway through the read. */
export async function sampleHeartbeat(qmp: Qmp, dir: string): Promise<HeartbeatSample | undefined> {
  const t0 = performance.now();
  const page = await readGuestMemory(qmp, dir, HEARTBEAT_ADDR, PAGE_SIZE);
  const t1 = performance.now();
  const heartbeat = parseHeartbeat(page);
  return heartbeat ? { wallMs: (t0 + t1) / 2, heartbeat } : undefined;
}

/** Waits until the guest has booted and written a page (SeaBIOS takes seconds under nested KVM). */
export async function waitForGuest(qmp: Qmp, dir: string, { timeoutMs = 60_000 }: { timeoutMs?: number } = {}): Promise<HeartbeatSample> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const s = await sampleHeartbeat(qmp, dir);
    if (s && s.heartbeat.cursor > 0) return s;
    if (performance.now() > deadline) throw new Error(`test guest did not write its heartbeat within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
