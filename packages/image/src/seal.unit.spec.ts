import { describe, expect, it } from 'vitest';
import type { ImageSeal } from './descriptor.ts';
import { crc32Hasher } from './node/seal.ts';
import { crc32, jsCrc32Hasher } from './crc32.ts';
import { chunkCount, chunksOf, sealProblems, sealSummary } from './seal.ts';

const MiB = 1024 * 1024;
const base = (): ImageSeal => {
  const digests = Buffer.alloc(3 * 4);
  return {
    version: 1,
    algorithm: 'crc32',
    chunkBytes: 4 * MiB,
    streamLength: 10 * MiB,
    state: { ranges: [[4096, 4096 + MiB]], digest: '00000000' },
    ram: { ranges: [[4096 + MiB, 4096 + 10 * MiB]], digests: digests.toString('base64'), digest: Buffer.from(crc32Hasher.digest(digests)).toString('hex') },
  };
};

describe('seal structure', () => {
  it('cuts ranges into chunks of chunkBytes, the last of each range shorter', () => {
    expect([
      ...chunksOf(
        [
          [0, 10],
          [20, 25],
        ],
        4,
      ),
    ]).toEqual([
      [0, 4],
      [4, 8],
      [8, 10],
      [20, 24],
      [24, 25],
    ]);
    expect(
      chunkCount(
        [
          [0, 10],
          [20, 25],
        ],
        4,
      ),
    ).toBe(5);
    expect(chunkCount([], 4)).toBe(0);
  });

  it('a sound seal has no problems; its summary counts the chunks', () => {
    expect(sealProblems(base(), { streamOffset: 4096 }, crc32Hasher)).toEqual([]);
    expect(sealSummary(base())).toEqual({ algorithm: 'crc32', chunkBytes: 4 * MiB, chunks: 3, stateDigest: '00000000', ramDigest: base().ram.digest });
  });

  it('names what is wrong with a malformed seal', () => {
    const gap = base();
    gap.state.ranges = [[4096, 4096 + MiB - 1]];
    expect(sealProblems(gap, { streamOffset: 4096 }, crc32Hasher).join()).toMatch(/leave stream bytes from offset 1052671 unsealed/);
    const outside = base();
    outside.ram.ranges = [[4096 + MiB, 4096 + 11 * MiB]];
    expect(sealProblems(outside, { streamOffset: 4096 }, crc32Hasher).join()).toMatch(/outside the stream/);
    const count = base();
    count.ram.digests = Buffer.alloc(8).toString('base64');
    expect(sealProblems(count, { streamOffset: 4096 }, crc32Hasher).join()).toMatch(/8 bytes of chunk digests, 12 expected for 3 chunks/);
    const self = base();
    self.ram.digest = 'ffffffff';
    expect(sealProblems(self, { streamOffset: 4096 }, crc32Hasher).join()).toMatch(/do not match their own digest/);
    const alg = base();
    alg.algorithm = 'sha256';
    expect(sealProblems(alg, { streamOffset: 4096 }, crc32Hasher).join()).toMatch(/algorithm "sha256"/);
  });

  it('crc32Hasher: one-shot and streaming agree (IEEE CRC-32 of "123456789" is cbf43926)', () => {
    const data = Buffer.from('123456789');
    expect(Buffer.from(crc32Hasher.digest(data)).toString('hex')).toBe('cbf43926');
    const s = crc32Hasher.stream();
    s.update(data.subarray(0, 4));
    s.update(data.subarray(4));
    expect(Buffer.from(s.digest()).toString('hex')).toBe('cbf43926');
  });

  it('the plain-JS CRC-32 of the pure entry gives the same digests as zlib', () => {
    const data = Buffer.alloc(100_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
    expect(crc32(Buffer.from('123456789'))).toBe(0xcbf43926);
    expect(jsCrc32Hasher.digest(data)).toEqual(crc32Hasher.digest(data));
    const a = jsCrc32Hasher.stream();
    a.update(data.subarray(0, 777));
    a.update(data.subarray(777));
    expect(a.digest()).toEqual(crc32Hasher.digest(data));
  });
});
