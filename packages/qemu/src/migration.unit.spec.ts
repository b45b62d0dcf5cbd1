import { describe, expect, it } from 'vitest';
import { QemuError, QemuInvalidArgumentError, QemuUnsupportedError } from './errors.ts';
import { buildMigrationUri, incomingFailureReason, planMigration, stderrErrors, toProgress, type MigrationSupport } from './migration.ts';

const QEMU_10: MigrationSupport = {
  capabilities: new Map([
    ['events', false],
    ['multifd', false],
    ['mapped-ram', false],
    ['background-snapshot', false],
    ['xbzrle', false],
  ]),
  parameters: { 'max-bandwidth': 134217728, 'multifd-channels': 2, 'direct-io': false, 'multifd-compression': 'none' },
};

const fds = { buffered: 10 };

describe('planMigration', () => {
  it('legacy save: events on, mapped-ram and multifd off, unlimited bandwidth, direct-io off, channels untouched', () => {
    const plan = planMigration('save', { format: 'legacy', offset: 0x1000, fds }, QEMU_10);
    expect(plan.capabilities).toEqual([
      { capability: 'events', state: true },
      { capability: 'mapped-ram', state: false },
      { capability: 'multifd', state: false },
    ]);
    expect(plan.parameters).toEqual({ 'max-bandwidth': 0, 'direct-io': false });
    expect(plan.preParameters).toEqual({});
    expect(plan.channels).toBe(1);
  });

  it('a save bandwidth cap is passed as max-bandwidth; a negative or fractional one is refused', () => {
    expect(planMigration('save', { format: 'legacy', offset: 0, fds, maxBandwidth: 32 * 2 ** 20 }, QEMU_10).parameters['max-bandwidth']).toBe(32 * 2 ** 20);
    expect(() => planMigration('save', { format: 'legacy', offset: 0, fds, maxBandwidth: -1 }, QEMU_10)).toThrow(/maxBandwidth/);
    expect(() => planMigration('save', { format: 'legacy', offset: 0, fds, maxBandwidth: 1.5 }, QEMU_10)).toThrow(/maxBandwidth/);
  });

  it('live save: downtime-limit set (default 100 ms), auto-converge switched off when on; a bad limit is refused; a restore ignores live', () => {
    const withAuto: MigrationSupport = { ...QEMU_10, capabilities: new Map([...QEMU_10.capabilities, ['auto-converge', true]]) };
    const plan = planMigration('save', { format: 'sparse', offset: 0, fds, live: {} }, withAuto);
    expect(plan.parameters['downtime-limit']).toBe(100);
    expect(plan.capabilities).toContainEqual({ capability: 'auto-converge', state: false });
    expect(planMigration('save', { format: 'sparse', offset: 0, fds, live: { downtimeLimitMs: 250 } }, QEMU_10).parameters['downtime-limit']).toBe(250);
    expect(planMigration('save', { format: 'sparse', offset: 0, fds }, QEMU_10).parameters['downtime-limit']).toBeUndefined();
    expect(planMigration('restore', { format: 'sparse', offset: 0, fds, live: {} }, QEMU_10).parameters['downtime-limit']).toBeUndefined();
    expect(() => planMigration('save', { format: 'sparse', offset: 0, fds, live: { downtimeLimitMs: 0 } }, QEMU_10)).toThrow(/live.downtimeLimitMs/);
    expect(() => planMigration('save', { format: 'sparse', offset: 0, fds, live: { maxPasses: 0 } }, QEMU_10)).toThrow(/live.maxPasses/);
  });

  it('sparse save: mapped-ram + multifd on, 1 channel unless asked (like libvirt)', () => {
    const plan = planMigration('save', { format: 'sparse', offset: 0, fds }, QEMU_10);
    expect(plan.capabilities).toContainEqual({ capability: 'mapped-ram', state: true });
    expect(plan.capabilities).toContainEqual({ capability: 'multifd', state: true });
    expect(plan.parameters).toEqual({ 'max-bandwidth': 0, 'multifd-channels': 1, 'direct-io': false });
    expect(planMigration('save', { format: 'sparse', offset: 0, fds, channels: 4 }, QEMU_10).parameters['multifd-channels']).toBe(4);
  });

  it('restore: same capabilities, no bandwidth parameter', () => {
    const plan = planMigration('restore', { format: 'sparse', offset: 0, fds: { buffered: 3, direct: 4 }, directIo: true }, QEMU_10);
    expect(plan.parameters).toEqual({ 'multifd-channels': 1, 'direct-io': true });
    expect(plan.directIo).toBe(true);
  });

  it('refuses direct IO without sparse, and without the O_DIRECT fd (QEMU would crash)', () => {
    expect(() => planMigration('save', { format: 'legacy', offset: 0, fds: { buffered: 3, direct: 4 }, directIo: true }, QEMU_10)).toThrow(QemuInvalidArgumentError);
    expect(() => planMigration('save', { format: 'sparse', offset: 0, fds, directIo: true }, QEMU_10)).toThrow(/both fds/);
  });

  it('refuses bad offsets and channel counts', () => {
    for (const offset of [-1, 1.5, Number.NaN, 2 ** 60]) {
      expect(() => planMigration('save', { format: 'legacy', offset, fds }, QEMU_10)).toThrow(QemuInvalidArgumentError);
    }
    for (const channels of [0, 256, 1.5]) {
      expect(() => planMigration('save', { format: 'sparse', offset: 0, fds, channels }, QEMU_10)).toThrow(/channels/);
    }
  });

  it('refuses sparse on a QEMU without mapped-ram and direct IO without the direct-io parameter', () => {
    const old: MigrationSupport = {
      capabilities: new Map([
        ['events', false],
        ['multifd', false],
      ]),
      parameters: { 'max-bandwidth': 1 },
    };
    const error = (() => {
      try {
        planMigration('save', { format: 'sparse', offset: 0, fds }, old);
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(QemuUnsupportedError);
    expect(error).toBeInstanceOf(QemuError);
    expect(error).toMatchObject({ code: 'UNSUPPORTED', retryable: false, stage: 'prepare' });
    const noDirect = { ...QEMU_10, parameters: { 'max-bandwidth': 1 } };
    expect(() => planMigration('save', { format: 'sparse', offset: 0, fds: { buffered: 3, direct: 4 }, directIo: true }, noDirect)).toThrow(QemuUnsupportedError);
    // legacy on an old QEMU leaves the missing capabilities alone
    expect(planMigration('save', { format: 'legacy', offset: 0, fds }, old).capabilities).toEqual([
      { capability: 'events', state: true },
      { capability: 'multifd', state: false },
    ]);
  });

  it('switches off capabilities that break file migration, and compression before mapped-ram goes on', () => {
    const dirty: MigrationSupport = {
      capabilities: new Map([...QEMU_10.capabilities, ['background-snapshot', true], ['xbzrle', true]]),
      parameters: { ...QEMU_10.parameters, 'multifd-compression': 'zstd' },
    };
    const plan = planMigration('save', { format: 'sparse', offset: 0, fds }, dirty);
    expect(plan.capabilities).toContainEqual({ capability: 'background-snapshot', state: false });
    expect(plan.capabilities).toContainEqual({ capability: 'xbzrle', state: false });
    expect(plan.preParameters).toEqual({ 'multifd-compression': 'none' });
    expect(plan.parameters).not.toHaveProperty('multifd-compression');
  });
});

describe('buildMigrationUri', () => {
  it('names the fdset and the stream offset in hex', () => {
    expect(buildMigrationUri(3, 0x105a9)).toBe('file:/dev/fdset/3,offset=0x105a9');
    expect(buildMigrationUri(0, 0)).toBe('file:/dev/fdset/0,offset=0x0');
  });
});

describe('toProgress', () => {
  it('reads ram counters, defaulting to 0 when a restoring QEMU reports none', () => {
    expect(toProgress('save', { status: 'active', ram: { total: 100, transferred: 40, remaining: 60, mbps: 8.5, normal: 9, duplicate: 16 } }, 12)).toEqual({
      direction: 'save',
      status: 'active',
      total: 100,
      transferred: 40,
      remaining: 60,
      mbps: 8.5,
      normal: 9,
      duplicate: 16,
      elapsedMs: 12,
    });
    expect(toProgress('restore', { status: 'completed' }, 3)).toMatchObject({ status: 'completed', total: 0, transferred: 0 });
    expect(toProgress('restore', {}, 0).status).toBe('none');
  });
});

describe('failure reasons from stderr', () => {
  const stderr = [
    "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]",
    'qemu-system-x86_64: Capability mapped-ram is on, but received capability is off',
    'qemu-system-x86_64: load of migration failed: Invalid argument',
    '',
  ].join('\n');

  it('keeps error lines, drops warnings and the program prefix', () => {
    expect(stderrErrors(stderr)).toEqual(['Capability mapped-ram is on, but received capability is off', 'load of migration failed: Invalid argument']);
  });

  it('puts the cause QEMU printed before its generic error-desc', () => {
    expect(incomingFailureReason('load of migration failed: Invalid argument', stderr)).toBe(
      'Capability mapped-ram is on, but received capability is off; load of migration failed: Invalid argument',
    );
    expect(incomingFailureReason('load of migration failed: Invalid argument', stderr.split('\n').slice(0, 2).join('\n'))).toBe(
      'Capability mapped-ram is on, but received capability is off; load of migration failed: Invalid argument',
    );
    expect(incomingFailureReason('x', undefined)).toBe('x');
  });
});
