/**
 * Saves of a running guest that writes memory (the test guest), in
 * every mode: paused copies and live checkpoints, legacy and sparse. Each image is restored paused
 * and its guest RAM dumped with `pmemsave`: the test guest's checker must find a consistent state
 * (no torn or stale page mixes), and a live save must have stopped the guest only briefly.
 */
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { detectAccel, probeQemu, type Accel, type VmProcess } from '@vmsave/qemu';
import type { QemuCapabilities } from '@vmsave/contracts';
import { analyseDump } from '@vmsave/testguest';
import { guestKernelMissing, launchTestGuest, sampleHeartbeat, waitForGuest } from '@vmsave/testguest/node';
import { restoreImage, saveVm } from '../src/index.ts';
import { MiB, tempDir } from './helpers.ts';

const MEMORY_MIB = 128;
const forced = process.env['VMSAVE_TEST_ACCEL'];
/** Live checkpoints run under the host's accelerator (KVM when usable), and once more under TCG. */
const HOST_ACCEL: Accel = forced === 'tcg' || forced === 'kvm' ? forced : await detectAccel();
const missing = await guestKernelMissing();
if (missing) console.warn(`skipping the live save tests: ${missing}`);

let dir = '';
let cleanup: () => Promise<void> = async () => undefined;
let caps: QemuCapabilities;
const vms: VmProcess[] = [];

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vmsave-live-'));
  const q = await probeQemu();
  caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel: HOST_ACCEL };
});
afterAll(async () => {
  for (const vm of vms) await vm.kill().catch(() => undefined);
  await cleanup();
});

// Paused copies under TCG, where the guest keeps its write rate (~40 MiB/s); live checkpoints
// under the host's accelerator, and a live checkpoint under TCG too (declined until the restore
// started its QEMU with -S: the restored guest had run on, which the checker saw as stale pages).
const modes = [
  { label: 'legacy, paused copy (TCG)', format: 'legacy' as const, channels: 1, live: false, accel: 'tcg' as Accel, expectLive: false },
  { label: 'sparse, paused copy (TCG)', format: 'sparse' as const, channels: 2, live: false, accel: 'tcg' as Accel, expectLive: false },
  { label: `sparse, live checkpoint (${HOST_ACCEL})`, format: 'sparse' as const, channels: 2, live: true, accel: HOST_ACCEL, expectLive: true },
  { label: `legacy, live checkpoint (${HOST_ACCEL})`, format: 'legacy' as const, channels: 1, live: true, accel: HOST_ACCEL, expectLive: true },
  { label: 'sparse, live checkpoint (TCG)', format: 'sparse' as const, channels: 2, live: true, accel: 'tcg' as Accel, expectLive: true },
];

describe.skipIf(missing !== undefined)('a save of a running guest that writes memory', () => {
  for (const m of modes) {
    it(`${m.label}: the restored guest memory is a consistent state, and the guest runs on`, async () => {
      const name = `live-${m.format}-${m.live ? 'l' : 'p'}-${m.accel}`;
      // ~40 MiB/s over half of the RAM: every pass finds pages dirtied again.
      const { vm, definition } = await launchTestGuest({
        name,
        memoryMiB: MEMORY_MIB,
        rate: 10_000,
        share: 50,
        seed: 3,
        qmpSocketPath: path.join(dir, `${name}.qmp`),
        accel: m.accel,
        killWithParent: true,
      });
      vms.push(vm);
      const qmp = await vm.connectQmp();
      await waitForGuest(qmp, dir);
      const before = await sampleHeartbeat(qmp, dir);

      const imagePath = path.join(dir, `${name}.vmsave`);
      const r = await saveVm({
        qmp,
        imagePath,
        format: m.format,
        channels: m.channels,
        directIo: false,
        after: 'running',
        vm: definition,
        host: 'h',
        jobId: `j-${name}`,
        hostCaps: caps,
        live: m.live,
      });
      expect(r).toMatchObject({ wasRunning: true, vmState: 'running' });
      const after = await sampleHeartbeat(qmp, dir);
      await new Promise((res) => setTimeout(res, 300));
      const later = await sampleHeartbeat(qmp, dir);
      // The source guest writes on after the save.
      expect(later!.heartbeat.cursor).toBeGreaterThan(after!.heartbeat.cursor);
      if (m.expectLive) {
        expect(r.live).toBeDefined();
        expect(r.live!.passes.length).toBeGreaterThanOrEqual(1);
        expect(r.live!.passes[0]!.bytes).toBeGreaterThan(0);
        expect(r.live!.downtimeMs).toBeGreaterThanOrEqual(0);
        expect(['converged', 'passes', 'time']).toContain(r.live!.switchover);
        console.info(`${m.label}: ${JSON.stringify(r.live)}, save ${Math.round(r.durationMs)} ms, ${r.blocks * 512} bytes allocated`);
      } else {
        expect(r.live).toBeUndefined();
      }
      await qmp.close();

      const restored = await restoreImage({ imagePath, qmpSocketPath: path.join(dir, `${name}-r.qmp`), hostCaps: caps, after: 'paused', accel: m.accel });
      vms.push(restored.vm);
      const file = path.join(dir, `${name}.ram`);
      await restored.qmp.execute('pmemsave', { val: 0, size: MEMORY_MIB * MiB, filename: file });
      const a = analyseDump(await readFile(file));
      if (!a.consistent)
        console.info(`${m.label}: ${JSON.stringify({ ...a, issues: a.issues.slice(0, 3), heartbeat: { cursor: a.heartbeat?.cursor, npages: a.heartbeat?.npages } })}`);
      expect(a.reason).toBeUndefined();
      expect(a.issues).toEqual([]);
      expect(a.consistent).toBe(true);
      // The state of the moment of the stop: after the save began (live: the guest wrote on while
      // QEMU copied), never after the guest was running again.
      expect(a.heartbeat!.cursor).toBeGreaterThanOrEqual(before!.heartbeat.cursor);
      expect(a.heartbeat!.cursor).toBeLessThanOrEqual(after!.heartbeat.cursor);
      if (m.expectLive) expect(a.heartbeat!.cursor).toBeGreaterThanOrEqual(before!.heartbeat.cursor);
      await restored.qmp.close();
      await restored.vm.kill();
      await vm.kill();
    });
  }
});
