import { describe, expect, it } from 'vitest';
import { QemuInvalidArgumentError } from './errors.ts';
import { qemuOptValue } from './process.ts';
import { buildVmArgs, type VmDefinition } from './vm.ts';

const def: VmDefinition = {
  name: 'web,1',
  uuid: '6a1f2c64-8f0e-4d5b-9a3c-2b7e1d0c9f11',
  machine: 'pc-q35-10.0',
  memoryMiB: 256,
  vcpus: 2,
  args: ['-device', 'virtio-rng-pci'],
};

describe('buildVmArgs', () => {
  it('builds a minimal, defaults-free command line and appends the extra args', () => {
    expect(buildVmArgs(def, { accel: 'kvm' })).toEqual([
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-name',
      'guest=web,,1',
      '-uuid',
      def.uuid,
      '-machine',
      'pc-q35-10.0,accel=kvm',
      '-m',
      '256M',
      '-smp',
      '2',
      '-device',
      'virtio-rng-pci',
    ]);
  });

  it('adds -S and -incoming defer when asked', () => {
    const args = buildVmArgs(def, { accel: 'tcg', startPaused: true, incoming: 'defer' });
    expect(args).toContain('pc-q35-10.0,accel=tcg');
    expect(args.slice(-5)).toEqual(['-S', '-incoming', 'defer', '-device', 'virtio-rng-pci']);
  });

  it('starts an incoming QEMU paused even when not asked (a live image would otherwise run on load)', () => {
    const args = buildVmArgs(def, { accel: 'kvm', incoming: 'defer' });
    expect(args.slice(-5)).toEqual(['-S', '-incoming', 'defer', '-device', 'virtio-rng-pci']);
    expect(buildVmArgs(def, { accel: 'kvm' })).not.toContain('-S');
  });

  it('refuses definitions QEMU would misparse', () => {
    for (const bad of [{ uuid: 'not-a-uuid' }, { machine: 'q35,accel=tcg' }, { memoryMiB: 0 }, { vcpus: 1.5 }, { name: '' }]) {
      expect(() => buildVmArgs({ ...def, ...bad }, { accel: 'kvm' })).toThrow(QemuInvalidArgumentError);
    }
  });
});

describe('qemuOptValue', () => {
  it('doubles commas', () => {
    expect(qemuOptValue('/run/a,b/qmp.sock')).toBe('/run/a,,b/qmp.sock');
  });
});
