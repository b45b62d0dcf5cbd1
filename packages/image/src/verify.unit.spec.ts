import { describe, expect, it } from 'vitest';
import { encodeDescriptor } from './descriptor.ts';
import { HEADER_SIZE, encodeHeader } from './header.ts';
import { bufferSource, type ExtentScan, type VerifySource } from './source.ts';
import { CHECK_NAMES, verifySource, type VerifyResult } from './verify.ts';

const status = (r: VerifyResult, name: string) => r.checks.find((c) => c.name === name)?.status;

/** A complete vmsave header and descriptor, then `stream` at offset 4096. */
function vmsaveBytes(stream: Uint8Array): Uint8Array {
  const desc = encodeDescriptor({
    descriptorVersion: 1,
    vm: { name: 'unit', uuid: '6f1c2a4e-7d1b-4e8a-9c3f-2b5d8e9a1f00', machine: 'pc-q35-10.0', memoryMiB: 64, vcpus: 1, args: [] },
    format: 'legacy',
    qemu: { version: '10.0.2', capabilities: {}, parameters: {} },
    host: 'h',
    jobId: 'j',
    createdAt: '2026-01-01T00:00:00.000Z',
  });
  const header = encodeHeader(
    { complete: true, format: 'legacy', channels: 0, wasRunning: false, directIo: false, descriptorOffset: HEADER_SIZE, descriptorLength: desc.length, streamOffset: 4096 },
    desc,
  );
  const out = new Uint8Array(4096 + stream.length);
  out.set(header, 0);
  out.set(desc, HEADER_SIZE);
  out.set(stream, 4096);
  return out;
}

describe('verifySource (pure, over any ByteSource)', () => {
  it('names every check once, in order, for bytes that are no image at all', async () => {
    const r = await verifySource(bufferSource(new TextEncoder().encode('hello, this is not an image')));
    expect(r.kind).toBe('unknown');
    expect(r.ok).toBe(false);
    expect(r.checks.map((c) => c.name)).toEqual([...CHECK_NAMES]);
    expect(status(r, 'header.magic')).toBe('fail');
  });

  it('checks the vmsave header and descriptor, and fails the stream that is not there', async () => {
    const r = await verifySource(bufferSource(vmsaveBytes(new TextEncoder().encode('not QEVM'))));
    expect(r.kind).toBe('vmsave');
    expect(['header.magic', 'header.version', 'header.checksum', 'descriptor'].map((n) => status(r, n))).toEqual(['pass', 'pass', 'pass', 'pass']);
    expect(status(r, 'stream.magic')).toBe('fail');
    expect(r.checks.find((c) => c.name === 'sparseness')?.detail).toMatch(/cannot report its allocated size/);
  });

  it('uses the allocation a source reports, when it reports one', async () => {
    const src: VerifySource = { ...bufferSource(vmsaveBytes(new TextEncoder().encode('not QEVM'))), allocatedBytes: async () => 8192 };
    const r = await verifySource(src);
    expect(r.checks.find((c) => c.name === 'sparseness')).toMatchObject({ status: 'pass', detail: expect.stringMatching(/^8\.0 KiB allocated/) });
  });

  it('turns a read error into a failed check instead of throwing', async () => {
    const broken: VerifySource = {
      size: 1 << 20,
      read: async () => {
        throw new Error('EIO');
      },
      dataExtents: (): ExtentScan => ({ extents: [], supported: true, truncated: false }),
    };
    const r = await verifySource(broken);
    expect(r.ok).toBe(false);
    expect(r.checks.find((c) => c.status === 'fail')?.detail).toMatch(/verification stopped: .*EIO/);
  });
});
