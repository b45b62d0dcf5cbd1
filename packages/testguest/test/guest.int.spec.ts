import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { detectAccel, type Accel, type VmProcess } from '@vmsave/qemu';
import { DATA_START, PAGE_SIZE, analyseDump, stoppedTime, tscHzBetween } from '@vmsave/testguest';
import { guestKernelMissing, launchTestGuest, sampleHeartbeat, waitForGuest } from '@vmsave/testguest/node';

const MEMORY_MIB = 64;
const MiB = 1024 * 1024;
const missing = await guestKernelMissing();
if (missing) console.warn(`skipping the test guest's integration test: ${missing}`);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.skipIf(missing !== undefined)('the test guest under QEMU', () => {
  let dir = '';
  let accel: Accel;
  let vm: VmProcess | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-testguest-'));
    const forced = process.env['VMSAVE_TEST_ACCEL'];
    accel = forced === 'tcg' || forced === 'kvm' ? forced : await detectAccel();
  });

  afterAll(async () => {
    await vm?.[Symbol.asyncDispose]();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('writes self-describing pages while it runs; a stopped dump is consistent; the heartbeat shows the stop', async () => {
    ({ vm } = await launchTestGuest({ memoryMiB: MEMORY_MIB, rate: 2000, share: 25, seed: 42, qmpSocketPath: path.join(dir, 'guest.qmp'), accel, killWithParent: true }));
    const qmp = await vm.connectQmp();
    try {
      await waitForGuest(qmp, dir);
      const a = await sampleHeartbeat(qmp, dir);
      await sleep(1000);
      const b = await sampleHeartbeat(qmp, dir);
      if (!a || !b) throw new Error('heartbeat vanished');
      expect(b.heartbeat.counter).toBeGreaterThan(a.heartbeat.counter);
      expect(b.heartbeat.tsc).toBeGreaterThan(a.heartbeat.tsc);
      expect(b.heartbeat.cursor).toBeGreaterThan(a.heartbeat.cursor);
      const tscHz = tscHzBetween(a, b);
      // The guest keeps the asked rate, never faster, under TCG and KVM alike (it writes from ring 3,
      // which a KVM that emulates a non-PVM guest's ring 0, such as kvm-pvm, runs natively).
      const rate = ((b.heartbeat.cursor - a.heartbeat.cursor) * 1000) / (b.wallMs - a.wallMs);
      expect(rate).toBeLessThan(2000 * 1.25);
      expect(rate).toBeGreaterThan(2000 * 0.5);
      expect(b.heartbeat.version).toBe(2);

      await qmp.execute('stop');
      const stopped = await sampleHeartbeat(qmp, dir);
      const file = path.join(dir, 'ram.bin');
      await qmp.execute('pmemsave', { val: 0, size: MEMORY_MIB * 1024 * 1024, filename: file });
      const analysis = analyseDump(await readFile(file));
      expect(analysis.reason).toBeUndefined();
      expect(analysis.issues).toEqual([]);
      expect(analysis.consistent).toBe(true);
      expect(analysis.written).toBeGreaterThan(0);
      const ramTop = analysis.heartbeat?.ramTop ?? 0;
      expect(ramTop).toBeGreaterThan((MEMORY_MIB - 2) * MiB);
      expect(ramTop).toBeLessThanOrEqual(MEMORY_MIB * MiB);
      expect(analysis.pages).toBe(Math.floor(((ramTop - DATA_START) / PAGE_SIZE) * 0.25));
      expect(analysis.heartbeat?.cursor).toBe(stopped?.heartbeat.cursor);
      await sleep(500);
      const still = await sampleHeartbeat(qmp, dir);
      expect(still?.heartbeat.counter).toBe(stopped?.heartbeat.counter);

      await qmp.execute('cont');
      await sleep(500);
      const c = await sampleHeartbeat(qmp, dir);
      if (!stopped || !c) throw new Error('heartbeat vanished');
      expect(c.heartbeat.cursor).toBeGreaterThan(stopped.heartbeat.cursor);
      expect(c.heartbeat.counter).toBeGreaterThan(stopped.heartbeat.counter);
      // Stopped for at least the 500 ms between the stopped samples, and never longer than the
      // wall time between the samples.
      const t = stoppedTime(b, c, { tscHz });
      console.info(
        `test guest (${accel}): ${JSON.stringify(t)}, tscHz ${Math.round(tscHz)}, ${analysis.written} pages written, generations ${JSON.stringify(analysis.generations)}`,
      );
      expect(t.stoppedMs).toBeGreaterThan(450);
      // A stall is counted when the guest runs again, whole: one may have begun before sample b.
      expect(t.stoppedMs).toBeLessThanOrEqual(c.wallMs - b.wallMs + (Number(c.heartbeat.maxGapTsc) * 1000) / tscHz + 1);
      // Under KVM (TSC running while stopped) the stop is one stall, the longest of the interval;
      // under TCG the TSC was held and the stop is hidden time instead.
      expect(t.longestStallMs).toBeDefined();
      if (accel === 'kvm') expect(t.longestStallMs).toBeGreaterThan(450);
      if (accel === 'tcg') expect(t.hiddenMs).toBeGreaterThan(450);
    } finally {
      await qmp.close();
    }
  });

  it('a guest writing as fast as it can (TCG) over 1 % of RAM wraps into later passes, and a stopped dump is still consistent', async () => {
    const fast = await launchTestGuest({
      name: 'fast',
      memoryMiB: MEMORY_MIB,
      rate: 0,
      share: 1,
      seed: 9,
      qmpSocketPath: path.join(dir, 'fast.qmp'),
      accel: 'tcg',
      killWithParent: true,
    });
    const qmp = await fast.vm.connectQmp();
    try {
      await waitForGuest(qmp, dir);
      await sleep(500);
      await qmp.execute('stop');
      const file = path.join(dir, 'fast.bin');
      await qmp.execute('pmemsave', { val: 0, size: MEMORY_MIB * MiB, filename: file });
      const analysis = analyseDump(await readFile(file));
      const g = analysis.heartbeat?.generation ?? 0;
      expect(analysis.issues).toEqual([]);
      expect(analysis.consistent).toBe(true);
      expect(g).toBeGreaterThan(2);
      expect(analysis.written).toBe(analysis.pages - (analysis.inFlight === 'torn' ? 1 : 0));
      for (const k of Object.keys(analysis.generations)) expect([g - 1, g]).toContain(Number(k));
      console.info(`fast test guest: generation ${g}, boundary ${analysis.boundary}, in flight ${analysis.inFlight}, ${JSON.stringify(analysis.generations)}`);
    } finally {
      await qmp.close();
      await fast.vm[Symbol.asyncDispose]();
    }
  });
});
