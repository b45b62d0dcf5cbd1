import { createHash } from 'node:crypto';
import { constants, closeSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  MigrationAbortedError,
  MigrationFailedError,
  MigrationStalledError,
  QemuError,
  QemuExitedError,
  QemuInvalidArgumentError,
  buildVmArgs,
  launchVm,
  prepareIncoming,
  restoreFromFds,
  saveToFds,
  spawnQemu,
  type Accel,
  type MigrationProgress,
  type SaveFormat,
  type VmProcess,
} from '@vmsave/qemu';
import type { QmpClient } from '@vmsave/qmp';
import { Scratch, testAccel, testVm, tryOpenDirect } from './helpers.ts';

const MiB = 1024 * 1024;
const RAM_MIB = 128;
const PATTERN_ADDR = 16 * MiB;
const PATTERN_SIZE = 16 * MiB;
/** vmsave's header would live before this; 4 KiB aligned as DESIGN §3 requires. */
const STREAM_OFFSET = 0x1000;

/** Deterministic, incompressible, with no zero page: each 32-byte block is a hash of its index. */
function makePattern(size: number): Buffer {
  const out = Buffer.allocUnsafe(size);
  for (let i = 0; i < size / 32; i++) {
    createHash('sha256')
      .update(`vmsave-${i}`)
      .digest()
      .copy(out, i * 32);
  }
  return out;
}

function header(): Buffer {
  return Buffer.alloc(STREAM_OFFSET, 'VMSAVE-TEST-HEADER|');
}

const scratch = new Scratch();
const perTest = new Scratch();
let accel: Accel;
let pattern: Buffer;
let source: VmProcess;
let sourceQmp: QmpClient;
let sourceMemory: Buffer;
const timings: Array<{ mode: string; saveMs: number; restoreMs: number; imageBytes: number; allocatedBytes: number }> = [];

async function pmem(qmp: QmpClient, name: string): Promise<Buffer> {
  const file = perTest.path(name);
  await qmp.execute('pmemsave', { val: PATTERN_ADDR, size: PATTERN_SIZE, filename: file });
  return readFileSync(file);
}

beforeAll(async () => {
  await scratch.init('vmsave-qemu-mig-');
  await perTest.init('vmsave-qemu-case-');
  accel = await testAccel();
  pattern = makePattern(PATTERN_SIZE);
  writeFileSync(scratch.path('pattern.bin'), pattern);
  // The loader copies the pattern into guest RAM at reset, before any vCPU runs:
  // known non-zero memory without a guest OS. Restore targets never get it.
  const def = testVm('pattern-source', RAM_MIB, ['-device', `loader,file=${scratch.path('pattern.bin')},addr=${PATTERN_ADDR},force-raw=on`]);
  source = scratch.vm(await launchVm(def, { qmpSocketPath: scratch.path('source.qmp'), startPaused: true, accel, killWithParent: true }));
  sourceQmp = scratch.qmp(await source.connectQmp());
  sourceMemory = await pmem(sourceQmp, 'source-memory.bin');
});

afterEach(async () => {
  await perTest.release();
});

afterAll(async () => {
  await perTest.dispose();
  await scratch.dispose();
  if (timings.length > 0) {
    console.log(`save/restore of a ${RAM_MIB} MiB VM (${PATTERN_SIZE / MiB} MiB non-zero), accel=${accel}:`);
    console.table(timings);
  }
});

interface Mode {
  label: string;
  format: SaveFormat;
  channels?: number;
  directIo?: boolean;
}

const MODES: Mode[] = [
  { label: 'legacy', format: 'legacy' },
  { label: 'sparse, 1 channel', format: 'sparse', channels: 1 },
  { label: 'sparse, 4 channels', format: 'sparse', channels: 4 },
  { label: 'sparse + direct IO, 2 channels', format: 'sparse', channels: 2, directIo: true },
];

describe('saveToFds / restoreFromFds on real QEMU', () => {
  it('the source RAM holds the pattern before any save', () => {
    expect(sourceMemory.equals(pattern)).toBe(true);
  });

  // The source is saved once per mode: from the second save on it starts in
  // postmigrate, which saveToFds must handle (cont + stop).
  it.for(MODES)('$label: restored memory is byte-identical to the source', async (mode, ctx) => {
    const image = perTest.path(`image-${mode.label.replace(/\W+/g, '-')}.img`);
    writeFileSync(image, header());
    const buffered = perTest.open(image, constants.O_WRONLY);
    const direct = mode.directIo ? tryOpenDirect(perTest, image, constants.O_WRONLY) : undefined;
    if (mode.directIo && direct === undefined) ctx.skip();

    const samples: MigrationProgress[] = [];
    const saved = await saveToFds(sourceQmp, {
      fds: { buffered, direct },
      offset: STREAM_OFFSET,
      format: mode.format,
      channels: mode.channels,
      directIo: mode.directIo,
      onProgress: (s) => samples.push(s),
      process: source,
    });
    closeSync(buffered);
    if (direct !== undefined) closeSync(direct);

    expect(saved).toMatchObject({ direction: 'save', format: mode.format, directIo: mode.directIo === true, offset: STREAM_OFFSET });
    expect(saved.capabilities).toMatchObject({ events: true, 'mapped-ram': mode.format === 'sparse', multifd: mode.format === 'sparse' });
    expect(saved.ram?.normal).toBeGreaterThanOrEqual(PATTERN_SIZE / 4096);
    expect(samples.at(-1)?.status).toBe('completed');
    expect(await sourceQmp.execute('query-status')).toMatchObject({ status: 'postmigrate' });
    expect(await sourceQmp.execute('query-fdsets')).toEqual([]);
    const params = await sourceQmp.execute<Record<string, unknown>>('query-migrate-parameters');
    expect(params['max-bandwidth']).toBe(128 * MiB);

    const bytes = readFileSync(image);
    expect(bytes.subarray(0, STREAM_OFFSET).equals(header())).toBe(true);
    expect(bytes.readUInt32BE(STREAM_OFFSET)).toBe(0x5145564d); // "QEVM"
    const stat = statSync(image);
    const allocated = stat.blocks * 512;
    if (mode.format === 'sparse') {
      // Logical size ≈ RAM (plus small RAM blocks, each aligned to 1 MiB); only written pages allocated.
      expect(stat.size).toBeGreaterThan(RAM_MIB * MiB);
      expect(stat.size).toBeLessThan((RAM_MIB + 16) * MiB);
      expect(allocated).toBeGreaterThanOrEqual(PATTERN_SIZE);
      expect(allocated).toBeLessThan(PATTERN_SIZE + 4 * MiB);
    } else {
      // Zero pages are small markers: the stream is about the non-zero data.
      expect(stat.size).toBeGreaterThan(PATTERN_SIZE);
      expect(stat.size).toBeLessThan(PATTERN_SIZE + 4 * MiB);
    }

    const target = perTest.vm(
      await launchVm(testVm('pattern-target', RAM_MIB), {
        qmpSocketPath: perTest.path('target.qmp'),
        incoming: 'defer',
        startPaused: true,
        accel,
        killWithParent: true,
      }),
    );
    const targetQmp = perTest.qmp(await target.connectQmp());
    const readBuffered = perTest.open(image, constants.O_RDONLY);
    const readDirect = mode.directIo ? tryOpenDirect(perTest, image, constants.O_RDONLY) : undefined;
    const restoreSamples: MigrationProgress[] = [];
    const restored = await restoreFromFds(targetQmp, {
      fds: { buffered: readBuffered, direct: readDirect },
      offset: STREAM_OFFSET,
      format: mode.format,
      channels: mode.channels,
      directIo: mode.directIo,
      onProgress: (s) => restoreSamples.push(s),
      process: target,
    });
    expect(restored.direction).toBe('restore');
    expect(restoreSamples.at(-1)?.status).toBe('completed');
    expect(await targetQmp.execute('query-fdsets')).toEqual([]);
    const status = await targetQmp.execute<{ status: string }>('query-status');
    expect(['paused', 'prelaunch']).toContain(status.status);

    const targetMemory = await pmem(targetQmp, 'target-memory.bin');
    expect(targetMemory.equals(sourceMemory)).toBe(true);

    timings.push({
      mode: mode.label,
      saveMs: Math.round(saved.wallTimeMs),
      restoreMs: Math.round(restored.wallTimeMs),
      imageBytes: stat.size,
      allocatedBytes: allocated,
    });
  });

  it('a restore prepared ahead (prepareIncoming, before QEMU has any fd) loads byte-identically; a prepared plan that differs is set again', async () => {
    const image = perTest.path('prepared.img');
    writeFileSync(image, header());
    await saveToFds(sourceQmp, { fds: { buffered: perTest.open(image, constants.O_WRONLY) }, offset: STREAM_OFFSET, format: 'sparse', channels: 2, process: source });
    for (const preparedFor of ['sparse', 'legacy'] as const) {
      const target = perTest.vm(
        await launchVm(testVm(`prepared-${preparedFor}`, RAM_MIB), {
          qmpSocketPath: perTest.path(`prepared-${preparedFor}.qmp`),
          incoming: 'defer',
          startPaused: true,
          accel,
          killWithParent: true,
        }),
      );
      const qmp = perTest.qmp(await target.connectQmp());
      const prepared = await prepareIncoming(qmp, { format: preparedFor, channels: preparedFor === 'sparse' ? 2 : undefined, offset: STREAM_OFFSET, process: target });
      // Set on QEMU before it has the image: the plan's capabilities and parameters, no fdset.
      const caps = new Map((await qmp.execute<Array<{ capability: string; state: boolean }>>('query-migrate-capabilities')).map((c) => [c.capability, c.state]));
      expect(caps.get('mapped-ram')).toBe(preparedFor === 'sparse');
      if (preparedFor === 'sparse') expect((await qmp.execute<Record<string, unknown>>('query-migrate-parameters'))['multifd-channels']).toBe(2);
      expect(await qmp.execute('query-fdsets')).toEqual([]);
      expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('inmigrate');
      const restored = await restoreFromFds(qmp, {
        prepared,
        fds: { buffered: perTest.open(image, constants.O_RDONLY) },
        offset: STREAM_OFFSET,
        format: 'sparse',
        channels: 2,
        process: target,
      });
      expect(restored.capabilities['mapped-ram']).toBe(true);
      expect(await qmp.execute('query-fdsets')).toEqual([]);
      expect((await pmem(qmp, `prepared-${preparedFor}.bin`)).equals(sourceMemory)).toBe(true);
    }
  });

  it("refuses to restore an image in the other format, with QEMU's reason, and leaves no fdset", async () => {
    const image = perTest.path('legacy.img');
    writeFileSync(image, header());
    const fd = perTest.open(image, constants.O_WRONLY);
    await saveToFds(sourceQmp, { fds: { buffered: fd }, offset: STREAM_OFFSET, format: 'legacy' });

    const target = perTest.vm(
      await launchVm(testVm('mismatch', RAM_MIB), { qmpSocketPath: perTest.path('t.qmp'), incoming: 'defer', startPaused: true, accel, killWithParent: true }),
    );
    const qmp = perTest.qmp(await target.connectQmp());
    const readFd = perTest.open(image, constants.O_RDONLY);
    const error = await restoreFromFds(qmp, { fds: { buffered: readFd }, offset: STREAM_OFFSET, format: 'sparse', process: target }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MigrationFailedError);
    expect(error).toMatchObject({ code: 'MIGRATION_FAILED', direction: 'restore', stage: 'transfer', retryable: false });
    expect((error as MigrationFailedError).qemuReason).toMatch(/mapped-ram/);
    expect(await qmp.execute('query-fdsets')).toEqual([]);

    // A QEMU whose incoming migration failed cannot take another one.
    const again = await restoreFromFds(qmp, { fds: { buffered: readFd }, offset: STREAM_OFFSET, format: 'legacy', process: target }).catch((e: unknown) => e);
    expect(again).toBeInstanceOf(QemuError);
    expect(await qmp.execute('query-fdsets')).toEqual([]);
  });

  it('with exitOnError, a failed restore still reports the reason QEMU printed before exiting', async () => {
    const image = perTest.path('legacy2.img');
    writeFileSync(image, header());
    const fd = perTest.open(image, constants.O_WRONLY);
    await saveToFds(sourceQmp, { fds: { buffered: fd }, offset: STREAM_OFFSET, format: 'legacy' });
    const target = perTest.vm(
      await launchVm(testVm('exit-on-error', RAM_MIB), { qmpSocketPath: perTest.path('t.qmp'), incoming: 'defer', startPaused: true, accel, killWithParent: true }),
    );
    const qmp = perTest.qmp(await target.connectQmp());
    const error = await restoreFromFds(qmp, {
      fds: { buffered: perTest.open(image, constants.O_RDONLY) },
      offset: STREAM_OFFSET,
      format: 'sparse',
      exitOnError: true,
      process: target,
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MigrationFailedError);
    expect((error as MigrationFailedError).qemuReason).toMatch(/mapped-ram/);
    expect((error as MigrationFailedError).stderr).toMatch(/load of migration failed/);
    expect((await target.exited).code).not.toBe(0);
  });
});

describe('failed saves', () => {
  it("a migration blocker fails the save with QEMU's reason, touching nothing", async () => {
    const vm = perTest.vm(
      await launchVm(testVm('blocked', 64, ['-object', 'memory-backend-ram,id=shm,size=1M,share=on', '-device', 'ivshmem-plain,memdev=shm']), {
        qmpSocketPath: perTest.path('blocked.qmp'),
        startPaused: true,
        accel,
        killWithParent: true,
      }),
    );
    const qmp = perTest.qmp(await vm.connectQmp());
    const fd = perTest.open(perTest.path('blocked.img'), constants.O_WRONLY | constants.O_CREAT);
    const error = await saveToFds(qmp, { fds: { buffered: fd }, offset: STREAM_OFFSET, format: 'sparse' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MigrationFailedError);
    expect(error).toMatchObject({ direction: 'save', retryable: false });
    expect((error as MigrationFailedError).qemuReason).toMatch(/ivshmem/);
    expect(await qmp.execute('query-fdsets')).toEqual([]);
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' });
  });

  it("an fd QEMU cannot use fails the save with QEMU's reason and removes the fdset", async () => {
    const vm = perTest.vm(await launchVm(testVm('devfull', 64), { qmpSocketPath: perTest.path('full.qmp'), startPaused: true, accel, killWithParent: true }));
    const qmp = perTest.qmp(await vm.connectQmp());
    // /dev/full is write-only-openable but cannot be truncated to the stream offset.
    const fd = perTest.open('/dev/full', constants.O_WRONLY);
    for (const format of ['legacy', 'sparse'] as const) {
      const error = await saveToFds(qmp, { fds: { buffered: fd }, offset: STREAM_OFFSET, format }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(MigrationFailedError);
      expect(error).toMatchObject({ stage: 'migrate' });
      expect((error as MigrationFailedError).qemuReason).toMatch(/truncate/);
      expect(await qmp.execute('query-fdsets')).toEqual([]);
      const params = await qmp.execute<Record<string, unknown>>('query-migrate-parameters');
      expect(params['max-bandwidth']).toBe(128 * MiB);
    }
  });

  it('refuses fds opened with the wrong access mode before QEMU sees them', async () => {
    const image = perTest.path('rdwr.img');
    writeFileSync(image, '');
    const rdwr = perTest.open(image, constants.O_RDWR);
    const error = await saveToFds(sourceQmp, { fds: { buffered: rdwr }, offset: 0, format: 'legacy' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QemuInvalidArgumentError);
    expect(await sourceQmp.execute('query-fdsets')).toEqual([]);
    const noDirect = await saveToFds(sourceQmp, {
      fds: { buffered: perTest.open(image, constants.O_WRONLY) },
      offset: 0,
      format: 'sparse',
      directIo: true,
    }).catch((e: unknown) => e);
    expect(noDirect).toBeInstanceOf(QemuInvalidArgumentError);
  });

  it("a write error mid-transfer fails the save with QEMU's reason and removes the fdset", async () => {
    // RLIMIT_FSIZE: writes past 1 MiB fail with EFBIG (QEMU ignores SIGXFSZ).
    const def = testVm('efbig', 64, ['-device', `loader,file=${scratch.path('pattern.bin')},addr=${PATTERN_ADDR},force-raw=on`]);
    const vm = perTest.vm(
      await spawnQemu(['--fsize=1048576', 'qemu-system-x86_64', ...buildVmArgs(def, { accel, startPaused: true })], {
        binary: 'prlimit',
        qmpSocketPath: perTest.path('efbig.qmp'),
        killWithParent: true,
      }),
    );
    const qmp = perTest.qmp(await vm.connectQmp());
    for (const format of ['legacy', 'sparse'] as const) {
      const image = perTest.path(`efbig-${format}.img`);
      writeFileSync(image, header());
      const error = await saveToFds(qmp, {
        fds: { buffered: perTest.open(image, constants.O_WRONLY) },
        offset: STREAM_OFFSET,
        format,
        process: vm,
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(MigrationFailedError);
      expect(error).toMatchObject({ stage: 'transfer', direction: 'save' });
      // legacy fails writing pages; sparse already while laying out the RAM blocks past 1 MiB
      expect((error as MigrationFailedError).qemuReason).toMatch(format === 'legacy' ? /File too large/ : /ram_save_setup failed/);
      expect(await qmp.execute('query-fdsets')).toEqual([]);
      const params = await qmp.execute<Record<string, unknown>>('query-migrate-parameters');
      expect(params['max-bandwidth']).toBe(128 * MiB);
      expect(await qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' });
    }
  });

  it('QEMU dying mid-save is a typed error naming how it died', async () => {
    // Killed from the first progress sample; a save can (rarely) complete before
    // the first sample, so allow a few fresh attempts.
    let error: unknown;
    for (let attempt = 0; attempt < 3 && !(error instanceof QemuExitedError); attempt++) {
      const def = testVm('dies', 64, ['-device', `loader,file=${scratch.path('pattern.bin')},addr=${PATTERN_ADDR},force-raw=on`]);
      const vm = perTest.vm(await launchVm(def, { qmpSocketPath: perTest.path(`dies-${attempt}.qmp`), startPaused: true, accel, killWithParent: true }));
      const qmp = perTest.qmp(await vm.connectQmp());
      const image = perTest.path(`dies-${attempt}.img`);
      writeFileSync(image, header());
      error = await saveToFds(qmp, {
        fds: { buffered: perTest.open(image, constants.O_WRONLY) },
        offset: STREAM_OFFSET,
        format: 'legacy',
        process: vm,
        onProgress: (s) => {
          if (s.status !== 'completed') process.kill(vm.pid, 'SIGKILL');
        },
      }).catch((e: unknown) => e);
    }
    expect(error).toBeInstanceOf(QemuExitedError);
    expect(error).toMatchObject({ code: 'QEMU_EXITED', direction: 'save', stage: 'transfer', retryable: true });
    expect((error as QemuExitedError).qemuReason).toMatch(/SIGKILL/);
  });

  it('a QEMU that stops answering fails with a deadline', async () => {
    const vm = perTest.vm(await launchVm(testVm('frozen', 64), { qmpSocketPath: perTest.path('frozen.qmp'), startPaused: true, accel, killWithParent: true }));
    const qmp = perTest.qmp(await vm.connectQmp());
    process.kill(vm.pid, 'SIGSTOP');
    try {
      const error = await saveToFds(qmp, {
        fds: { buffered: perTest.open(perTest.path('frozen.img'), constants.O_WRONLY | constants.O_CREAT) },
        offset: 0,
        format: 'legacy',
        commandTimeoutMs: 300,
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(MigrationStalledError);
      expect(error).toMatchObject({ code: 'MIGRATION_STALLED', retryable: true, stage: 'prepare' });
    } finally {
      process.kill(vm.pid, 'SIGCONT');
    }
  });

  it('an aborted signal stops the save before anything is changed', async () => {
    const controller = new AbortController();
    controller.abort(new Error('operator cancelled'));
    const fd = perTest.open(perTest.path('aborted.img'), constants.O_WRONLY | constants.O_CREAT);
    const error = await saveToFds(sourceQmp, { fds: { buffered: fd }, offset: 0, format: 'legacy', signal: controller.signal }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MigrationAbortedError);
    expect((error as Error).cause).toEqual(new Error('operator cancelled'));
    expect(await sourceQmp.execute('query-fdsets')).toEqual([]);
  });
});
