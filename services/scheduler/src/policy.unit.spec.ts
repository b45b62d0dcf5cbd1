import { describe, expect, it } from 'vitest';
import { HostAnnouncement, RestoreRequest, SaveRequest } from '@vmsave/contracts';
import { admitRestore, admitSave, checkImagePath, chooseFormat, defaultDeadlineMs, pickNext, retryDelayMs, type HostView, type QueuedJob } from './policy.ts';

const now = Date.parse('2026-01-01T00:00:00Z');
const opts = { nowMs: now, hostOfflineMs: 30_000 };
const host = (name: string, over: Partial<HostAnnouncement> = {}, lastSeenMs = now): HostView => ({
  lastSeenMs,
  announcement: HostAnnouncement.parse({
    host: name,
    executorId: 'e',
    at: new Date(now).toISOString(),
    startedAt: new Date(now).toISOString(),
    qemu: { version: '10.0.2', mappedRam: true, directIo: true, machines: ['pc-q35-10.0', 'q35'], accel: 'kvm' },
    imageDir: `/srv/${name}/images`,
    freeBytes: 100 * 1024 ** 3,
    vms: [{ name: `${name}-vm`, uuid: 'u', machine: 'q35', memoryMiB: 1024, vcpus: 1, status: 'running' }],
    ...over,
  }),
});
const save = (o: Record<string, unknown> = {}) => SaveRequest.parse({ requestId: 'r', vm: 'a-vm', ...o });

describe('admitSave', () => {
  const hosts = [host('a'), host('b')];
  it('given the VM on host a, then the job goes to host a with the resolved format', () => {
    expect(admitSave(save(), hosts, opts)).toMatchObject({ host: 'a', format: 'sparse', ramBytes: 1024 ** 3 });
    expect(admitSave(save({ vm: 'b-vm', format: 'legacy' }), hosts, opts)).toMatchObject({ host: 'b', format: 'legacy' });
  });
  it('refuses an unknown VM (vm-exists)', () => {
    expect(admitSave(save({ vm: 'nope' }), hosts, opts)).toMatchObject({ rule: 'vm-exists', field: 'vm' });
  });
  it('refuses a VM whose host went silent (host-online)', () => {
    expect(admitSave(save(), [host('a', {}, now - 60_000)], opts)).toMatchObject({ rule: 'host-online' });
  });
  it('refuses a VM with no QEMU running (vm-running)', () => {
    const h = host('a', { vms: [{ name: 'a-vm', uuid: 'u', machine: 'q35', memoryMiB: 64, vcpus: 1, status: 'stopped' }] });
    expect(admitSave(save(), [h], opts)).toMatchObject({ rule: 'vm-running' });
  });
  it('refuses sparse on a QEMU without mapped-ram, direct IO without direct-io (format-supported, direct-io-supported)', () => {
    const old = host('a', { qemu: { version: '8.2', mappedRam: false, directIo: false, machines: [], accel: 'tcg' } });
    expect(admitSave(save({ format: 'sparse' }), [old], opts)).toMatchObject({ rule: 'format-supported', field: 'format' });
    expect(admitSave(save(), [old], opts)).toMatchObject({ format: 'legacy' });
    const noDio = host('a', { qemu: { version: '9.0', mappedRam: true, directIo: false, machines: [], accel: 'kvm' } });
    expect(admitSave(save({ directIo: true }), [noDio], opts)).toMatchObject({ rule: 'direct-io-supported', field: 'directIo' });
  });
  it('refuses legacy with direct IO or several channels', () => {
    expect(admitSave(save({ format: 'legacy', directIo: true }), hosts, opts)).toMatchObject({ rule: 'direct-io-needs-sparse', field: 'directIo' });
    expect(admitSave(save({ format: 'legacy', channels: 4 }), hosts, opts)).toMatchObject({ rule: 'channels-need-sparse', field: 'channels' });
  });
  it('refuses an image path escaping the image directory (image-path)', () => {
    expect(admitSave(save({ image: '../etc/passwd' }), hosts, opts)).toMatchObject({ rule: 'image-path', field: 'image' });
    expect(admitSave(save({ image: '/etc/passwd' }), hosts, opts)).toMatchObject({ rule: 'image-path', message: expect.stringContaining('outside') });
    expect(admitSave(save({ image: '/srv/a/images/x.vmsave' }), hosts, opts)).toMatchObject({ host: 'a' });
  });
  it('refuses when the image directory lacks room for the worst case (free-space)', () => {
    const full = host('a', { freeBytes: 512 * 1024 ** 2 });
    expect(admitSave(save(), [full], opts)).toMatchObject({ rule: 'free-space', message: expect.stringContaining('needs up to') });
  });
  it('auto picks sparse when direct IO is asked', () => {
    expect(chooseFormat({ format: 'auto', channels: 1, directIo: true }, host('a').announcement)).toEqual({ format: 'sparse' });
  });
});

describe('checkImagePath', () => {
  it.each([
    ['x.vmsave', 'x.vmsave'],
    ['sub/x.vmsave', 'sub/x.vmsave'],
    ['/d/sub/x', 'sub/x'],
    ['./x', 'x'],
  ])('accepts %s as %s', (p, rel) => expect(checkImagePath(p, '/d')).toEqual({ rel }));
  it.each(['../x', 'a/../../x', '/e/x', '/d/../x', 'a\nb', 'a\0b', '.', '/d'])('refuses %j', (p) => expect(checkImagePath(p, '/d')).toMatchObject({ rule: 'image-path' }));
});

describe('admitRestore', () => {
  const hosts = new Map([
    ['a', host('a')],
    ['b', host('b', { sharedImageDir: true })],
  ]);
  const known = [{ host: 'a', imagePath: '/srv/a/images/vm.vmsave', vm: 'a-vm', jobId: 's-1', verified: true }];
  const req = (o: Record<string, unknown>) => RestoreRequest.parse({ requestId: 'r', ...o });
  it('sends a restore to the host that wrote the image, known from the log', () => {
    expect(admitRestore(req({ image: 'vm.vmsave' }), hosts, known, opts)).toMatchObject({ host: 'a', imageRel: 'vm.vmsave', vm: 'a-vm', sourceJobId: 's-1' });
  });
  it('falls back to a host with a shared image directory when the writer is offline', () => {
    const h = new Map([
      ['a', host('a', {}, now - 120_000)],
      ['b', host('b', { sharedImageDir: true })],
    ]);
    expect(admitRestore(req({ image: 'vm.vmsave' }), h, known, opts)).toMatchObject({ host: 'b' });
  });
  it('refuses an image nobody wrote unless a host is named (image-known)', () => {
    expect(admitRestore(req({ image: 'other.vmsave' }), hosts, known, opts)).toMatchObject({ rule: 'image-known', field: 'image' });
    expect(admitRestore(req({ image: 'other.vmsave', host: 'b' }), hosts, known, opts)).toMatchObject({ host: 'b', imageRel: 'other.vmsave' });
  });
  it('refuses an unknown host (host-exists) and a hostile path (image-path)', () => {
    expect(admitRestore(req({ image: 'x', host: 'zz' }), hosts, known, opts)).toMatchObject({ rule: 'host-exists', field: 'host' });
    expect(admitRestore(req({ image: '../../x', host: 'a' }), hosts, known, opts)).toMatchObject({ rule: 'image-path' });
  });
});

describe('pickNext', () => {
  const j = (jobId: string, o: Partial<QueuedJob> = {}): QueuedJob => ({ jobId, host: 'a', vm: jobId, priority: 'normal', requestedAtMs: 0, ...o });
  const limit = () => 2;
  it('never exceeds the per-host limit, counting running jobs', () => {
    const out = pickNext([j('1'), j('2'), j('3')], new Map([['a', 1]]), new Set(), limit, now);
    expect(out.map((x) => x.jobId)).toEqual(['1']);
  });
  it('serves high first, then first come first served', () => {
    const out = pickNext([j('1', { requestedAtMs: 1 }), j('2', { requestedAtMs: 2 }), j('3', { priority: 'high', requestedAtMs: 3 })], new Map(), new Set(), limit, now);
    expect(out.map((x) => x.jobId)).toEqual(['3', '1']);
  });
  it('holds low jobs while others are queued for the host', () => {
    expect(pickNext([j('1', { priority: 'low' }), j('2')], new Map([['a', 1]]), new Set(), limit, now).map((x) => x.jobId)).toEqual(['2']);
    expect(pickNext([j('1', { priority: 'low' })], new Map(), new Set(), limit, now).map((x) => x.jobId)).toEqual(['1']);
  });
  it('runs one job per VM at a time', () => {
    const out = pickNext([j('1', { vm: 'v' }), j('2', { vm: 'v' })], new Map(), new Set(), limit, now);
    expect(out.map((x) => x.jobId)).toEqual(['1']);
    expect(pickNext([j('1', { vm: 'v' })], new Map(), new Set(['v']), limit, now)).toEqual([]);
  });
  it('waits for a retry backoff', () => {
    expect(pickNext([j('1', { notBeforeMs: now + 1 })], new Map(), new Set(), limit, now)).toEqual([]);
  });
  it('limits are per host', () => {
    const out = pickNext([j('1'), j('2'), j('3'), j('4', { host: 'b' })], new Map(), new Set(), limit, now);
    expect(out.map((x) => x.jobId)).toEqual(['1', '2', '4']);
  });
});

describe('retry and deadline policies', () => {
  it('backs off exponentially with a cap', () => {
    expect([2, 3, 4, 5, 9].map((a) => retryDelayMs(a, 1000, 5000))).toEqual([1000, 2000, 4000, 5000, 5000]);
  });
  it('derives a deadline from RAM and throughput', () => {
    expect(defaultDeadlineMs(1024 ** 3, 1024 ** 3)).toBe(63_000);
    expect(defaultDeadlineMs(100 * 1024 ** 2, undefined)).toBe(63_000);
  });
});
