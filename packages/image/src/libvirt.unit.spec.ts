import { describe, expect, it } from 'vitest';
import { ImageTruncatedError, ImageVersionError } from './errors.ts';
import { compressorMagicMatches, decodeLibvirtHeader, domainSummary, encodeLibvirtHeader, parseLibvirtData } from './libvirt.ts';

describe('libvirt save header', () => {
  it('reads a little-endian header and puts the stream at 92 + data_len, unaligned', () => {
    const b = encodeLibvirtHeader({ complete: true, dataLength: 66953, wasRunning: true, formatCode: 6, cookieOffset: 1234 });
    const h = decodeLibvirtHeader(b, 100_000);
    expect(h).toMatchObject({ complete: true, version: 2, format: 'sparse', wasRunning: true, cookieOffset: 1234, byteSwapped: false, streamOffset: 92 + 66953 });
  });

  it('byte-swaps a header written in the other byte order (version reads > 2)', () => {
    const b = encodeLibvirtHeader({ complete: false, dataLength: 500, wasRunning: false, formatCode: 1, cookieOffset: 0, bigEndian: true });
    const h = decodeLibvirtHeader(b, 1000);
    expect(h).toMatchObject({ complete: false, version: 2, format: 'gzip', dataLength: 500, byteSwapped: true });
  });

  it('bounds-checks data_len and the version', () => {
    expect(() => decodeLibvirtHeader(encodeLibvirtHeader({ complete: true, dataLength: 5000, wasRunning: false, formatCode: 0, cookieOffset: 0 }), 1000)).toThrow(
      ImageTruncatedError,
    );
    expect(() => decodeLibvirtHeader(encodeLibvirtHeader({ complete: true, dataLength: 5, wasRunning: false, formatCode: 0, cookieOffset: 0, version: 0 }), 1000)).toThrow(
      ImageVersionError,
    );
  });

  it('splits XML and cookie and summarises the domain', () => {
    const xml = "<domain><name>web1</name><uuid>u-1</uuid><memory unit='GiB'>4</memory><os><type machine='pc-q35-10.0'>hvm</type></os></domain>";
    const data = Buffer.concat([Buffer.from(`${xml}\0`), Buffer.from('<cookie/>\0'), Buffer.alloc(64)]);
    const h = decodeLibvirtHeader(
      encodeLibvirtHeader({ complete: true, dataLength: data.length, wasRunning: false, formatCode: 0, cookieOffset: xml.length + 1 }),
      92 + data.length,
    );
    const { xml: x, cookie } = parseLibvirtData(data, h);
    expect(x).toBe(xml);
    expect(cookie).toBe('<cookie/>');
    expect(domainSummary(x)).toEqual({ name: 'web1', uuid: 'u-1', memoryKiB: 4 * 1024 * 1024, machine: 'pc-q35-10.0' });
  });

  it('recognises compressor magics', () => {
    expect(compressorMagicMatches('gzip', Buffer.from([0x1f, 0x8b, 8]))).toBe(true);
    expect(compressorMagicMatches('zstd', Buffer.from('QEVM'))).toBe(false);
    expect(compressorMagicMatches('raw', Buffer.from('QEVM'))).toBeUndefined();
  });
});
