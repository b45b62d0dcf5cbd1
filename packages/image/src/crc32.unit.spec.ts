import { crc32 as zlibCrc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { crc32, crc32HasherOf, crc32Zeros } from './crc32.ts';

describe('crc32Zeros', () => {
  it('continues a CRC over zero bytes exactly as hashing the zeros does', () => {
    const prefix = Buffer.from('vmsave state region before a hole');
    for (const n of [0, 1, 2, 3, 7, 64, 4095, 4096, 65_536, 1_048_576 + 13]) {
      const zeros = new Uint8Array(n);
      expect(crc32Zeros(crc32(prefix), n)).toBe(crc32(zeros, crc32(prefix)));
      expect(crc32Zeros(0, n)).toBe(crc32(zeros));
    }
  });

  it('a hasher stream given a hole as zeros() digests like one given the bytes', () => {
    const hasher = crc32HasherOf((d, c) => zlibCrc32(d, c));
    const head = Buffer.from([1, 2, 3, 4, 5]);
    const tail = Buffer.from([9, 8, 7]);
    const withBytes = hasher.stream();
    withBytes.update(head);
    withBytes.update(new Uint8Array(200_000));
    withBytes.update(tail);
    const withZeros = hasher.stream();
    withZeros.update(head);
    withZeros.zeros!(200_000);
    withZeros.update(tail);
    expect(Buffer.from(withZeros.digest()).toString('hex')).toBe(Buffer.from(withBytes.digest()).toString('hex'));
  });
});
