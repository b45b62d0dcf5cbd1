/**
 * The content seal on real images made by real QEMU (64 MiB VM, both formats): sealed before the
 * magic flips, checked by `checkSeal` and `verifyImage(…, { content })`; any single flipped byte
 * anywhere in a sealed image is caught; a punched hole in RAM is caught.
 */
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CHECK_NAMES,
  ImageStateError,
  checkSeal,
  createImage,
  dataExtents,
  finalizeImage,
  openFileSource,
  readImage,
  sealImage,
  sealReserveBytes,
  updateDescriptor,
  verifyImage,
  walkStream,
  type SealImageResult,
} from '../src/node/index.ts';
import { bitmapBytes } from '../src/stream.ts';
import { PATTERN_ADDR, PATTERN_BYTES, descriptorFor, makeVmsaveImage } from './fixtures.ts';

type Format = 'legacy' | 'sparse';
interface Region {
  name: string;
  start: number;
  end: number;
  /** A flip here changes the device-state region (or what guards it): `checkSeal(state)` must fail too. */
  state: boolean;
}

let dir: string;
const sealed: Record<Format, { path: string; result: SealImageResult; regions: Region[] }> = {} as never;
let unsealed: string;
let n = 0;

const copy = async (from: string): Promise<string> => {
  const to = join(dir, `copy-${n++}.vmsave`);
  execFileSync('cp', ['--sparse=always', from, to]);
  return to;
};
const status = (r: { checks: Array<{ name: string; status: string }> }, name: string): string | undefined => r.checks.find((c) => c.name === name)?.status;

/** Every kind of region of a sealed image, from its header, its walk and its extents. */
async function regionsOf(path: string): Promise<Region[]> {
  const { header } = await readImage(path);
  const src = await openFileSource(path);
  try {
    const walk = await walkStream(src, header.streamOffset);
    expect(walk.complete).toBe(true);
    const ram = walk.ram!;
    const descEnd = header.descriptorOffset + header.descriptorLength;
    const r: Region[] = [
      { name: 'header', start: 0, end: 128, state: true },
      { name: 'descriptor', start: header.descriptorOffset, end: descEnd, state: true },
      { name: 'reserved room', start: descEnd, end: header.streamOffset, state: true },
      { name: 'stream prefix', start: header.streamOffset, end: ram.startOffset, state: true },
      { name: 'description', start: walk.description!.offset, end: walk.description!.end, state: true },
    ];
    // A device section with a payload (its header, payload and footer).
    const dev = walk.devices.find((d) => d.size >= 64)!;
    r.push({ name: `device section ${dev.idstr}`, start: dev.offset, end: dev.offset + dev.size + 14, state: true });
    if (walk.mappedRam) {
      const block = ram.blocks.find((b) => b.name === 'pc.ram')!;
      const h = block.mappedRam!;
      r.push({ name: 'RAM section header', start: ram.startOffset, end: h.bitmapOffset, state: true });
      r.push({ name: 'bitmap', start: h.bitmapOffset, end: h.bitmapOffset + bitmapBytes(block.usedLength), state: true });
      r.push({ name: 'a page', start: h.pagesOffset + PATTERN_ADDR, end: h.pagesOffset + PATTERN_ADDR + PATTERN_BYTES, state: false });
      // A hole inside the pages region: after the pattern, before the next data extent.
      const ext = dataExtents(src.fd, h.pagesOffset + PATTERN_ADDR + PATTERN_BYTES, h.pagesOffset + block.usedLength).extents;
      const holeStart = h.pagesOffset + PATTERN_ADDR + PATTERN_BYTES;
      const holeEnd = ext[0]?.[0] ?? h.pagesOffset + block.usedLength;
      expect(holeEnd - holeStart).toBeGreaterThan(4096);
      r.push({ name: 'a hole in the pages region', start: holeStart, end: holeEnd, state: false });
    } else {
      // Legacy: the pattern's page records and the rest of the RAM section (RAM chunks only).
      const bytes = await fsp.readFile(path);
      const pattern = Buffer.alloc(16);
      for (let i = 0; i < 16; i += 4) pattern.writeUInt32LE((i * 2654435761) >>> 0 || 1, i);
      const at = bytes.indexOf(pattern, header.streamOffset);
      expect(at).toBeGreaterThan(0);
      r.push({ name: 'a page', start: at, end: at + 4096, state: false });
      r.push({ name: 'RAM records', start: ram.startOffset, end: ram.sectionsEnd, state: false });
    }
    return r;
  } finally {
    await src.close();
  }
}

beforeAll(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-seal-'));
  for (const format of ['legacy', 'sparse'] as const) {
    const path = await makeVmsaveImage(dir, `${format}.vmsave`, format, { memMiB: 64, channels: 2, finalize: false });
    const result = await sealImage(path);
    await finalizeImage(path);
    sealed[format] = { path, result, regions: await regionsOf(path) };
  }
  unsealed = await makeVmsaveImage(dir, 'unsealed.vmsave', 'sparse', { memMiB: 64, channels: 1, seal: false });
});
afterAll(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

describe.each(['legacy', 'sparse'] as const)('a sealed %s image', (format) => {
  it('seal, then finalize: checkSeal(full) and verifyImage(content) pass; the summary repeats the seal', async () => {
    const { path, result } = sealed[format];
    expect(result.seal.algorithm).toBe('crc32');
    expect(result.summary).toEqual({
      algorithm: 'crc32',
      chunkBytes: result.seal.chunkBytes,
      chunks: expect.any(Number),
      stateDigest: result.seal.state.digest,
      ramDigest: result.seal.ram.digest,
    });
    expect(result.summary.chunks).toBeGreaterThan(0);
    expect((await readImage(path)).descriptor.seal).toEqual(result.seal);
    const full = await checkSeal(path, { scope: 'full' });
    expect(full).toMatchObject({ sealed: true, ok: true, scope: 'full', mismatches: [], summary: result.summary });
    expect(full.checks.map((c) => [c.name, c.status])).toEqual([
      ['seal.present', 'pass'],
      ['seal.reserved', 'pass'],
      ['seal.state', 'pass'],
      ['seal.ram', 'pass'],
    ]);
    const state = await checkSeal(path, { scope: 'state' });
    expect(state.ok).toBe(true);
    expect(status(state, 'seal.ram')).toBe('skip');
    expect(state.bytesRead).toBeLessThan(full.bytesRead);
    const v = await verifyImage(path, { content: true });
    expect(v.ok).toBe(true);
    expect(v.checks.map((c) => c.name).sort()).toEqual([...CHECK_NAMES].sort());
    for (const name of ['seal.present', 'seal.reserved', 'seal.state', 'seal.ram']) expect(status(v, name)).toBe('pass');
    const quick = await verifyImage(path);
    expect(status(quick, 'seal.state')).toBe('pass');
    expect(status(quick, 'seal.ram')).toBe('skip');
  });

  it('flipping any single byte (header, descriptor, reserved room, stream, pages, holes, bitmap, devices, description) is caught', async () => {
    const { path, regions } = sealed[format];
    const flip = fc.record({ region: fc.nat({ max: regions.length - 1 }), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) });
    await fc.assert(
      fc.asyncProperty(flip, async ({ region, at, mask }) => {
        const r = regions[region]!;
        const off = r.start + (at % (r.end - r.start));
        const p = await copy(path);
        try {
          const fh = await fsp.open(p, 'r+');
          const b = Buffer.alloc(1);
          await fh.read(b, 0, 1, off);
          b[0]! ^= mask;
          await fh.write(b, 0, 1, off);
          await fh.close();
          const v = await verifyImage(p, { content: true });
          expect(v.ok, `flip of byte ${off} in ${r.name} not caught`).toBe(false);
          if (r.state) expect((await checkSeal(p, { scope: 'state' })).ok, `state check missed a flip at ${off} in ${r.name}`).toBe(false);
          else {
            const full = await checkSeal(p, { scope: 'full' });
            expect(status(full, 'seal.ram')).toBe('fail');
            expect(full.mismatches.some((m) => m.region === 'ram' && m.start <= off && off < m.end)).toBe(true);
          }
        } finally {
          await fsp.rm(p, { force: true });
        }
      }),
      // One run per region first, so that each is hit, then random ones.
      { numRuns: 60, examples: regions.map((_, i) => [{ region: i, at: 7, mask: 0x01 }]) },
    );
  });
});

describe('seal checks', () => {
  it('an unsealed image is sealed:false, not a failure', async () => {
    const c = await checkSeal(unsealed, { scope: 'full' });
    expect(c).toMatchObject({ sealed: false, ok: true, mismatches: [] });
    expect(status(c, 'seal.present')).toBe('warn');
    expect(c.summary).toBeUndefined();
    const v = await verifyImage(unsealed, { content: true });
    expect(v.ok).toBe(true);
    expect(status(v, 'seal.present')).toBe('warn');
    expect(status(v, 'seal.ram')).toBe('skip');
  });

  it('a hole punched into a RAM chunk that held data is caught by the full check, not by the state check', async () => {
    const { path, regions } = sealed.sparse;
    const page = regions.find((r) => r.name === 'a page')!;
    const p = await copy(path);
    execFileSync('fallocate', ['-p', '-o', String(page.start + 8192), '-l', '4096', p]);
    expect((await checkSeal(p, { scope: 'state' })).ok).toBe(true);
    const full = await checkSeal(p, { scope: 'full' });
    expect(full.ok).toBe(false);
    expect(status(full, 'seal.ram')).toBe('fail');
    expect(full.mismatches).toEqual([{ region: 'ram', start: expect.any(Number), end: expect.any(Number) }]);
    expect(full.mismatches[0]!.start).toBeLessThanOrEqual(page.start + 8192);
    expect(full.mismatches[0]!.end).toBeGreaterThan(page.start + 8192);
    expect(status(await verifyImage(p, { content: true }), 'seal.ram')).toBe('fail');
  });

  it('a truncated image fails seal.state with the sizes', async () => {
    const p = await copy(sealed.legacy.path);
    const size = (await fsp.stat(p)).size;
    await fsp.truncate(p, size - 1);
    const c = await checkSeal(p, { scope: 'state' });
    expect(c.ok).toBe(false);
    expect(c.checks.find((x) => x.name === 'seal.state')!.detail).toMatch(new RegExp(`${size - 1} bytes but was sealed at ${size}`));
  });

  it('a complete image is not sealed again; updateDescriptor keeps the seal', async () => {
    const p = await copy(sealed.sparse.path);
    await expect(sealImage(p)).rejects.toBeInstanceOf(ImageStateError);
    const { descriptor } = await readImage(p);
    const { seal, ...rest } = descriptor;
    await updateDescriptor(p, { ...rest, completedAt: '2025-01-01T00:01:00.000Z' });
    const after = await readImage(p);
    expect(after.descriptor.seal).toEqual(seal);
    expect(after.descriptor.completedAt).toBe('2025-01-01T00:01:00.000Z');
    expect((await checkSeal(p, { scope: 'full' })).ok).toBe(true);
    await updateDescriptor(p, rest, { keepSeal: false });
    expect((await readImage(p)).descriptor.seal).toBeUndefined();
  });

  it('reports progress up to the total, honours maxBytesPerSec and aborts', async () => {
    const { path } = sealed.sparse;
    const seen: Array<[number, number]> = [];
    const paced = await checkSeal(path, { scope: 'full', maxBytesPerSec: 1024 ** 3, onProgress: (d, t) => seen.push([d, t]) });
    expect(paced.ok).toBe(true);
    expect(seen.length).toBeGreaterThan(2);
    const [lastDone, total] = seen[seen.length - 1]!;
    expect(lastDone).toBe(total);
    for (let i = 1; i < seen.length; i++) expect(seen[i]![0]).toBeGreaterThanOrEqual(seen[i - 1]![0]);
    const ac = new AbortController();
    const reason = new Error('stop the scrub');
    await expect(checkSeal(path, { scope: 'full', signal: ac.signal, onProgress: () => ac.abort(reason) })).rejects.toBe(reason);
    const ac2 = new AbortController();
    const p = await makeVmsaveImage(dir, 'abort-seal.vmsave', 'legacy', { finalize: false });
    await expect(sealImage(p, { signal: ac2.signal, onProgress: () => ac2.abort(reason) })).rejects.toBe(reason);
    expect((await readImage(p)).descriptor.seal).toBeUndefined();
  });

  it('createImage reserves room for the seal of the VM size', async () => {
    const p = join(dir, 'big.vmsave');
    const { streamOffset, descriptor } = await createImage(p, {
      format: 'legacy',
      channels: 0,
      directIo: false,
      wasRunning: false,
      descriptor: descriptorFor('legacy', 1024 * 1024),
    });
    expect(descriptor.vm.memoryMiB).toBe(1024 * 1024);
    // A 1 TiB VM: more than 262144 chunk CRCs in base64 must fit.
    expect(streamOffset - 128).toBeGreaterThan(Math.ceil((262144 * 4) / 3) * 4 + 16 * 1024);
    expect(sealReserveBytes(1024 * 1024)).toBeLessThan(2 * 1024 * 1024);
  });
});
