/**
 * The pieces a caller uses after losing track of QEMU: a detached launch (QEMU outlives the
 * caller) and abandoning a migration that is still running (a crashed executor, back up).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { constants, readFileSync } from 'node:fs';
import { abandonMigration, launchVm, type Accel } from '@vmsave/qemu';
import { Scratch, testAccel, testVm } from './helpers.ts';

const scratch = new Scratch();
let accel: Accel;

beforeAll(async () => {
  await scratch.init('vmsave-qemu-recovery-');
  accel = await testAccel();
});
afterEach(async () => {
  await scratch.release();
});
afterAll(async () => {
  await scratch.dispose();
});

/** Field 6 of /proc/PID/stat (after the parenthesised command name): the session id. */
function sessionOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
}

describe('launchVm detached', () => {
  it('runs QEMU in its own session with stderr appended to the log file, and disposes like any VM', async () => {
    const logFile = scratch.path('logs/detached.log');
    const vm = scratch.vm(await launchVm(testVm('detached', 64), { qmpSocketPath: scratch.path('detached.qmp'), accel, startPaused: true, detached: { logFile } }));
    // A detached QEMU leads its own session; ours is another.
    expect(sessionOf(vm.pid)).toBe(vm.pid);
    expect(sessionOf(process.pid)).not.toBe(vm.pid);
    const qmp = await vm.connectQmp();
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' });
    await qmp.close();
    await vm[Symbol.asyncDispose]();
    expect(vm.exitStatus).toBeDefined();
  });

  it('a QEMU that refuses its command line fails the launch with its stderr, read back from the log', async () => {
    const logFile = scratch.path('logs/bad.log');
    const err = await launchVm(testVm('bad', 64, ['-device', 'no-such-device']), { qmpSocketPath: scratch.path('bad.qmp'), accel, detached: { logFile } }).catch((e: unknown) => e);
    expect((err as Error).name).toBe('QemuLaunchError');
    expect((err as { stderr?: string }).stderr).toMatch(/no-such-device/);
    expect(readFileSync(logFile, 'utf8')).toMatch(/no-such-device/);
  });

  it('detached and killWithParent exclude each other', async () => {
    const err = await launchVm(testVm('both', 64), { qmpSocketPath: scratch.path('both.qmp'), accel, detached: { logFile: scratch.path('both.log') }, killWithParent: true }).catch(
      (e: unknown) => e,
    );
    expect((err as Error).message).toMatch(/killWithParent and detached/);
  });
});

describe('abandonMigration', () => {
  it('cancels a save still running, removes its fdset, and says what it found', async () => {
    const vm = scratch.vm(await launchVm(testVm('busy', 128), { qmpSocketPath: scratch.path('busy.qmp'), accel, killWithParent: true }));
    const qmp = scratch.qmp(await vm.connectQmp());
    await qmp.execute('stop');
    const fd = scratch.open(scratch.path('busy.img'), constants.O_WRONLY | constants.O_CREAT);
    const { fdsetId } = await qmp.addFd(fd, { opaque: 'test' });
    // 1 MiB/s: the 128 MiB save is still active when we abandon it.
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 1024 * 1024 });
    await qmp.execute('migrate', { uri: `file:/dev/fdset/${fdsetId},offset=0x0` });
    expect(await abandonMigration(qmp)).toEqual({ status: expect.stringMatching(/^(setup|active)$/) });
    expect((await qmp.execute<{ status: string }>('query-migrate')).status).toBe('cancelled');
    expect(await qmp.execute<unknown[]>('query-fdsets')).toEqual([]);
    // Nothing left to do: the status is reported, nothing fails.
    expect(await abandonMigration(qmp)).toEqual({ status: 'cancelled' });
  });

  it('a QEMU that never migrated reports none', async () => {
    const vm = scratch.vm(await launchVm(testVm('idle', 64), { qmpSocketPath: scratch.path('idle.qmp'), accel, killWithParent: true, startPaused: true }));
    const qmp = scratch.qmp(await vm.connectQmp());
    expect(await abandonMigration(qmp)).toEqual({ status: 'none' });
  });
});
