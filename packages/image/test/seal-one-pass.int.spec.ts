/**
 * The one-pass legacy seal on real QEMU images (a 128 MiB VM with 40 MiB of pseudo-random RAM, so
 * the stream is 11 chunks of 4 MiB): the stream is walked out of the chunks the workers read for
 * the checksums, and the seal is byte for byte the two-pass one; a damaged stream is refused with
 * the two-pass error; any flipped byte of an image sealed so is caught. And `checkSeal` given the
 * head a restore already read: the same verdicts, without reading the header and descriptor again.
 */
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageFormatError, checkSeal, finalizeImage, readImage, sealImage, type SealCheck } from '../src/node/index.ts';
import { DIRTY_ADDR, makeVmsaveImage } from './fixtures.ts';

let dir: string;
/** Saved by QEMU, not sealed, not finalized. */
let dirty: string;
/** `dirty` sealed by the two-pass path: the reference seal. */
let reference: Awaited<ReturnType<typeof sealImage>>;
let n = 0;

const copy = (from: string): string => {
  const to = join(dir, `copy-${n++}.vmsave`);
  execFileSync('cp', ['--sparse=always', from, to]);
  return to;
};
const status = (r: SealCheck, name: string): string | undefined => r.checks.find((c) => c.name === name)?.status;

async function flip(path: string, at: number, mask: number): Promise<void> {
  const fh = await fsp.open(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0]! ^= mask;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

/** The offset of the stream's record of guest page `page` (a whole page, CONTINUE or named). */
async function recordOf(path: string, page: number): Promise<number> {
  const buf = await fsp.readFile(path);
  for (const flags of [0x28n, 0x08n]) {
    const key = Buffer.alloc(8);
    key.writeBigUInt64BE(BigInt(page * 4096) | flags);
    const at = buf.indexOf(key);
    if (at >= 0) return at;
  }
  throw new Error(`no record of page ${page}`);
}

beforeAll(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-seal-one-pass-'));
  dirty = await makeVmsaveImage(dir, 'dirty-legacy.vmsave', 'legacy', { memMiB: 128, dirtyMiB: 40, finalize: false });
  reference = await sealImage(copy(dirty), { onePass: false });
});
afterAll(async () => {
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
});

describe('one-pass legacy seal', () => {
  it('walks the stream out of the workers’ chunks and writes the very seal of the two-pass and in-thread paths', async () => {
    const one = copy(dirty);
    const two = copy(dirty);
    const inThread = copy(dirty);
    const a = await sealImage(one);
    const b = await sealImage(two, { onePass: false });
    const c = await sealImage(inThread, { workers: 0 });
    expect([a.walk, b.walk, c.walk]).toEqual(['chunks', 'file', 'file']);
    expect(a.summary.chunks).toBeGreaterThanOrEqual(10);
    expect(a.seal).toEqual(b.seal);
    expect(a.seal).toEqual(c.seal);
    expect(a.seal).toEqual(reference.seal);
    expect(a.bytesRead).toBe(b.bytesRead);
    // The state ranges are the walk's: the stream before RAM START, and from the RAM END's footer on.
    expect(a.seal.state.ranges).toHaveLength(2);
    // The files are the same, byte for byte (the descriptor with its seal, the header's checksum).
    const { header } = await readImage(one);
    const [fa, fb] = await Promise.all([fsp.readFile(one), fsp.readFile(two)]);
    expect(fa.subarray(0, header.streamOffset).equals(fb.subarray(0, header.streamOffset))).toBe(true);
    await finalizeImage(one);
    const full = await checkSeal(one, { scope: 'full' });
    expect(full.ok).toBe(true);
    expect(status(full, 'seal.ram')).toBe('pass');
  });

  it('a byte flipped anywhere in an image sealed in one pass fails the full check (random offsets)', async () => {
    const path = copy(dirty);
    expect((await sealImage(path)).walk).toBe('chunks');
    await finalizeImage(path);
    const { size } = await fsp.stat(path);
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: size - 1 }), fc.integer({ min: 0, max: 7 }), async (at, bit) => {
        await flip(path, at, 1 << bit);
        try {
          const r = await checkSeal(path, { scope: 'full' });
          expect(r.ok, `byte ${at} bit ${bit}: ${JSON.stringify(r.checks)}`).toBe(false);
        } finally {
          await flip(path, at, 1 << bit);
        }
      }),
      { numRuns: 40 },
    );
    expect((await checkSeal(path, { scope: 'full' })).ok).toBe(true);
  });

  it('a damaged page record or a truncated stream is refused with the two-pass error, and no seal is written', async () => {
    const damaged = copy(dirty);
    const at = await recordOf(damaged, DIRTY_ADDR / 4096 + 1000);
    await flip(damaged, at + 6, 0x01); // flag 0x100: unknown
    const twin = copy(damaged);
    const one = await sealImage(damaged).catch((e: unknown) => e);
    const two = await sealImage(twin, { onePass: false }).catch((e: unknown) => e);
    expect(one).toBeInstanceOf(ImageFormatError);
    expect((one as Error).message).toBe((two as Error).message);
    expect((one as Error).message).toContain(`unknown RAM record flags 0x100 at offset ${at}`);
    expect((await readImage(damaged)).descriptor.seal).toBeUndefined();

    const cut = copy(dirty);
    await fsp.truncate(cut, 30 * 1024 * 1024);
    const cutTwin = copy(cut);
    const e1 = await sealImage(cut).catch((e: unknown) => e);
    const e2 = await sealImage(cutTwin, { onePass: false }).catch((e: unknown) => e);
    expect(e1).toBeInstanceOf(ImageFormatError);
    expect((e1 as Error).message).toBe((e2 as Error).message);
  });

  it('an abort during the pass rejects with the reason and writes no seal; the next seal is the two-pass one', async () => {
    const path = copy(dirty);
    const ac = new AbortController();
    const reason = new Error('stop the seal');
    const seen: Array<[number, number]> = [];
    await expect(
      sealImage(path, {
        signal: ac.signal,
        onProgress: (d, t) => {
          seen.push([d, t]);
          if (seen.length === 3) ac.abort(reason);
        },
      }),
    ).rejects.toBe(reason);
    expect((await readImage(path)).descriptor.seal).toBeUndefined();
    const progress: Array<[number, number]> = [];
    const again = await sealImage(path, { onProgress: (d, t) => progress.push([d, t]) });
    expect(again.walk).toBe('chunks');
    expect(again.seal).toEqual(reference.seal);
    // In order, never past the total, and done only at the very end.
    for (let i = 1; i < progress.length; i++) expect(progress[i]![0]).toBeGreaterThanOrEqual(progress[i - 1]![0]);
    expect(progress.slice(0, -1).every(([d, t]) => d < t)).toBe(true);
    const [lastDone, total] = progress.at(-1)!;
    expect(lastDone).toBe(total);
  });
});

describe('checkSeal with the head already read', () => {
  let legacy: string;
  let sparse: string;
  beforeAll(async () => {
    legacy = copy(dirty);
    await sealImage(legacy);
    await finalizeImage(legacy);
    sparse = await makeVmsaveImage(dir, 'sparse.vmsave', 'sparse');
  });

  it('gives the verdict of a check without it, without reading the header and descriptor again', async () => {
    for (const path of [legacy, sparse]) {
      const head = await readImage(path);
      for (const scope of ['state', 'full'] as const) {
        const without = await checkSeal(path, { scope });
        const withHead = await checkSeal(path, { scope, head });
        expect(without.ok).toBe(true);
        expect(withHead.ok).toBe(true);
        expect(withHead.sealed).toBe(true);
        expect(withHead.checks).toEqual(without.checks);
        expect(withHead.summary).toEqual(without.summary);
        expect(withHead.mismatches).toEqual([]);
        expect(without.bytesRead - withHead.bytesRead).toBe(head.header.descriptorLength + 128);
      }
    }
  });

  it('a flipped device-state byte is still caught with the head given, as without it', async () => {
    for (const base of [legacy, sparse]) {
      const path = copy(base);
      const head = await readImage(path);
      const seal = head.descriptor.seal!;
      // In the last state range: device sections, EOF, the VM description.
      const [s, e] = seal.state.ranges.at(-1)!;
      await flip(path, s + Math.floor((e - s) / 3), 0x10);
      for (const scope of ['state', 'full'] as const) {
        const withHead = await checkSeal(path, { scope, head });
        const without = await checkSeal(path, { scope });
        expect(withHead.ok).toBe(false);
        expect(status(withHead, 'seal.state')).toBe('fail');
        expect(withHead.checks).toEqual(without.checks);
        expect(withHead.mismatches).toEqual(without.mismatches);
      }
    }
  });

  it('an unsealed image given with its head is sealed:false, as without it', async () => {
    const path = copy(dirty);
    await finalizeImage(path);
    const head = await readImage(path);
    const withHead = await checkSeal(path, { scope: 'state', head });
    const without = await checkSeal(path, { scope: 'state' });
    expect(withHead.sealed).toBe(false);
    expect(status(withHead, 'seal.present')).toBe('warn');
    expect(withHead.checks).toEqual(without.checks);
  });
});
