/**
 * The executor's warm restore pool against real QEMU: a warm and a cold restore of the same image
 * give the same guest memory (the test guest, saved while it wrote memory); a pool QEMU that was
 * killed or stopped answering is never handed out; the pool's RSS stays within its bound, and a
 * waiting QEMU holds none of its guest RAM; stop kills every waiting QEMU.
 */
import { copyFile, open, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '@vmsave/bus';
import type { QemuCapabilities, VmDefinition } from '@vmsave/contracts';
import { readImage } from '@vmsave/image/node';
import { discardRestoreHead, restoreImage, saveVm, startRestoreHead, VmRegistry } from '@vmsave/ops';
import { detectAccel, probeQemu, type Accel, type VmProcess } from '@vmsave/qemu';
import { analyseDump } from '@vmsave/testguest';
import { guestKernelMissing, launchTestGuest, waitForGuest } from '@vmsave/testguest/node';
import { WarmPool, rssOf } from '../src/warm-pool.ts';

const MiB = 1024 * 1024;
const MEMORY_MIB = 128;
const missing = await guestKernelMissing();
if (missing) console.warn(`skipping the warm pool tests: ${missing}`);

let dir = '';
let accel: Accel;
let caps: QemuCapabilities;
let definition: VmDefinition;
let imagePath = '';
const log = createLogger('warm-pool-test', { level: 'warn' });
const pools: WarmPool[] = [];
const vms: VmProcess[] = [];

const pool = (o: Partial<ConstructorParameters<typeof WarmPool>[0]> = {}) => {
  const p = new WarmPool({ size: 1, maxRssBytes: 512 * MiB, dir: path.join(dir, 'warm'), accel, log, ...o });
  pools.push(p);
  return p;
};

async function filled(p: WarmPool, def: VmDefinition, want: number): Promise<void> {
  p.note(def);
  const deadline = Date.now() + 60_000;
  while (p.stats().waiting < want) {
    if (Date.now() > deadline) throw new Error(`the pool did not fill to ${want} (${JSON.stringify(p.stats())})`);
    await p.settled();
    if (p.stats().waiting < want) await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  if (missing) return;
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-warm-'));
  accel = await detectAccel();
  const q = await probeQemu();
  caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel };
  // The image: the test guest, writing memory, saved as a paused copy.
  const guest = await launchTestGuest({
    name: 'warm-src',
    memoryMiB: MEMORY_MIB,
    rate: 2000,
    share: 25,
    seed: 5,
    qmpSocketPath: path.join(dir, 'src.qmp'),
    accel,
    killWithParent: true,
  });
  vms.push(guest.vm);
  definition = guest.definition;
  const qmp = await guest.vm.connectQmp();
  await waitForGuest(qmp, dir);
  imagePath = path.join(dir, 'warm.vmsave');
  await saveVm({ qmp, imagePath, format: 'sparse', channels: 2, directIo: false, after: 'quit', vm: definition, host: 'h', jobId: 'j-warm', hostCaps: caps });
  await qmp.close();
});

afterAll(async () => {
  for (const p of pools) await p.stop();
  for (const vm of vms) await vm.kill().catch(() => undefined);
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function restoredMemory(name: string, warm?: WarmPool, stagingDir?: string): Promise<{ ram: Buffer; start: string; pid: number }> {
  const r = await restoreImage({
    imagePath,
    qmpSocketPath: path.join(dir, `${name}.qmp`),
    hostCaps: caps,
    after: 'paused',
    accel,
    warm: warm && ((d) => warm.take(d)),
    stagingDir,
  });
  expect(r.vm.qmpSocketPath).toBe(path.join(dir, `${name}.qmp`));
  vms.push(r.vm);
  const file = path.join(dir, `${name}.ram`);
  await r.qmp.execute('pmemsave', { val: 0, size: MEMORY_MIB * MiB, filename: file });
  const ram = await readFile(file);
  await r.qmp.close();
  await r.vm.kill();
  return { ram, start: r.start, pid: r.vm.pid };
}

describe.skipIf(missing !== undefined)('the warm restore pool', () => {
  it('a warm and a cold restore give the same guest memory, a consistent state of the test guest', async () => {
    const p = pool();
    await filled(p, definition, 1);
    const waitingPid = p.stats().pids[0];
    const cold = await restoredMemory('cold');
    // A cold QEMU started beside the gate (stagingDir), its socket moved to the VM's path after it.
    const staging = path.join(dir, 'staging');
    const early = await restoredMemory('early', undefined, staging);
    const warm = await restoredMemory('warm', p);
    expect(cold.start).toBe('cold');
    expect(early.start).toBe('cold');
    expect(warm.start).toBe('warm');
    expect(warm.pid).toBe(waitingPid);
    expect(warm.ram.equals(cold.ram)).toBe(true);
    expect(early.ram.equals(cold.ram)).toBe(true);
    expect(await readdir(staging)).toEqual([]);
    const a = analyseDump(warm.ram);
    expect(a.issues).toEqual([]);
    expect(a.consistent).toBe(true);
    expect(a.written).toBeGreaterThan(0);
    // Refilled in the background after the hand-out.
    await filled(p, definition, 1);
    expect(p.stats().pids[0]).not.toBe(waitingPid);
  });

  it('a head read at work receipt (startRestoreHead) gives the restore its QEMU, set up; one no restore took is killed', async () => {
    const staging = path.join(dir, 'staging-head');
    const cold = await restoredMemory('head-ref');
    const head = startRestoreHead({ imagePath, hostCaps: caps, accel, stagingDir: staging, content: 'state' });
    const got = await head;
    expect(got?.definition.name).toBe(definition.name);
    const early = await got!.early;
    expect(early?.start).toBe('cold');
    // The restore's QMP set-up was made on it before it had the image: mapped-ram on, no fdset.
    expect(await early!.prepared).toBeDefined();
    expect(await early!.qmp.execute('query-fdsets')).toEqual([]);
    const r = await restoreImage({ imagePath, head, qmpSocketPath: path.join(dir, 'head.qmp'), hostCaps: caps, after: 'paused', accel, stagingDir: staging, content: 'state' });
    vms.push(r.vm);
    expect(r.vm.pid).toBe(early!.vm.pid);
    expect(r.timings.headLeadMs).toBeGreaterThan(0);
    expect(r.stats.capabilities['mapped-ram']).toBe(true);
    const file = path.join(dir, 'head.ram');
    await r.qmp.execute('pmemsave', { val: 0, size: MEMORY_MIB * MiB, filename: file });
    expect((await readFile(file)).equals(cold.ram)).toBe(true);
    await r.qmp.close();
    await r.vm.kill();
    // Claimed: discarding it afterwards leaves it alone; a head no restore took is killed, its socket gone.
    await discardRestoreHead(head);
    const unused = startRestoreHead({ imagePath, hostCaps: caps, accel, stagingDir: staging });
    const pid = (await (await unused)!.early)!.vm.pid;
    await discardRestoreHead(unused);
    expect(await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).not.toContain(staging);
    expect(await readdir(staging)).toEqual([]);
    // An image that cannot be read: no head, nothing started (the restore reads it and says why).
    expect(await startRestoreHead({ imagePath: path.join(dir, 'missing.vmsave'), hostCaps: caps, accel, stagingDir: staging })).toBeUndefined();
  });

  it('a killed pool QEMU, or one whose QMP does not answer, is never handed out', async () => {
    const p = pool();
    await filled(p, definition, 1);
    const killed = p.stats().pids[0]!;
    process.kill(killed, 'SIGKILL');
    const got = await p.take(definition);
    expect(got?.vm.pid).not.toBe(killed);
    if (got) {
      vms.push(got.vm);
      await got.qmp.close();
    }
    await filled(p, definition, 1);
    const frozen = p.stats().pids[0]!;
    // Alive but not answering (SIGSTOP): the liveness check right before the hand-out refuses it.
    process.kill(frozen, 'SIGSTOP');
    const again = await p.take(definition);
    expect(again?.vm.pid).not.toBe(frozen);
    if (again) {
      vms.push(again.vm);
      await again.qmp.close();
    }
    // The refused QEMU was killed, not left behind.
    const deadline = Date.now() + 5000;
    while ((await rssOf(frozen)) !== undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(await rssOf(frozen)).toBeUndefined();
  });

  it('pool memory stays within its bound, and a waiting QEMU holds none of its guest RAM', async () => {
    const probe = pool({ size: 1 });
    const big = { ...definition, name: 'warm-big', memoryMiB: 256 };
    await filled(probe, big, 1);
    const one = (await rssOf(probe.stats().pids[0]!))!;
    console.info(`a waiting QEMU (${accel}, 256 MiB guest): RSS ${(one / MiB).toFixed(1)} MiB`);
    expect(one).toBeLessThan(128 * MiB);
    await probe.stop();
    expect(probe.stats().waiting).toBe(0);

    // Room for two waiting QEMUs by the bound, three asked for: two wait, and their RSS is within it.
    const bound = Math.max(2.2 * one, 2 * 48 * MiB + MiB);
    const p = pool({ size: 3, maxRssBytes: Math.ceil(bound) });
    p.note(big);
    await p.settled();
    await new Promise((r) => setTimeout(r, 200));
    await p.settled();
    const s = p.stats();
    let actual = 0;
    for (const pid of s.pids) actual += (await rssOf(pid)) ?? 0;
    console.info(`pool of ${s.waiting} (bound ${(bound / MiB).toFixed(1)} MiB): RSS ${(actual / MiB).toFixed(1)} MiB`);
    expect(s.waiting).toBeGreaterThanOrEqual(1);
    expect(s.waiting).toBeLessThanOrEqual(2);
    expect(actual).toBeLessThanOrEqual(bound);

    // A bound smaller than one QEMU: nothing waits.
    const none = pool({ size: 2, maxRssBytes: 16 * MiB });
    none.note(big);
    await none.settled();
    expect(none.stats().waiting).toBe(0);
  });

  it('a restore the gate refuses kills the QEMU started beside the gate, which never saw the image', async () => {
    const damaged = path.join(dir, 'damaged.vmsave');
    await copyFile(imagePath, damaged);
    const { header } = await readImage(damaged);
    // One byte of the stream's device-state region flipped: the seal's state check refuses it.
    const fh = await open(damaged, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, header.streamOffset + 20);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, header.streamOffset + 20);
    await fh.close();
    const staging = path.join(dir, 'staging-refused');
    let asked = 0;
    const err = await restoreImage({
      imagePath: damaged,
      qmpSocketPath: path.join(dir, 'refused.qmp'),
      hostCaps: caps,
      after: 'paused',
      accel,
      stagingDir: staging,
      mayStartEarly: () => {
        asked++;
        return true;
      },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'image-damaged', stage: 'prepare' });
    expect(asked).toBe(1);
    expect(await readdir(staging)).toEqual([]);
    // No QEMU is left with a socket in the staging directory.
    const left: string[] = [];
    for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
      const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmd.includes(staging)) left.push(pid);
    }
    expect(left).toEqual([]);
    // Told the VM may be running, no QEMU starts early at all.
    const quiet = path.join(dir, 'staging-running');
    const err2 = await restoreImage({
      imagePath: damaged,
      qmpSocketPath: path.join(dir, 'refused2.qmp'),
      hostCaps: caps,
      after: 'paused',
      accel,
      stagingDir: quiet,
      mayStartEarly: () => false,
    }).catch((e: unknown) => e);
    expect(err2).toMatchObject({ code: 'image-damaged' });
    expect(await readdir(quiet).catch(() => [])).toEqual([]);
  });

  it('a VM defined or changed on this host gets its shape prepared when the pool is configured for it', async () => {
    const registry = new VmRegistry({ vmDir: path.join(dir, 'vms'), qmpDir: path.join(dir, 'qmp') });
    await registry.init();
    const p = pool({ size: 1 });
    const ac = new AbortController();
    const cmdline = async (pid: number) => (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    const waitFor = async (what: string, ok: () => boolean | Promise<boolean>) => {
      for (const end = Date.now() + 60_000; !(await ok()); ) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what} (${JSON.stringify(p.stats())})`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    try {
      await p.watchDefinitions({ dir: registry.vmDir, list: () => registry.definitions() }, ['warm-def'], ac.signal);
      expect(p.stats().waiting + p.stats().starting).toBe(0);
      // Defined after the pool started: a QEMU of its shape is prepared, none for a VM the pool is not configured for.
      await registry.define({ ...definition, name: 'warm-other' });
      await registry.define({ ...definition, name: 'warm-def' });
      await waitFor('the defined shape', () => p.stats().waiting === 1);
      const first = p.stats().pids[0]!;
      expect(await cmdline(first)).toContain('guest=warm-def');
      // Changed (more memory): its new shape is prepared too.
      const changed = { ...definition, name: 'warm-def', memoryMiB: MEMORY_MIB + 64 };
      await registry.define(changed);
      await waitFor('the changed shape', () => p.stats().waiting === 2);
      for (const pid of p.stats().pids) expect(await cmdline(pid)).not.toContain('guest=warm-other');
      const got = await p.take(changed);
      expect(got).toBeDefined();
      expect(await cmdline(got!.vm.pid)).toContain(`${MEMORY_MIB + 64}M`);
      vms.push(got!.vm);
      await got!.qmp.close();
      // The same definition written again is no change: nothing more is started for it.
      expect(p.syncDefinitions(await registry.definitions(), ['warm-def'])).toEqual([]);
    } finally {
      ac.abort();
    }
  });

  it('stop kills every waiting QEMU', async () => {
    const p = pool({ size: 2 });
    await filled(p, definition, 2);
    const pids = p.stats().pids;
    await p.stop();
    for (const pid of pids) expect(await rssOf(pid)).toBeUndefined();
    expect(await p.take(definition)).toBeUndefined();
  });
});
