import { describe, expect, it } from 'vitest';
import { HostAnnouncement, makeEvent, RestoreRequest, SaveRequest } from '@vmsave/contracts';
import { evolve, initialState, type JobState } from '@vmsave/jobs';
import { imageLeaseKey } from './policy.ts';
import { SchedulerState } from './state.ts';

const now = new Date().toISOString();
const announcement = HostAnnouncement.parse({
  host: 'hv-1',
  executorId: 'executor@hv-1',
  at: now,
  startedAt: now,
  qemu: { version: '10.1.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
  imageDir: '/var/lib/vmsave',
  freeBytes: 1024 ** 3,
  maxConcurrentJobs: 2,
  vms: [],
});

function restore(jobId: string, image: string, vm?: string): JobState {
  return { ...initialState(), jobId, kind: 'restore', status: 'scheduled', host: 'hv-1', vm, restoreRequest: RestoreRequest.parse({ requestId: jobId, image, host: 'hv-1' }) };
}

describe('SchedulerState.leaseKeyOf', () => {
  const state = new SchedulerState();
  state.setHost({ announcement, lastSeenMs: Date.now() });

  it('is the VM for a save and for a restore of an image the log knows', () => {
    expect(state.leaseKeyOf({ ...initialState(), jobId: 's-1', kind: 'save', status: 'scheduled', vm: 'web-1' })).toBe('web-1');
    expect(state.leaseKeyOf(restore('r-1', 'web-1-s-1-1.vmsave', 'web-1'))).toBe('web-1');
  });

  it('is the image on its host for a restore of an image the log does not know, however its path is spelled, and stays so once the VM is known', () => {
    state.imageOnly.add('r-2');
    state.imageOnly.add('r-3');
    expect(state.leaseKeyOf(restore('r-2', 'copied.vmsave'))).toBe(imageLeaseKey('hv-1', 'copied.vmsave'));
    expect(state.leaseKeyOf(restore('r-3', '/var/lib/vmsave/./copied.vmsave'))).toBe(imageLeaseKey('hv-1', 'copied.vmsave'));
    // RestoreStarted names the VM: the lease taken at dispatch is still the image's.
    expect(state.leaseKeyOf(restore('r-2', 'copied.vmsave', 'web-1'))).toBe('image:hv-1:copied.vmsave');
  });
});

describe('SchedulerState.knownImages', () => {
  it('records whether a save was replicated, with its format and allocated size, from the job state', () => {
    const state = new SchedulerState();
    const saved: JobState = {
      ...initialState(),
      jobId: 's-1',
      kind: 'save',
      status: 'verified',
      host: 'hv-1',
      vm: 'web-1',
      imagePath: '/var/lib/vmsave/web-1.vmsave',
      format: 'sparse',
      result: { bytes: 4096, blocks: 4, durationMs: 1 },
    };
    state.put('s-1', saved);
    expect(state.knownImages()).toEqual([
      { host: 'hv-1', imagePath: '/var/lib/vmsave/web-1.vmsave', vm: 'web-1', jobId: 's-1', verified: true, replicated: false, format: 'sparse', bytes: 2048 },
    ]);
    state.put('s-1', { ...saved, replicated: { bucket: 'VMSAVE_IMAGES', object: 's-1', host: 'hv-1', bytesMoved: 2048, at: now } });
    expect(state.knownImages()[0]).toMatchObject({ jobId: 's-1', replicated: true });
  });
});

describe('SchedulerState incremental queues (plan)', () => {
  const t0 = Date.parse('2026-06-01T00:00:00Z');
  const ann = (host: string, vms: string[], limit: number) =>
    HostAnnouncement.parse({
      ...announcement,
      host,
      executorId: `executor@${host}`,
      maxConcurrentJobs: limit,
      vms: vms.map((name) => ({ name, uuid: `u-${name}`, machine: 'q35', memoryMiB: 64, vcpus: 1, status: 'running' })),
    });
  const limitOf = (st: SchedulerState) => (h: string) => st.hosts.get(h)?.announcement.maxConcurrentJobs ?? 2;
  function fresh(limit = 1): SchedulerState {
    const st = new SchedulerState();
    st.setHost({ announcement: ann('hv-a', ['a1', 'a2', 'a3'], limit), lastSeenMs: t0 });
    return st;
  }
  function request(st: SchedulerState, jobId: string, vm: string, priority: 'high' | 'normal' | 'low', atMs: number): void {
    const e = makeEvent('SaveRequested', jobId, { request: SaveRequest.parse({ requestId: jobId, vm, priority }) }, { source: 'scheduler', at: new Date(atMs) });
    st.setPlacement(jobId, { host: 'hv-a', vm, ramBytes: 0 });
    st.put(jobId, evolve(initialState(), e));
  }
  function schedule(st: SchedulerState, jobId: string, atMs: number): void {
    const e = makeEvent(
      'SaveScheduled',
      jobId,
      { host: 'hv-a', attempt: 1, fencingToken: 1, deadlineAt: new Date(atMs + 60_000).toISOString() },
      { source: 'scheduler', at: new Date(atMs) },
    );
    st.put(jobId, evolve(st.jobs.get(jobId)!, e));
  }

  it('picks high before normal, first come first served, one job per VM, within the limit; a low job waits while a normal one is queued', () => {
    const st = fresh(2);
    request(st, 's-low', 'a3', 'low', t0);
    request(st, 's-n1', 'a1', 'normal', t0 + 1);
    request(st, 's-n1b', 'a1', 'normal', t0 + 2);
    request(st, 's-h', 'a2', 'high', t0 + 3);
    expect(st.plan(t0 + 10, limitOf(st)).map((q) => q.jobId)).toEqual(['s-h', 's-n1']);
    expect(st.queueDepthByHost()).toEqual({ 'hv-a': 4 });
  });

  it('visits a host again only when something changed there; a freed slot or VM brings the next job', () => {
    const st = fresh(1);
    request(st, 's-1', 'a1', 'normal', t0);
    request(st, 's-2', 'a1', 'normal', t0 + 1);
    const [first] = st.plan(t0 + 10, limitOf(st));
    expect(first?.jobId).toBe('s-1');
    schedule(st, 's-1', t0 + 10);
    expect(st.activeByHost()).toEqual({ 'hv-a': 1 });
    // Its load (what placing a restore of a replicated image weighs): one on it, one queued.
    expect([st.loadOn('hv-a'), st.loadOn('hv-b')]).toEqual([2, 0]);
    expect(st.isBusy('a1')).toBe(true);
    // Its host is full: the pass takes nothing and leaves no host to visit until something changes.
    expect(st.plan(t0 + 20, limitOf(st))).toEqual([]);
    expect(st.dirty.size).toBe(0);
    const done = makeEvent(
      'SaveFailed',
      's-1',
      { attempt: 1, stage: 'migrate', code: 'x', reason: 'x', retryable: false, host: 'hv-a', vmResumed: true },
      { source: 'executor@hv-a', at: new Date(t0 + 30) },
    );
    st.put('s-1', evolve(st.jobs.get('s-1')!, done));
    expect(st.activeByHost()).toEqual({});
    expect(st.plan(t0 + 40, limitOf(st)).map((q) => q.jobId)).toEqual(['s-2']);
  });

  it('a retried job goes back to its place in the queue, and waits out its backoff', () => {
    const st = fresh(1);
    request(st, 's-old', 'a1', 'normal', t0);
    schedule(st, 's-old', t0 + 1);
    request(st, 's-new', 'a2', 'normal', t0 + 2);
    const failed = makeEvent(
      'SaveFailed',
      's-old',
      { attempt: 1, stage: 'migrate', code: 'x', reason: 'x', retryable: true, host: 'hv-a', vmResumed: true },
      { source: 'executor@hv-a', at: new Date(t0 + 3) },
    );
    const retrying = makeEvent('SaveRetrying', 's-old', { attempt: 2, delayMs: 1000, lastCode: 'x' }, { source: 'scheduler', at: new Date(t0 + 4) });
    st.put('s-old', evolve(evolve(st.jobs.get('s-old')!, failed), retrying));
    // In backoff: the newer job goes first.
    expect(st.plan(t0 + 10, limitOf(st)).map((q) => q.jobId)).toEqual(['s-new']);
    // After the backoff, with the slot free, the retried job is ahead of any newer one.
    request(st, 's-newer', 'a3', 'normal', t0 + 20);
    expect(st.plan(t0 + 2000, limitOf(st)).map((q) => q.jobId)).toEqual(['s-old']);
  });

  it("keeps a VM's jobs in admission order when their requestedAt ties at ms resolution or the clock stepped back", () => {
    const st = fresh(1);
    request(st, 's-1', 'a1', 'normal', t0 + 5);
    request(st, 's-2', 'a1', 'normal', t0 + 5);
    // The clock stepped back between two admissions: still behind the earlier ones.
    request(st, 's-3', 'a1', 'normal', t0 + 1);
    const order: string[] = [];
    for (let k = 0; k < 3; k++) {
      const [q] = st.plan(t0 + 100 + k, limitOf(st));
      expect(q).toBeDefined();
      order.push(q!.jobId);
      schedule(st, q!.jobId, t0 + 100 + k);
      const done = makeEvent(
        'SaveFailed',
        q!.jobId,
        { attempt: 1, stage: 'migrate', code: 'x', reason: 'x', retryable: false, host: 'hv-a', vmResumed: true },
        { source: 'executor@hv-a', at: new Date(t0 + 100 + k) },
      );
      st.put(q!.jobId, evolve(st.jobs.get(q!.jobId)!, done));
    }
    expect(order).toEqual(['s-1', 's-2', 's-3']);
  });

  it('a held partition whose lease lapsed keeps its jobs queued in place and picks none until it is acted on again', () => {
    const st = fresh(2);
    let acting = true;
    st.owns = () => acting;
    st.holds = () => true;
    request(st, 's-1', 'a1', 'normal', t0);
    acting = false;
    // Admitted (folded) during the lapse: queued behind s-1, not dropped.
    request(st, 's-2', 'a1', 'normal', t0 + 1);
    expect(st.plan(t0 + 10, limitOf(st))).toEqual([]);
    expect(st.queueDepthByHost()).toEqual({ 'hv-a': 2 });
    // The host stays to be visited: the renewal needs no other change there.
    expect(st.dirty.has('hv-a')).toBe(true);
    acting = true;
    expect(st.plan(t0 + 20, limitOf(st)).map((q) => q.jobId)).toEqual(['s-1']);
  });

  it('queues only the jobs of held partitions; disown drops them', () => {
    const st = fresh(2);
    let held = false;
    st.owns = () => false;
    st.holds = () => held;
    request(st, 's-1', 'a1', 'normal', t0);
    expect(st.queueDepthByHost()).toEqual({});
    held = true;
    st.adopt(new Set([st.partitionOfJob('s-1')!]), t0);
    expect(st.queueDepthByHost()).toEqual({ 'hv-a': 1 });
    held = false;
    st.disown(new Set([st.partitionOfJob('s-1')!]));
    expect(st.queueDepthByHost()).toEqual({});
  });
});
