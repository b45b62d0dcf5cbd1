import { describe, expect, it } from 'vitest';
import { HostAnnouncement, RestoreRequest, SaveRequest } from '@vmsave/contracts';
import {
  admitRestore,
  admitSave,
  checkImagePath,
  chooseFormat,
  defaultDeadlineMs,
  pickNext,
  placeReplicatedRestore,
  retryDelayMs,
  type HostView,
  type KnownImage,
  type QueuedJob,
} from './policy.ts';

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
  it('refuses an image its retention deleted (image-deleted), unless a copy is on the bus', () => {
    const deleted = { at: '2026-12-04T00:00:00Z', rule: 'keep-last', host: 'a' };
    const gone = [{ ...known[0]!, deleted }];
    expect(admitRestore(req({ image: 'vm.vmsave' }), hosts, gone, opts)).toMatchObject({ rule: 'image-deleted', field: 'image' });
    expect(admitRestore(req({ image: 'vm.vmsave', host: 'a' }), hosts, gone, opts)).toMatchObject({ rule: 'image-deleted', message: expect.stringContaining('keep-last') });
    // Its copy on the bus: the writer fetches it back.
    expect(admitRestore(req({ image: 'vm.vmsave' }), hosts, [{ ...gone[0]!, replicated: true }], opts)).toMatchObject({ host: 'a', sourceJobId: 's-1' });
  });
  it('refuses an unknown host (host-exists) and a hostile path (image-path)', () => {
    expect(admitRestore(req({ image: 'x', host: 'zz' }), hosts, known, opts)).toMatchObject({ rule: 'host-exists', field: 'host' });
    expect(admitRestore(req({ image: '../../x', host: 'a' }), hosts, known, opts)).toMatchObject({ rule: 'image-path' });
  });
});

describe('admitRestore of a replicated image (restore anywhere)', () => {
  const req = (o: Record<string, unknown>) => RestoreRequest.parse({ requestId: 'r', ...o });
  const img = (o: Partial<KnownImage> = {}): KnownImage => ({ host: 'a', imagePath: '/srv/a/images/vm.vmsave', vm: 'a-vm', jobId: 's-1', verified: true, replicated: true, ...o });
  const offlineA = () => host('a', {}, now - 120_000);
  it('given a replicated image written on a, when the restore names host b, then it goes to b under the VM lease with the save as its source', () => {
    const hosts = new Map([
      ['a', host('a')],
      ['b', host('b')],
    ]);
    expect(admitRestore(req({ image: 'vm.vmsave', host: 'b' }), hosts, [img()], opts)).toEqual({ host: 'b', imageRel: 'vm.vmsave', vm: 'a-vm', sourceJobId: 's-1' });
  });
  it('given an image that was not replicated, when the restore names another host, then it is admitted there by image only (no VM, no source)', () => {
    const hosts = new Map([
      ['a', host('a')],
      ['b', host('b')],
    ]);
    const adm = admitRestore(req({ image: 'vm.vmsave', host: 'b' }), hosts, [img({ replicated: false })], opts);
    expect(adm).toEqual({ host: 'b', imageRel: 'vm.vmsave', vm: undefined, sourceJobId: undefined });
  });
  it('given the writer offline and the image replicated, when no host is named, then an online host is picked', () => {
    const hosts = new Map([
      ['a', offlineA()],
      ['b', host('b')],
    ]);
    expect(admitRestore(req({ image: 'vm.vmsave' }), hosts, [img()], opts)).toEqual({ host: 'b', imageRel: 'vm.vmsave', vm: 'a-vm', sourceJobId: 's-1' });
  });
  it('given the writer offline and the image not replicated, then the refusal names the writer and replication', () => {
    const hosts = new Map([
      ['a', offlineA()],
      ['b', host('b')],
    ]);
    const r = admitRestore(req({ image: 'vm.vmsave' }), hosts, [img({ replicated: false })], opts);
    expect(r).toMatchObject({ rule: 'host-online', field: 'host' });
    expect('message' in r && r.message).toMatch(/^host: a, which wrote "vm\.vmsave", .*not replicated.*replicate: bus/);
  });
  it('given the writer online, then the restore stays on the writer even when replicated', () => {
    const hosts = new Map([
      ['a', host('a')],
      ['b', host('b')],
    ]);
    expect(admitRestore(req({ image: 'vm.vmsave' }), hosts, [img()], opts)).toMatchObject({ host: 'a' });
  });
  it("given the image named by its path in the writer's image directory (SaveCompleted.imagePath), then another host gets its name inside the image directory for the work item", () => {
    const hosts = new Map([
      ['a', offlineA()],
      ['b', host('b')],
    ]);
    const abs = '/srv/a/images/vm.vmsave';
    const want = { host: 'b', imageRel: 'vm.vmsave', vm: 'a-vm', sourceJobId: 's-1', imageOnHost: 'vm.vmsave' };
    expect(admitRestore(req({ image: abs, host: 'b' }), hosts, [img()], opts)).toEqual(want);
    expect(admitRestore(req({ image: abs }), hosts, [img()], opts)).toEqual(want);
    // Not replicated: that path is not b's to read.
    expect(admitRestore(req({ image: abs, host: 'b' }), hosts, [img({ replicated: false })], opts)).toMatchObject({
      rule: 'image-path',
      message: expect.stringContaining('outside'),
    });
  });
  it('given a shared image directory online, then it is preferred over fetching the replica', () => {
    const hosts = new Map([
      ['a', offlineA()],
      ['b', host('b')],
      ['c', host('c', { sharedImageDir: true })],
    ]);
    expect(admitRestore(req({ image: 'vm.vmsave' }), hosts, [img()], opts)).toMatchObject({ host: 'c' });
  });
});

describe('placeReplicatedRestore', () => {
  const img = (o: Partial<KnownImage> = {}): KnownImage => ({ host: 'a', imagePath: '/srv/a/images/vm.vmsave', vm: 'a-vm', jobId: 's-1', verified: true, replicated: true, ...o });
  const name = (r: HostView | { rule: string }) => ('rule' in r ? r.rule : r.announcement.host);
  const load = (jobs: Record<string, number>, limit = 2) => ({ jobsOf: (h: string) => jobs[h] ?? 0, limitOf: () => limit });
  it('prefers a host below its job limit, then the least loaded, then by name', () => {
    const hosts = new Map([
      ['a', host('a', {}, now - 120_000)],
      ['b', host('b')],
      ['c', host('c')],
      ['d', host('d')],
    ]);
    expect(name(placeReplicatedRestore(img(), hosts, { ...opts, load: load({ b: 2, c: 1, d: 1 }) }))).toBe('c');
    expect(name(placeReplicatedRestore(img(), hosts, { ...opts, load: load({ b: 0, c: 1 }) }))).toBe('b');
    // Every host at its limit: the job still queues on the least loaded one (pickNext keeps the limit).
    expect(name(placeReplicatedRestore(img(), hosts, { ...opts, load: load({ b: 3, c: 2, d: 4 }) }))).toBe('c');
    expect(name(placeReplicatedRestore(img(), hosts, opts))).toBe('b');
  });
  it('skips offline hosts and hosts that cannot take the image (space by its size or its VM memory, quota, mapped-ram, machine, VM running)', () => {
    const base = [['a', host('a', {}, now - 120_000)] as const];
    const only = (h: HostView, i: KnownImage = img()) => name(placeReplicatedRestore(i, new Map([...base, ['b', h]]), opts));
    expect(only(host('b', {}, now - 120_000))).toBe('host-online');
    expect(only(host('b', { freeBytes: 512 * 1024 ** 2 }))).toBe('host-online'); // the writer announced a-vm with 1 GiB
    expect(only(host('b', { freeBytes: 512 * 1024 ** 2 }), img({ bytes: 256 * 1024 ** 2 }))).toBe('b');
    expect(only(host('b', { imageQuotaBytes: 1024 ** 3, imageUsedBytes: 900 * 1024 ** 2 }))).toBe('host-online');
    const old = { version: '8.2', mappedRam: false, directIo: false, machines: ['q35'], accel: 'tcg' as const };
    expect(only(host('b', { qemu: old }), img({ format: 'sparse' }))).toBe('host-online');
    expect(only(host('b', { qemu: old }), img({ format: 'legacy' }))).toBe('b');
    expect(only(host('b', { qemu: { ...old, machines: ['pc'] } }), img({ format: 'legacy' }))).toBe('host-online');
    expect(only(host('b', { vms: [{ name: 'a-vm', uuid: 'u', machine: 'q35', memoryMiB: 1024, vcpus: 1, status: 'running' }] }))).toBe('host-online');
    expect(only(host('b', { vms: [{ name: 'a-vm', uuid: 'u', machine: 'q35', memoryMiB: 1024, vcpus: 1, status: 'stopped' }] }))).toBe('b');
  });
  it('names each unfit host and why in the refusal', () => {
    const hosts = new Map([
      ['a', host('a', {}, now - 120_000)],
      ['b', host('b', { freeBytes: 0 })],
    ]);
    const r = placeReplicatedRestore(img(), hosts, opts);
    expect(r).toMatchObject({
      rule: 'host-online',
      field: 'host',
      message: expect.stringMatching(/replicated but no online host can restore it \(b: 0 B free in \/srv\/b\/images/),
    });
    expect(placeReplicatedRestore(img(), new Map([['a', host('a', {}, now - 120_000)]]), opts)).toMatchObject({ message: expect.stringContaining('no other host is online') });
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
