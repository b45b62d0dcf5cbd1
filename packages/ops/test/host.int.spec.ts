/** The VM registry and crash recovery, with real QEMU. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { constants, existsSync, openSync, closeSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { detectAccel, launchVm, type VmProcess } from '@vmsave/qemu';
import { JobJournal, VmRegistry, recoverInterrupted } from '../src/index.ts';
import { patternVm, tempDir } from './helpers.ts';

let dir: string;
let cleanup: () => Promise<void>;
const vms: VmProcess[] = [];

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vmsave-ops-host-'));
});
afterAll(async () => {
  for (const vm of vms) await vm.kill().catch(() => undefined);
  await cleanup();
});

describe('VmRegistry', () => {
  it('starts a VM with the detected accelerator when none is given, detached with its log beside the sockets', async () => {
    const reg = new VmRegistry({ vmDir: path.join(dir, 'vms'), qmpDir: path.join(dir, 'qmp') });
    await reg.init();
    expect(reg.logDir).toBe(path.join(dir, 'logs'));
    await reg.define(await patternVm(dir, 'reg1', 64));
    expect(await reg.status('reg1')).toBe('stopped');
    const vm = await reg.start('reg1', { paused: true, detached: true });
    vms.push(vm);
    expect(vm.argv.join(' ')).toContain(`accel=${await detectAccel()}`);
    expect(existsSync(reg.logOf('reg1'))).toBe(true);
    expect(await reg.status('reg1')).toBe('prelaunch');
    expect((await reg.summaries()).map((s) => [s.name, s.status])).toEqual([['reg1', 'prelaunch']]);
    await expect(reg.start('reg1')).rejects.toThrow(/already running/);
    await vm.kill();
  });
});

describe('JobJournal', () => {
  it('lists what was left behind and drops records it cannot read', async () => {
    const j = new JobJournal(path.join(dir, 'jobs'));
    await j.init();
    await j.write({ jobId: 's-1', attempt: 1, fencingToken: 3, kind: 'save', vm: 'x' });
    await j.write({ jobId: 's-1', attempt: 1, fencingToken: 3, kind: 'save', vm: 'x', wasRunning: true });
    writeFileSync(j.pathOf('garbage'), '{not json');
    expect(await j.list()).toEqual([{ jobId: 's-1', attempt: 1, fencingToken: 3, kind: 'save', vm: 'x', wasRunning: true }]);
    expect(existsSync(j.pathOf('garbage'))).toBe(false);
    await j.remove('s-1');
    expect(await j.list()).toEqual([]);
  });
});

describe('recoverInterrupted', () => {
  async function pausedWithFdset(name: string) {
    const def = await patternVm(dir, name, 64);
    const socket = path.join(dir, `${name}.qmp`);
    const vm = await launchVm(def, { qmpSocketPath: socket, accel: await detectAccel(), killWithParent: true });
    vms.push(vm);
    const image = path.join(dir, `${name}.vmsave`);
    const fd = openSync(image, constants.O_WRONLY | constants.O_CREAT);
    const qmp = await vm.connectQmp();
    await qmp.execute('stop');
    await qmp.addFd(fd, { opaque: 'left by a crash' });
    closeSync(fd);
    await qmp.close();
    return { vm, socket, image };
  }

  it('a save interrupted after the pause: fdsets removed, the VM runs again, the partial image is gone', async () => {
    const { vm, socket, image } = await pausedWithFdset('crash1');
    const r = await recoverInterrupted({ jobId: 's-2', attempt: 1, fencingToken: 1, kind: 'save', vm: 'crash1', imagePath: image, wasRunning: true }, { qmpSocketPath: socket });
    expect(r).toEqual({ vmResumed: true, migration: 'none', error: undefined });
    expect(existsSync(image)).toBe(false);
    await using qmp = await vm.connectQmp();
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
    expect(await qmp.execute<unknown[]>('query-fdsets')).toEqual([]);
  });

  it('a VM that was paused before the save stays paused', async () => {
    const { vm, socket, image } = await pausedWithFdset('crash2');
    const r = await recoverInterrupted({ jobId: 's-3', attempt: 2, fencingToken: 1, kind: 'save', vm: 'crash2', imagePath: image, wasRunning: false }, { qmpSocketPath: socket });
    expect(r.vmResumed).toBe(false);
    await using qmp = await vm.connectQmp();
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('paused');
  });

  it('a VM that is gone: reported, and the partial image still removed', async () => {
    const image = path.join(dir, 'gone.vmsave');
    writeFileSync(image, 'partial');
    const r = await recoverInterrupted({ jobId: 's-4', attempt: 1, fencingToken: 1, kind: 'save', vm: 'gone', imagePath: image }, { qmpSocketPath: path.join(dir, 'gone.qmp') });
    expect(r).toMatchObject({ vmResumed: false, migration: 'unknown', error: expect.any(String) });
    expect(existsSync(image)).toBe(false);
  });
});
