import { describe, expect, it } from 'vitest';
import { HostAnnouncement, SaveRequest } from '@vmsave/contracts';
import { admitSave, requiredFreeBytes, type HostView } from './policy.ts';

const now = Date.parse('2026-01-01T00:00:00Z');
const opts = { nowMs: now, hostOfflineMs: 30_000 };
const GiB = 1024 ** 3;
const host = (over: Partial<HostAnnouncement>): HostView => ({
  lastSeenMs: now,
  announcement: HostAnnouncement.parse({
    host: 'a',
    executorId: 'e',
    at: new Date(now).toISOString(),
    startedAt: new Date(now).toISOString(),
    qemu: { version: '10.0.2', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
    imageDir: '/srv/a/images',
    freeBytes: 100 * GiB,
    vms: [{ name: 'a-vm', uuid: 'u', machine: 'q35', memoryMiB: 1024, vcpus: 1, status: 'running' }],
    ...over,
  }),
});
const save = SaveRequest.parse({ requestId: 'r', vm: 'a-vm' });

describe('admitSave: the image directory quota (rule quota)', () => {
  const need = requiredFreeBytes('sparse', GiB);
  it('refuses a save that would pass the quota, naming the quota and the current use', () => {
    const r = admitSave(save, [host({ imageQuotaBytes: 10 * GiB, imageUsedBytes: 10 * GiB - need + 1 })], opts);
    expect(r).toMatchObject({ rule: 'quota', field: 'vm' });
    expect((r as { message: string }).message).toMatch(/quota of 10\.00 GiB and uses 8\.94 GiB; a sparse save of a-vm .* needs up to 1\.06 GiB/);
  });
  it('admits a save that fits, and any save on a host without a quota', () => {
    expect(admitSave(save, [host({ imageQuotaBytes: 10 * GiB, imageUsedBytes: 10 * GiB - need })], opts)).toMatchObject({ host: 'a' });
    expect(admitSave(save, [host({})], opts)).toMatchObject({ host: 'a' });
  });
});
