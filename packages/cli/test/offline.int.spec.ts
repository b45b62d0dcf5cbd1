/**
 * Offline save/restore on a QEMU that vmsave did not start: the CLI reads its command line,
 * records the definition, and restores an identical QEMU whose RAM equals the source's.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient } from '@vmsave/qmp';
import { detectAccel, spawnQemu, type VmProcess } from '@vmsave/qemu';
import { guestMemory, makePattern, patternVm } from '@vmsave/testkit';
import { EXIT } from '../src/errors.ts';
import { lines, vmsave } from './helpers.ts';

let dir: string;
let source: VmProcess | undefined;
const pids: number[] = [];

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-cli-offline-'));
});

afterAll(async () => {
  await source?.kill().catch(() => undefined);
  for (const pid of pids)
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  await rm(dir, { recursive: true, force: true });
});

describe('offline save --qmp → inspect → verify → restore', () => {
  it('restores an identical QEMU with the same guest memory', async () => {
    const def = await patternVm(dir, 'ext-vm', 96, makePattern(undefined, 7));
    const extra = ['-device', 'virtio-rng-pci,id=rng0', '-device', 'pcie-root-port,id=rp1,chassis=1', '-object', 'memory-backend-ram,id=spare,size=1M'];
    const accel = await detectAccel();
    // Started by the test, not by vmsave, the way another tool would: its own -name/-uuid/-machine/-m/-smp.
    source = await spawnQemu(
      [
        '-nodefaults',
        '-no-user-config',
        '-display',
        'none',
        '-S',
        '-name',
        `guest=${def.name},debug-threads=on`,
        '-uuid',
        def.uuid,
        '-machine',
        `q35,accel=${accel}`,
        '-m',
        `${def.memoryMiB}M`,
        '-smp',
        '1',
        ...def.args,
        ...extra,
      ],
      { qmpSocketPath: path.join(dir, 'source.qmp'), killWithParent: true },
    );
    const before = await (async () => {
      await using qmp = await source!.connectQmp();
      await qmp.execute('cont');
      return await guestMemory(qmp, dir);
    })();
    // VMSAVE_HOST names this host in the image, as the executor's saves do.
    const env = { VMSAVE_STATE_DIR: path.join(dir, 'state'), VMSAVE_HOST: 'offline-host-1' };
    const image = path.join(dir, 'ext.vmsave');

    const save = await vmsave(['save', '--qmp', source.qmpSocketPath, '--out', image, '--format', 'sparse', '--after', 'quit', '--json'], env);
    expect(save.code, save.stderr).toBe(0);
    const saved = save.json<{
      imagePath: string;
      format: string;
      bytes: number;
      blocks: number;
      vmState: string;
      definition: { name: string; args: string[] };
      dropped: string[];
    }>();
    expect(saved).toMatchObject({ imagePath: image, format: 'sparse', vmState: 'quit', definition: { name: 'ext-vm' } });
    expect(saved.bytes).toBeGreaterThan(0);
    expect(saved.dropped).toEqual(expect.arrayContaining(['-S', expect.stringMatching(/^-qmp unix:/)]));
    await source.exited;

    const inspect = await vmsave(['inspect', image, '--json'], env);
    expect(inspect.code, inspect.stderr).toBe(0);
    const ins = inspect.json<{
      kind: string;
      header: { complete: boolean; format: string };
      descriptor: { host: string; vm: { name: string; uuid: string; machine: string; memoryMiB: number; vcpus: number; args: string[] } };
    }>();
    expect(ins.kind).toBe('vmsave');
    expect(ins.header).toMatchObject({ complete: true, format: 'sparse' });
    expect(ins.descriptor.vm).toMatchObject({ name: 'ext-vm', uuid: def.uuid, memoryMiB: 96, vcpus: 1, machine: expect.stringMatching(/q35/) });
    expect(ins.descriptor.host).toBe('offline-host-1');
    expect(ins.descriptor.vm.args).toEqual([...def.args, ...extra]);
    const human = await vmsave(['inspect', image], env);
    expect(human.stdout).toMatch(/virtio-rng-pci,id=rng0/);

    const verify = await vmsave(['verify', image, '--json'], env);
    expect(verify.code, verify.stderr).toBe(0);
    const v = verify.json<{ ok: boolean; kind: string; source: string; format: string; checks: { name: string; status: string }[] }>();
    expect(v).toMatchObject({ ok: true, kind: 'vmsave', source: 'vmsave', format: 'sparse' });
    expect(v.checks.filter((c) => c.status !== 'pass' && c.status !== 'skip')).toEqual([]);
    expect(v.checks.map((c) => c.name)).toEqual(expect.arrayContaining(['header.magic', 'format.matches-stream', 'mapped-ram.layout', 'sparseness']));

    const qmpDir = path.join(dir, 'restored-qmp');
    const restore = await vmsave(['restore', image, '--qmp-dir', qmpDir, '--json'], env);
    expect(restore.code, restore.stderr).toBe(0);
    const r = restore.json<{ pid: number; qmpSocket: string; vmState: string; vm: string }>();
    pids.push(r.pid);
    expect(r).toMatchObject({ vm: 'ext-vm', vmState: 'running', qmpSocket: path.join(qmpDir, 'ext-vm.qmp') });
    // The CLI has exited; its QEMU lives on, with the recorded command line.
    const cmdline = (await import('node:fs/promises')).readFile(`/proc/${r.pid}/cmdline`, 'utf8');
    const argv = (await cmdline).split('\0');
    for (const a of extra) expect(argv).toContain(a);
    await using qmp = await QmpClient.connect(r.qmpSocket, { timeoutMs: 5000 });
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
    const after = await guestMemory(qmp, dir);
    expect(after.equals(before)).toBe(true);
  });

  it('a missing image and a non-image are one-line errors', async () => {
    const missing = await vmsave(['verify', path.join(dir, 'nope.vmsave')]);
    expect(missing.code).toBe(EXIT.error);
    expect(lines(missing.stderr)).toEqual([expect.stringMatching(/^vmsave: no such file/)]);
    const junk = path.join(dir, 'junk.bin');
    await (await import('node:fs/promises')).writeFile(junk, Buffer.alloc(8192, 7));
    const bad = await vmsave(['verify', junk, '--json']);
    expect(bad.code).toBe(EXIT.rejected);
    expect(bad.json<{ ok: boolean }>().ok).toBe(false);
    expect(lines(bad.stderr)).toHaveLength(1);
    const ins = await vmsave(['inspect', junk]);
    expect(ins.code).toBe(EXIT.error);
    expect(lines(ins.stderr)).toHaveLength(1);
  });
});
