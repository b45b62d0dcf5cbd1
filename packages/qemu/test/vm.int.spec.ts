import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readdirSync, readlinkSync } from 'node:fs';
import { QemuLaunchError, QemuStateError, detectAccel, launchVm, pauseIfRunning, probeQemu, resume, type Accel } from '@vmsave/qemu';
import { findQmpServerProcess } from '@vmsave/qmp';
import { Scratch, testAccel, testVm } from './helpers.ts';

const scratch = new Scratch();
let accel: Accel;

beforeAll(async () => {
  await scratch.init('vmsave-qemu-vm-');
  accel = await testAccel();
});

afterEach(async () => {
  await scratch.release();
});

afterAll(async () => {
  await scratch.dispose();
});

describe('probeQemu / detectAccel', () => {
  it('reports version, mapped-ram, direct-io, machines, cached', async () => {
    const caps = await probeQemu();
    expect(caps.version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(caps.major).toBeGreaterThanOrEqual(9);
    expect(caps.mappedRam).toBe(true);
    expect(typeof caps.directIo).toBe('boolean');
    expect(caps.machines).toContain('q35');
    expect(caps.machineAliases['q35']).toMatch(/^pc-q35-/);
    expect(caps.machines).toContain(caps.machineAliases['q35']);
    expect(await probeQemu()).toBe(caps);
    expect(await detectAccel()).toBe(caps.kvm ? 'kvm' : 'tcg');
  });
});

describe('launchVm', () => {
  it("a QEMU started while another VM's QMP connection is open does not inherit it (that VM greets again once we close)", async () => {
    const a = scratch.vm(await launchVm(testVm('holder', 64), { qmpSocketPath: scratch.path('holder.qmp'), accel, killWithParent: true, startPaused: true }));
    const held = await a.connectQmp();
    const b = scratch.vm(await launchVm(testVm('child', 64), { qmpSocketPath: scratch.path('child.qmp'), accel, killWithParent: true, startPaused: true }));
    expect(
      readdirSync(`/proc/${b.pid}/fd`)
        .map((fd) => Number(fd))
        .filter((fd) => fd > 2 && readlinkSync(`/proc/${b.pid}/fd/${fd}`).startsWith('socket:')).length,
    ).toBeLessThanOrEqual(2);
    await held.close();
    // Had B inherited our socket, A would still see a client and never greet.
    const again = scratch.qmp(await a.connectQmp({ timeoutMs: 3000 }));
    expect(await again.execute('query-status')).toMatchObject({ status: 'prelaunch' });
  });

  it('starts a VM with its own QMP socket, pauses and resumes it, and stops it on dispose', async () => {
    const def = testVm('lifecycle', 64);
    const vm = scratch.vm(await launchVm(def, { qmpSocketPath: scratch.path('life.qmp'), accel, killWithParent: true }));
    expect(vm.pid).toBeGreaterThan(0);
    expect(vm.argv).toContain(def.uuid);
    const qmp = scratch.qmp(await vm.connectQmp());
    expect(await qmp.execute('query-name')).toEqual({ name: 'lifecycle' });
    expect(await qmp.execute<{ UUID: string }>('query-uuid')).toEqual({ UUID: def.uuid });
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'running' });

    expect(await pauseIfRunning(qmp)).toBe(true);
    expect(await pauseIfRunning(qmp)).toBe(false);
    await resume(qmp);
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'running' });
    await resume(qmp);

    const peer = await findQmpServerProcess(vm.qmpSocketPath);
    expect(peer?.pid).toBe(vm.pid);
    expect(peer?.cmdline).toEqual(vm.argv.map((a, i) => (i === 0 ? peer?.cmdline[0] : a)));

    await qmp.close();
    await vm[Symbol.asyncDispose]();
    expect(vm.exitStatus).toBeDefined();
  });

  it('starts paused and waiting for an incoming migration; resume refuses that state', async () => {
    const vm = scratch.vm(await launchVm(testVm('incoming', 64), { qmpSocketPath: scratch.path('in.qmp'), accel, incoming: 'defer', startPaused: true, killWithParent: true }));
    const qmp = scratch.qmp(await vm.connectQmp());
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'inmigrate', running: false });
    expect(await pauseIfRunning(qmp)).toBe(false);
    await expect(resume(qmp)).rejects.toBeInstanceOf(QemuStateError);
  });

  it("fails with QEMU's stderr when QEMU refuses the command line", async () => {
    const error = await launchVm(testVm('broken', 64, ['-device', 'no-such-device']), {
      qmpSocketPath: scratch.path('broken.qmp'),
      accel,
      killWithParent: true,
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QemuLaunchError);
    expect(error).toMatchObject({ code: 'LAUNCH_FAILED', stage: 'launch' });
    expect((error as QemuLaunchError).stderr).toMatch(/no-such-device/);
    expect((error as Error).message).toMatch(/no-such-device/);
  });

  it('refuses a QMP socket path another QEMU is serving', async () => {
    const socket = scratch.path('shared.qmp');
    scratch.vm(await launchVm(testVm('first', 64), { qmpSocketPath: socket, accel, startPaused: true, killWithParent: true }));
    await expect(launchVm(testVm('second', 64), { qmpSocketPath: socket, accel, startPaused: true, killWithParent: true })).rejects.toThrow(/in use/);
  });
});
