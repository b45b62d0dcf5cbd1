/**
 * The content seal through a real save and the restore gate (issue #14): a save through saveVm
 * seals the image before its magic flips and returns the summary; a restore refuses, before QEMU
 * starts, an image whose device state differs from its seal, and one whose RAM differs when it
 * asks for `content: 'full'` (with `state` that RAM damage is not looked for: the restore runs).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { QemuCapabilities } from '@vmsave/contracts';
import { checkSeal, createImage, finalizeImage, openStreamFds, closeStreamFds, readImage, readImageHeader } from '@vmsave/image/node';
import { detectAccel, launchVm, probeQemu, saveToFds, type VmProcess } from '@vmsave/qemu';
import { OpError, restoreImage, saveVm } from '../src/index.ts';
import { PATTERN_ADDR, makePattern, patternVm, tempDir } from './helpers.ts';

let dir: string;
let cleanup: () => Promise<void>;
let caps: QemuCapabilities;
const accelP = detectAccel();
const vms: VmProcess[] = [];
const pattern = makePattern();
let sealed: string;
let ramRange: [number, number];
let stateRanges: [number, number][];

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('vmsave-ops-seal-'));
  const q = await probeQemu();
  caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel: await accelP };
});
afterAll(async () => {
  for (const vm of vms) await vm.kill().catch(() => undefined);
  await cleanup();
});

/** A copy of `src` with the byte at `offset` inverted. */
function flipped(src: string, offset: number, name: string): string {
  const copy = path.join(dir, name);
  fs.copyFileSync(src, copy);
  const fd = fs.openSync(copy, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, offset);
  b[0] = b[0]! ^ 0xff;
  fs.writeSync(fd, b, 0, 1, offset);
  fs.closeSync(fd);
  return copy;
}

/** Offset of a byte inside the `cpu` device section (its idstr, length-prefixed, then the body). */
function deviceSectionByte(file: string, ranges: [number, number][]): number {
  const buf = fs.readFileSync(file);
  for (const [s, e] of ranges) {
    const at = buf.subarray(s, e).indexOf(Buffer.from('\x03cpu'));
    if (at >= 0) return s + at + 4 + 12 + 64; // past idstr, instance and version ids, into the body
  }
  throw new Error('no cpu section in the state ranges');
}

describe('sealing at save', () => {
  it('a real save through saveVm seals the image before the magic flips and returns the summary', async () => {
    const def = await patternVm(dir, 'seal-src', 64, pattern);
    const vm = await launchVm(def, { qmpSocketPath: path.join(dir, 'seal-src.qmp'), accel: await accelP });
    vms.push(vm);
    const qmp = await vm.connectQmp();
    sealed = path.join(dir, 'sealed.vmsave');
    const r = await saveVm({ qmp, imagePath: sealed, format: 'sparse', channels: 1, directIo: false, after: 'running', vm: def, host: 'h', jobId: 'j-seal', hostCaps: caps });
    await qmp.close();
    expect(r.seal).toMatchObject({ algorithm: expect.any(String), chunkBytes: expect.any(Number), stateDigest: expect.stringMatching(/^[0-9a-f]+$/) });
    expect(r.seal.chunks).toBeGreaterThan(0);
    expect(r.sealMs).toBeGreaterThanOrEqual(0);
    expect((await readImageHeader(sealed)).complete).toBe(true);
    const { descriptor } = await readImage(sealed);
    expect(descriptor.seal).toBeDefined();
    expect(descriptor.completedAt).toBeDefined();
    const check = await checkSeal(sealed, { scope: 'full' });
    expect(check).toMatchObject({ sealed: true, ok: true, summary: r.seal });
    // The largest RAM range is the guest's main RAM; the pattern sits at PATTERN_ADDR in it.
    ramRange = [...descriptor.seal!.ram.ranges].sort((a, b) => b[1] - b[0] - (a[1] - a[0]))[0] as [number, number];
    stateRanges = descriptor.seal!.state.ranges as [number, number][];
  });
});

describe('the content gate of a restore', () => {
  const restore = (imagePath: string, content?: 'state' | 'full') => {
    let prepared = false;
    const sock = path.join(dir, `r-${Math.random().toString(36).slice(2)}.qmp`);
    const run = restoreImage({
      imagePath,
      hostCaps: caps,
      after: 'paused',
      accel: caps.accel,
      ...(content ? { content } : {}),
      prepare: async () => {
        prepared = true;
        return sock;
      },
    });
    return { run, prepared: () => prepared, sock };
  };
  const refused = async (imagePath: string, content?: 'state' | 'full') => {
    const r = restore(imagePath, content);
    const err = await r.run.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpError);
    // Refused before anything started: prepare (which runs right before QEMU) was never called.
    expect(r.prepared()).toBe(false);
    expect(fs.existsSync(r.sock)).toBe(false);
    return err as OpError;
  };

  it('one byte flipped in a device section: refused before QEMU starts, whatever verify says, naming the region and offsets', async () => {
    const at = deviceSectionByte(sealed, stateRanges);
    const copy = flipped(sealed, at, 'state-flip.vmsave');
    for (const content of [undefined, 'state', 'full'] as const) {
      const e = await refused(copy, content);
      expect(e).toMatchObject({ stage: 'prepare', code: 'image-damaged', retryable: false });
      expect(e.message).toMatch(/image damaged/);
      expect(e.message).toMatch(/state bytes \d+–\d+/);
      const [s, end] = e.message
        .match(/state bytes (\d+)–(\d+)/)!
        .slice(1)
        .map(Number) as [number, number];
      expect(s <= at && at < end).toBe(true);
    }
  });

  it("one RAM byte flipped: verify 'state' restores it, verify 'full' refuses it before QEMU starts", async () => {
    const at = ramRange[0] + PATTERN_ADDR + 12345;
    const copy = flipped(sealed, at, 'ram-flip.vmsave');
    const e = await refused(copy, 'full');
    expect(e).toMatchObject({ stage: 'prepare', code: 'image-damaged', retryable: false });
    expect(e.message).toMatch(/ram bytes \d+–\d+/);
    const [s, end] = e.message
      .match(/ram bytes (\d+)–(\d+)/)!
      .slice(1)
      .map(Number) as [number, number];
    expect(s <= at && at < end).toBe(true);

    const r = restore(copy, 'state');
    const ok = await r.run;
    vms.push(ok.vm);
    expect(r.prepared()).toBe(true);
    expect(ok.content).toMatchObject({ sealed: true, scope: 'state' });
    expect(ok.vmState).toBe('paused');
    await ok.qmp.close();
    await ok.vm.kill();
  });

  it("the clean image restores with verify 'full' after reading its RAM", async () => {
    const r = restore(sealed, 'full');
    const ok = await r.run;
    vms.push(ok.vm);
    expect(ok.content).toMatchObject({ sealed: true, scope: 'full' });
    expect(ok.content.bytesRead).toBeGreaterThanOrEqual(pattern.length);
    await ok.qmp.close();
    await ok.vm.kill();
  });

  it("an image with no seal: restored with verify 'state' (sealed: false), refused with verify 'full'", async () => {
    const def = await patternVm(dir, 'unsealed-src', 64, pattern);
    const vm = await launchVm(def, { qmpSocketPath: path.join(dir, 'unsealed-src.qmp'), accel: await accelP, startPaused: true });
    vms.push(vm);
    const imagePath = path.join(dir, 'unsealed.vmsave');
    const { streamOffset } = await createImage(imagePath, {
      format: 'sparse',
      channels: 1,
      directIo: false,
      wasRunning: false,
      descriptor: {
        descriptorVersion: 1,
        vm: def,
        format: 'sparse',
        qemu: { version: caps.version, capabilities: { 'mapped-ram': true, multifd: true }, parameters: { 'multifd-channels': 1 } },
        host: 'h',
        jobId: 'j-unsealed',
        createdAt: new Date().toISOString(),
      },
    });
    const fds = await openStreamFds(imagePath, { mode: 'save', directIo: false });
    const qmp = await vm.connectQmp();
    try {
      await saveToFds(qmp, { fds, offset: streamOffset, format: 'sparse', channels: 1 });
    } finally {
      closeStreamFds(fds);
      await qmp.close();
      await vm.kill();
    }
    await finalizeImage(imagePath);

    const e = await refused(imagePath, 'full');
    expect(e).toMatchObject({ stage: 'prepare', code: 'image-unsealed', retryable: false });
    expect(e.message).toMatch(/cannot verify content: image has no seal/);

    const r = restore(imagePath, 'state');
    const ok = await r.run;
    vms.push(ok.vm);
    expect(ok.content).toMatchObject({ sealed: false, scope: 'state' });
    await ok.qmp.close();
    await ok.vm.kill();
  });
});
