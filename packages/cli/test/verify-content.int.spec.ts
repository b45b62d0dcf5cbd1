/**
 * `vmsave verify FILE --content` on a real sealed image (64 MiB, sparse, with a RAM pattern):
 * exit 0 when every byte matches the seal; exit 3 naming the region and offsets when one byte of
 * RAM or of the device state was flipped; exit 3 on an image with no seal. Without `--content`
 * a RAM flip goes unseen (only the device state is checked).
 */
import fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeStreamFds, createImage, finalizeImage, openStreamFds, readImage, sealImage } from '@vmsave/image/node';
import { detectAccel, launchVm, probeQemu, saveToFds } from '@vmsave/qemu';
import { PATTERN_ADDR, patternVm } from '@vmsave/testkit';
import { EXIT } from '../src/errors.ts';
import { vmsave } from './helpers.ts';

let dir: string;
let env: Record<string, string>;
let sealed: string;
let unsealed: string;

/** A paused 64 MiB pattern VM saved sparse into `file`; sealed before the magic flips when `seal`. */
async function image(name: string, seal: boolean): Promise<string> {
  const file = path.join(dir, name);
  const probe = await probeQemu();
  const def = await patternVm(dir, `src-${name}`, 64);
  const { streamOffset } = await createImage(file, {
    format: 'sparse',
    channels: 1,
    directIo: false,
    wasRunning: false,
    descriptor: {
      descriptorVersion: 1,
      vm: { ...def, machine: probe.machineAliases.q35 ?? 'q35' },
      format: 'sparse',
      qemu: { version: probe.version, capabilities: { 'mapped-ram': true, multifd: true }, parameters: { 'multifd-channels': 1 } },
      host: 'test-host',
      jobId: `job-${name}`,
      createdAt: new Date().toISOString(),
    },
  });
  const vm = await launchVm(def, { qmpSocketPath: path.join(dir, `${name}.qmp`), startPaused: true, accel: await detectAccel(), killWithParent: true });
  try {
    const fds = await openStreamFds(file, { mode: 'save', directIo: false });
    try {
      await using qmp = await vm.connectQmp();
      await saveToFds(qmp, { fds, offset: streamOffset, format: 'sparse', channels: 1 });
    } finally {
      closeStreamFds(fds);
    }
  } finally {
    await vm.kill().catch(() => undefined);
  }
  if (seal) await sealImage(file);
  await finalizeImage(file);
  return file;
}

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

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-cli-content-'));
  env = { VMSAVE_STATE_DIR: path.join(dir, 'state') };
  sealed = await image('sealed.vmsave', true);
  unsealed = await image('unsealed.vmsave', false);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('vmsave verify --content', () => {
  it('exits 0 on a clean sealed image, with seal.ram passed', async () => {
    const r = await vmsave(['verify', sealed, '--content', '--json'], env);
    expect(r.code, r.stderr).toBe(EXIT.ok);
    const doc = JSON.parse(r.stdout) as { ok: boolean; checks: { name: string; status: string }[]; content: { sealed: boolean; ok: boolean; mismatches: unknown[] } };
    expect(doc.ok).toBe(true);
    expect(doc.checks.find((c) => c.name === 'seal.ram')?.status).toBe('pass');
    expect(doc.checks.find((c) => c.name === 'seal.state')?.status).toBe('pass');
    expect(doc.content).toMatchObject({ sealed: true, ok: true, mismatches: [] });
  });

  it('exits 3 on one flipped RAM byte and names the region and its offsets; plain verify does not read RAM', async () => {
    const { descriptor } = await readImage(sealed);
    const ram = [...descriptor.seal!.ram.ranges].sort((a, b) => b[1] - b[0] - (a[1] - a[0]))[0]!;
    const at = ram[0] + PATTERN_ADDR + 777;
    const copy = flipped(sealed, at, 'ram-flip.vmsave');

    const r = await vmsave(['verify', copy, '--content'], env);
    expect(r.code).toBe(EXIT.rejected);
    expect(r.stdout).toMatch(/seal\.ram\s+fail/);
    const m = r.stderr.match(/differs from its seal at ram bytes (\d+)–(\d+)/);
    expect(m, r.stderr).not.toBeNull();
    const [s, e] = m!.slice(1).map(Number) as [number, number];
    expect(s <= at && at < e).toBe(true);

    const json = await vmsave(['verify', copy, '--content', '--json'], env);
    expect(json.code).toBe(EXIT.rejected);
    const doc = JSON.parse(json.stdout) as { content: { mismatches: { region: string; start: number; end: number }[] } };
    expect(doc.content.mismatches).toEqual([{ region: 'ram', start: s, end: e }]);

    const plain = await vmsave(['verify', copy], env);
    expect(plain.code, plain.stdout).toBe(EXIT.ok);
  });

  it('exits 3 on one flipped byte of device state, with or without --content', async () => {
    const { descriptor } = await readImage(sealed);
    const last = descriptor.seal!.state.ranges.at(-1)!;
    const at = last[0] + Math.floor((last[1] - last[0]) / 3);
    const copy = flipped(sealed, at, 'state-flip.vmsave');
    for (const args of [['--content'], []]) {
      const r = await vmsave(['verify', copy, ...args], env);
      expect(r.code, `${args.join(' ')}: ${r.stdout}`).toBe(EXIT.rejected);
      expect(r.stdout).toMatch(/seal\.state\s+fail/);
    }
    const r = await vmsave(['verify', copy, '--content'], env);
    expect(r.stderr).toMatch(/differs from its seal at state bytes \d+–\d+/);
  });

  it('exits 3 on an image with no seal, saying so; plain verify passes it', async () => {
    const r = await vmsave(['verify', unsealed, '--content'], env);
    expect(r.code).toBe(EXIT.rejected);
    expect(r.stderr).toMatch(/seal\.present \(cannot verify content: image has no seal/);
    expect((await vmsave(['verify', unsealed], env)).code).toBe(EXIT.ok);
  });
});
