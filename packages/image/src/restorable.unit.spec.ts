import { describe, expect, it } from 'vitest';
import { ImageDescriptor } from './descriptor.ts';
import type { ImageHeader } from './header.ts';
import { checkRestorable } from './restorable.ts';

const descriptor = ImageDescriptor.parse({
  descriptorVersion: 1,
  vm: { name: 'web1', uuid: '6f1c2a4e-7d1b-4e8a-9c3f-2b5d8e9a1f00', machine: 'pc-q35-10.0', memoryMiB: 4096, vcpus: 2 },
  format: 'sparse',
  qemu: { version: '10.0.2', capabilities: { 'mapped-ram': true }, parameters: {} },
  host: 'h1',
  jobId: 'j1',
  createdAt: '2025-01-01T00:00:00Z',
});
const header: ImageHeader = {
  complete: true,
  version: 1,
  headerSize: 128,
  format: 'sparse',
  channels: 2,
  wasRunning: true,
  directIo: false,
  descriptorOffset: 128,
  descriptorLength: 10,
  streamOffset: 4096,
  checksum: 0,
};
const hostCaps = { version: '10.0.2', mappedRam: true, directIo: true, machines: ['pc-q35-10.0', 'q35'], accel: 'kvm' as const };

describe('checkRestorable', () => {
  it('given a complete image and a matching VM, when checked, then it may be restored', () => {
    expect(checkRestorable({ header, descriptor }, { definition: descriptor.vm, hostCaps })).toEqual({ ok: true, refusals: [], notes: [] });
  });

  it('refuses a partial image', () => {
    const v = checkRestorable({ header: { ...header, complete: false }, descriptor }, { hostCaps });
    expect(v.refusals.map((r) => r.code)).toEqual(['partial']);
  });

  it('refuses an unknown format version', () => {
    expect(checkRestorable({ header: { ...header, version: 9 }, descriptor }, { hostCaps }).refusals.map((r) => r.code)).toEqual(['version']);
  });

  it('refuses a RAM size or machine mismatch, saying what and why', () => {
    const v = checkRestorable({ header, descriptor }, { definition: { ...descriptor.vm, memoryMiB: 8192, machine: 'pc-i440fx-10.0' }, hostCaps });
    expect(v.ok).toBe(false);
    expect(v.refusals.map((r) => r.code)).toEqual(['ram-size', 'machine']);
    expect(v.refusals[0]!.message).toMatch(/4096 MiB .* 8192 MiB/);
  });

  it('refuses a format or machine type the host QEMU lacks', () => {
    const v = checkRestorable({ header, descriptor }, { hostCaps: { ...hostCaps, version: '8.2.0', mappedRam: false, machines: ['q35'] } });
    expect(v.refusals.map((r) => r.code)).toEqual(['format', 'machine-unknown']);
    expect(v.refusals[0]!.message).toMatch(/mapped-ram/);
  });

  it('notes (does not refuse) direct I/O that the host lacks', () => {
    const v = checkRestorable({ header: { ...header, directIo: true }, descriptor }, { hostCaps: { ...hostCaps, directIo: false } });
    expect(v.ok).toBe(true);
    expect(v.notes[0]).toMatch(/buffered/);
  });
});
