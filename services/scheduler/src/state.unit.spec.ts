import { describe, expect, it } from 'vitest';
import { HostAnnouncement, RestoreRequest } from '@vmsave/contracts';
import { initialState, type JobState } from '@vmsave/jobs';
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
  state.hosts.set('hv-1', { announcement, lastSeenMs: Date.now() });

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
