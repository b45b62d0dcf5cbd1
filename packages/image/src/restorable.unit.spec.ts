import { describe, expect, it } from 'vitest';
import { ImageDescriptor } from './descriptor.ts';
import type { ImageHeader } from './header.ts';
import { checkRestorable, cpuOf } from './restorable.ts';

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
    // QEMU 8.2 is also older than the image's 10.0.2.
    expect(v.refusals.map((r) => r.code)).toEqual(['format', 'machine-unknown', 'qemu-version']);
    expect(v.refusals[0]!.message).toMatch(/mapped-ram/);
  });

  it('notes (does not refuse) direct I/O that the host lacks', () => {
    const v = checkRestorable({ header: { ...header, directIo: true }, descriptor }, { hostCaps: { ...hostCaps, directIo: false } });
    expect(v.ok).toBe(true);
    expect(v.notes[0]).toMatch(/buffered/);
  });

  describe('on another host (the compatibility gate)', () => {
    const withArgs = (args: string[]) => ({ ...descriptor.vm, args });

    it('qemu.version: refuses an image from a newer QEMU than the host has, naming both versions', () => {
      const v = checkRestorable({ header, descriptor: { ...descriptor, qemu: { ...descriptor.qemu, version: '10.1.0' } } }, { hostCaps: { ...hostCaps, version: '9.2.0' } });
      expect(v.refusals.map((r) => r.code)).toEqual(['qemu-version']);
      expect(v.refusals[0]!.message).toMatch(/^qemu\.version: image written by QEMU 10\.1\.0, host has 9\.2\.0/);
    });

    it('qemu.version: accepts the same or a newer QEMU on the host', () => {
      expect(checkRestorable({ header, descriptor }, { hostCaps: { ...hostCaps, version: '10.0.2' } }).ok).toBe(true);
      expect(checkRestorable({ header, descriptor }, { hostCaps: { ...hostCaps, version: '10.1.0' } }).ok).toBe(true);
      expect(checkRestorable({ header, descriptor: { ...descriptor, qemu: { ...descriptor.qemu, version: '9.2.4' } } }, { hostCaps: { ...hostCaps, version: '10.0.0' } }).ok).toBe(
        true,
      );
    });

    it('qemu.version: a version that cannot be compared is a note, not a refusal', () => {
      const v = checkRestorable({ header, descriptor: { ...descriptor, qemu: { ...descriptor.qemu, version: 'git-master' } } }, { hostCaps });
      expect(v.ok).toBe(true);
      expect(v.notes[0]).toMatch(/qemu\.version: cannot compare/);
    });

    it('machine: refuses a machine type the host QEMU does not know', () => {
      const v = checkRestorable({ header, descriptor }, { hostCaps: { ...hostCaps, machines: ['pc-q35-9.2', 'q35'] } });
      expect(v.refusals.map((r) => r.code)).toEqual(['machine-unknown']);
      expect(v.refusals[0]!.message).toMatch(/pc-q35-10\.0/);
    });

    it('cpu.model: refuses -cpu host without KVM, and a model the host does not list', () => {
      const tcg = checkRestorable({ header, descriptor }, { definition: withArgs(['-cpu', 'host']), hostCaps: { ...hostCaps, accel: 'tcg' } });
      expect(tcg.refusals.map((r) => r.code)).toEqual(['cpu-model']);
      expect(tcg.refusals[0]!.message).toMatch(/^cpu\.model: .*-cpu host.*KVM/);
      const unknown = checkRestorable(
        { header, descriptor },
        { definition: withArgs(['-cpu', 'Sapphirerapids-v2,+avx512f']), hostCaps: { ...hostCaps, cpuModels: ['qemu64', 'Skylake-Server'] } },
      );
      expect(unknown.refusals.map((r) => r.code)).toEqual(['cpu-model']);
      expect(unknown.refusals[0]!.message).toMatch(/Sapphirerapids-v2/);
    });

    it('cpu.model: accepts a listed model, and any model when the host lists none', () => {
      expect(checkRestorable({ header, descriptor }, { definition: withArgs(['-cpu', 'Skylake-Server']), hostCaps: { ...hostCaps, cpuModels: ['Skylake-Server'] } }).ok).toBe(true);
      expect(checkRestorable({ header, descriptor }, { definition: withArgs(['-cpu', 'Skylake-Server']), hostCaps }).ok).toBe(true);
      expect(checkRestorable({ header, descriptor }, { definition: withArgs(['-cpu', 'host']), hostCaps }).ok).toBe(true);
    });

    it('cpu.flags: refuses flags the VM turns on that the host lacks, when the host lists its flags', () => {
      const def = withArgs(['-cpu', 'max,+avx512f,sse4_2=on,-hle,pmu=off']);
      const v = checkRestorable({ header, descriptor }, { definition: def, hostCaps: { ...hostCaps, cpuFlags: ['sse4.2', 'avx2'] } });
      expect(v.refusals.map((r) => r.code)).toEqual(['cpu-flags']);
      expect(v.refusals[0]!.message).toMatch(/^cpu\.flags: .*avx512f/);
      expect(v.refusals[0]!.message).not.toMatch(/sse4_2|hle|pmu/);
      expect(checkRestorable({ header, descriptor }, { definition: def, hostCaps: { ...hostCaps, cpuFlags: ['sse4_2', 'avx512f'] } }).ok).toBe(true);
      expect(checkRestorable({ header, descriptor }, { definition: def, hostCaps }).ok).toBe(true);
    });

    it('memoryMiB: refuses a VM larger than the host memory, when known', () => {
      const v = checkRestorable({ header, descriptor }, { hostCaps: { ...hostCaps, memoryMiB: 2048 } });
      expect(v.refusals.map((r) => r.code)).toEqual(['host-memory']);
      expect(v.refusals[0]!.message).toMatch(/^memoryMiB: .*4096 MiB.*2048 MiB/);
      expect(checkRestorable({ header, descriptor }, { hostCaps: { ...hostCaps, memoryMiB: 4096 } }).ok).toBe(true);
    });

    it('cpuOf reads the last -cpu of the arguments', () => {
      expect(cpuOf(['-m', '64'])).toBeUndefined();
      expect(cpuOf(['-cpu', 'qemu64', '-device', 'x', '-cpu', 'Haswell,+aes,vmx=on,-x2apic'])).toEqual({ model: 'Haswell', flags: ['aes', 'vmx'] });
    });
  });
});
