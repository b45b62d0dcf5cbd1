import { describe, expect, it } from 'vitest';
import { crc32c } from './crc32c.ts';
import { ImageChecksumError, ImageFormatError, ImageTruncatedError, ImageVersionError } from './errors.ts';
import { HEADER_SIZE, decodeHeader, encodeHeader, magicBytes, verifyHeaderChecksum, type HeaderFields } from './header.ts';

const desc = Buffer.from('{"x":1}');
const fields: HeaderFields = {
  complete: false,
  format: 'sparse',
  channels: 2,
  wasRunning: true,
  directIo: true,
  descriptorOffset: HEADER_SIZE,
  descriptorLength: desc.length,
  streamOffset: 4096,
};

describe('vmsave header', () => {
  it('crc32c matches the standard check value', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
  });

  it('round-trips every field', () => {
    const b = encodeHeader(fields, desc);
    expect(b.length).toBe(128);
    expect(b.toString('latin1', 0, 8)).toBe('VMSVPART');
    const h = decodeHeader(b, 8192);
    expect(h).toMatchObject({ ...fields, version: 1, headerSize: 128 });
    verifyHeaderChecksum(b, desc);
  });

  it('flipping the magic keeps the checksum valid; any other change breaks it', () => {
    const b = encodeHeader(fields, desc);
    magicBytes(true).copy(b, 0);
    expect(decodeHeader(b, 8192).complete).toBe(true);
    verifyHeaderChecksum(b, desc);
    expect(() => verifyHeaderChecksum(b, Buffer.from('{"x":2}'))).toThrow(ImageChecksumError);
    b[18] = b[18]! ^ 1;
    expect(() => verifyHeaderChecksum(b, desc)).toThrow(ImageChecksumError);
  });

  it('refuses bad magic, unknown versions and out-of-file offsets with typed errors', () => {
    const b = encodeHeader(fields, desc);
    expect(() => decodeHeader(b.subarray(0, 100), 100)).toThrow(ImageTruncatedError);
    expect(() => decodeHeader(b, 4000)).toThrow(ImageTruncatedError); // stream offset past EOF
    const bad = Buffer.from(b);
    bad.write('XXXXXXXX', 0, 'latin1');
    expect(() => decodeHeader(bad, 8192)).toThrow(ImageFormatError);
    const v2 = Buffer.from(b);
    v2.writeUInt32LE(2, 8);
    expect(() => decodeHeader(v2, 8192)).toThrow(ImageVersionError);
    const unaligned = Buffer.from(b);
    unaligned.writeBigUInt64LE(4097n, 40);
    expect(() => decodeHeader(unaligned, 8192)).toThrow(/multiple of 4096/);
    const huge = Buffer.from(b);
    huge.writeBigUInt64LE(2n ** 63n, 32);
    expect(() => decodeHeader(huge, 8192)).toThrow(ImageFormatError);
  });
});
