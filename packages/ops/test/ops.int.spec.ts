import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmod, mkdir, stat, readdir } from 'node:fs/promises';
import fs from 'node:fs';
import path from 'node:path';
import { detectAccel, launchVm, probeQemu, type VmProcess } from '@vmsave/qemu';
import { fingerprintImage, readImageHeader, type ImageHeader } from '@vmsave/image/node';
import type { QemuCapabilities } from '@vmsave/contracts';
import { OpError, restoreImage, saveVm } from '../src/index.ts';
import { MiB, PATTERN_SIZE, guestMemory, makePattern, patternVm, tempDir } from './helpers.ts';

let dir: string;
let cleanup: () => Promise<void>;
let caps: QemuCapabilities;
const accelP = detectAccel();
const vms: VmProcess[] = [];
const pattern = makePattern();

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vmsave-ops-'));
  const q = await probeQemu();
  caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel: await accelP };
});
afterAll(async () => {
  for (const vm of vms) await vm.kill().catch(() => undefined);
  await cleanup();
});

async function runningSource(name: string, memoryMiB = 128) {
  const def = await patternVm(dir, name, memoryMiB, pattern);
  const vm = await launchVm(def, { qmpSocketPath: path.join(dir, `${name}.qmp`), accel: await accelP });
  vms.push(vm);
  const qmp = await vm.connectQmp();
  return { def, vm, qmp };
}

const modes = [
  { label: 'legacy', format: 'legacy' as const, channels: 1, directIo: false },
  { label: 'sparse, 1 channel', format: 'sparse' as const, channels: 1, directIo: false },
  { label: 'sparse, 4 channels', format: 'sparse' as const, channels: 4, directIo: false },
  { label: 'sparse + direct IO', format: 'sparse' as const, channels: 2, directIo: true },
];

describe('save and restore with real QEMU', () => {
  for (const m of modes) {
    it(`${m.label}: the restored guest memory equals the source's, and the running VM runs again`, async () => {
      const name = `src-${m.label.replace(/[^a-z0-9]/g, '')}`;
      const { def, qmp } = await runningSource(name);
      expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
      const source = await guestMemory(qmp, dir);
      expect(source.equals(pattern)).toBe(true);

      const imagePath = path.join(dir, `${name}.vmsave`);
      const stages: string[] = [];
      let progress = 0;
      const r = await saveVm({
        qmp,
        imagePath,
        format: m.format,
        channels: m.channels,
        directIo: m.directIo,
        after: 'running',
        vm: def,
        host: 'h',
        jobId: `j-${name}`,
        hostCaps: caps,
        onStage: (s) => stages.push(s),
        onProgress: () => progress++,
      });
      expect(r).toMatchObject({ wasRunning: true, vmState: 'running', format: m.format });
      expect(stages).toContain('started');
      expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
      const h: ImageHeader = await readImageHeader(imagePath);
      expect(h).toMatchObject({ complete: true, format: m.format, wasRunning: true, directIo: m.directIo });
      expect(h.streamOffset % 4096).toBe(0);
      const st = await stat(imagePath);
      if (m.format === 'sparse') {
        // Logical ≈ RAM; allocated ≈ the non-zero data (pattern + firmware), far below RAM.
        expect(st.size).toBeGreaterThan(128 * MiB);
        expect(st.blocks * 512).toBeLessThan(PATTERN_SIZE + 8 * MiB);
        expect(st.blocks * 512).toBeGreaterThanOrEqual(PATTERN_SIZE);
      }
      await qmp.close();

      const restored = await restoreImage({ imagePath, qmpSocketPath: path.join(dir, `${name}-r.qmp`), hostCaps: caps, after: 'paused', accel: await accelP });
      vms.push(restored.vm);
      expect(restored.vmState).toBe('paused');
      expect((await guestMemory(restored.qmp, dir)).equals(pattern)).toBe(true);
      await restored.qmp.close();
      await restored.vm.kill();
    });
  }
});

describe('the restore gate refuses before QEMU starts', () => {
  let sparse: string;
  let legacy: string;
  beforeAll(async () => {
    const { def, qmp } = await runningSource('gate', 64);
    sparse = path.join(dir, 'gate-sparse.vmsave');
    legacy = path.join(dir, 'gate-legacy.vmsave');
    await saveVm({ qmp, imagePath: sparse, format: 'sparse', channels: 1, directIo: false, after: 'running', vm: def, host: 'h', jobId: 'j1', hostCaps: caps });
    await saveVm({ qmp, imagePath: legacy, format: 'legacy', channels: 1, directIo: false, after: 'running', vm: def, host: 'h', jobId: 'j2', hostCaps: caps });
    await qmp.close();
  });

  const refuse = async (imagePath: string, extra: Partial<Parameters<typeof restoreImage>[0]> = {}) => {
    const sock = path.join(dir, `never-${Math.random().toString(36).slice(2)}.qmp`);
    const err = await restoreImage({ imagePath, qmpSocketPath: sock, hostCaps: caps, after: 'paused', ...extra }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpError);
    expect((err as OpError).stage).toBe('prepare');
    // QEMU never started: no socket was created.
    expect(fs.existsSync(sock)).toBe(false);
    return err as OpError;
  };

  it('a header whose format disagrees with the stream (sparse header on a legacy stream, and the reverse)', async () => {
    for (const [src, flipTo] of [
      [legacy, 1],
      [sparse, 0],
    ] as const) {
      const copy = `${src}.flipped`;
      fs.copyFileSync(src, copy);
      const fd = fs.openSync(copy, 'r+');
      fs.writeSync(fd, Buffer.from([flipTo]), 0, 1, 16);
      fs.closeSync(fd);
      const e = await refuse(copy);
      expect(e.message).toMatch(/checksum|format/);
    }
  });

  it('a partial image', async () => {
    const copy = `${sparse}.partial`;
    fs.copyFileSync(sparse, copy);
    const fd = fs.openSync(copy, 'r+');
    fs.writeSync(fd, Buffer.from('VMSVPART'), 0, 8, 0);
    fs.closeSync(fd);
    const e = await refuse(copy);
    expect(e.code).toBe('image-partial');
    expect(e.message).toMatch(/partial|not complete|being written/i);
  });

  it('a RAM-size mismatch with the definition it would start', async () => {
    const { descriptor } = await import('@vmsave/image/node').then((m) => m.readImage(sparse));
    const e = await refuse(sparse, { definition: { ...descriptor.vm, memoryMiB: 128 } });
    expect(e.code).toBe('image-ram-size');
  });

  it('a truncated image', async () => {
    const copy = `${legacy}.trunc`;
    fs.copyFileSync(legacy, copy);
    fs.truncateSync(copy, (await stat(legacy)).size - 100);
    const e = await refuse(copy);
    // The seal's state check (before the verifier's) finds it first.
    expect(e.code).toMatch(/^image-(check-|damaged$)/);
  });

  it('an image changed since it was verified gets the full gate, whatever fingerprint the caller trusts', async () => {
    const copy = `${legacy}.changed`;
    fs.copyFileSync(legacy, copy);
    const verifiedAs = await fingerprintImage(copy);
    // Damage the end of the stream (the VM description) in place: same inode and size.
    const fd = fs.openSync(copy, 'r+');
    fs.writeSync(fd, Buffer.from('!!'), 0, 2, (await stat(copy)).size - 2);
    fs.closeSync(fd);
    const e = await refuse(copy, { verifiedAs });
    expect(e.code).toMatch(/^image-(check-|damaged$)/);
  });
});

describe('the quick gate', () => {
  it('an image unchanged since it was verified is restored after reading only its header; a copy of it gets the full gate', async () => {
    const { def, qmp } = await runningSource('quick', 64);
    const imagePath = path.join(dir, 'quick.vmsave');
    await saveVm({ qmp, imagePath, format: 'legacy', channels: 1, directIo: false, after: 'running', vm: def, host: 'h', jobId: 'jq', hostCaps: caps });
    await qmp.close();
    const verifiedAs = await fingerprintImage(imagePath);
    const quick = await restoreImage({ imagePath, verifiedAs, qmpSocketPath: path.join(dir, 'quick-r1.qmp'), hostCaps: caps, after: 'paused', accel: await accelP });
    vms.push(quick.vm);
    expect(quick.gate).toBe('quick');
    expect((await guestMemory(quick.qmp, dir)).equals(pattern)).toBe(true);
    await quick.qmp.close();
    await quick.vm.kill();

    const copy = `${imagePath}.copy`;
    fs.copyFileSync(imagePath, copy);
    const full = await restoreImage({ imagePath: copy, verifiedAs, qmpSocketPath: path.join(dir, 'quick-r2.qmp'), hostCaps: caps, after: 'paused', accel: await accelP });
    vms.push(full.vm);
    expect(full.gate).toBe('full');
    await full.qmp.close();
    await full.vm.kill();
  });
});

describe('failed saves leave the VM running and no complete image', () => {
  it("a non-migratable device: QEMU's reason, VM resumed, partial image removed", async () => {
    const def = await patternVm(dir, 'blocked', 64, pattern);
    def.args.push('-object', 'memory-backend-ram,id=shm,size=1M,share=on', '-device', 'ivshmem-plain,memdev=shm');
    const vm = await launchVm(def, { qmpSocketPath: path.join(dir, 'blocked.qmp'), accel: await accelP });
    vms.push(vm);
    const qmp = await vm.connectQmp();
    const imagePath = path.join(dir, 'blocked.vmsave');
    const e = await saveVm({ qmp, imagePath, format: 'sparse', channels: 1, directIo: false, after: 'running', vm: def, host: 'h', jobId: 'jb', hostCaps: caps }).catch(
      (x: unknown) => x,
    );
    expect(e).toBeInstanceOf(OpError);
    expect(e).toMatchObject({ stage: 'migrate', retryable: false, vmResumed: true });
    expect((e as OpError).message).toMatch(/ivshmem/);
    expect(fs.existsSync(imagePath)).toBe(false);
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
    await qmp.close();
  });

  it('a target directory that is not writable: the error names it, VM resumed', async () => {
    const { def, qmp } = await runningSource('rodir', 64);
    const ro = path.join(dir, 'ro');
    await mkdir(ro);
    await chmod(ro, 0o555);
    // root ignores directory modes; a path under a file is unwritable for everyone.
    const target = process.getuid?.() === 0 ? path.join(dir, 'rodir-file', 'x.vmsave') : path.join(ro, 'x.vmsave');
    if (process.getuid?.() === 0) fs.writeFileSync(path.join(dir, 'rodir-file'), '');
    const e = await saveVm({ qmp, imagePath: target, format: 'legacy', channels: 1, directIo: false, after: 'running', vm: def, host: 'h', jobId: 'jr', hostCaps: caps }).catch(
      (x: unknown) => x,
    );
    expect(e).toMatchObject({ stage: 'image', vmResumed: true });
    expect((e as OpError).code).toMatch(/^E[A-Z]+/);
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
    await qmp.close();
  });

  it('QEMU killed during the save: SaveFailed-worthy error, no complete image', async () => {
    const { def, vm, qmp } = await runningSource('killed', 512);
    const imagePath = path.join(dir, 'killed.vmsave');
    let killed = false;
    const e = await saveVm({
      qmp,
      imagePath,
      format: 'legacy',
      channels: 1,
      directIo: false,
      after: 'running',
      vm: def,
      host: 'h',
      jobId: 'jk',
      hostCaps: caps,
      onStage: (s) => {
        if (s === 'started' && !killed) {
          killed = true;
          void vm.kill('SIGKILL');
        }
      },
    }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OpError);
    expect((e as OpError).vmResumed).toBe(false);
    expect(fs.existsSync(imagePath)).toBe(false);
    expect((await readdir(dir)).filter((f) => f.startsWith('killed') && f.endsWith('.vmsave'))).toEqual([]);
  });
});
