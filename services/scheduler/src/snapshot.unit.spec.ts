import { describe, expect, it } from 'vitest';
import { initialState, type JobState } from '@vmsave/jobs';
import { captureSnapshot, captureSnapshotSliced, parseSnapshot, type Snapshot } from './snapshot.ts';
import { SchedulerState } from './state.ts';

function job(i: number, status: JobState['status'] = 'verified'): JobState {
  return { ...initialState(), jobId: `s-${i}`, kind: 'save', status, attempt: 1, version: 5, vm: `vm-${i % 7}`, host: 'hv-1', imagePath: `/var/lib/vmsave/vm-${i}.vmsave` };
}

describe('captureSnapshotSliced', () => {
  it('gives the same snapshot as captureSnapshot across several slices, and of the state when it was called', async () => {
    const state = new SchedulerState();
    for (let i = 0; i < 4500; i++) state.put(`s-${i}`, job(i));
    state.imageOnly.add('r-1');
    const whole = parseSnapshot(captureSnapshot(state, 42, 'stream-1')) as Snapshot;
    const pending = captureSnapshotSliced(state, 42, 'stream-1');
    // Changes after the call (between slices) are not in it.
    state.put('s-0', job(0, 'failed'));
    state.put('s-9999', job(9999));
    state.imageOnly.add('r-2');
    const sliced = parseSnapshot((await pending).toString());
    expect(typeof sliced).not.toBe('string');
    const { at: _a, ...rest } = sliced as Snapshot;
    const { at: _b, ...expected } = whole;
    expect(rest).toEqual(expected);
    expect((sliced as Snapshot).jobs).toHaveLength(4500);
    expect((sliced as Snapshot).jobs[0]!.status).toBe('verified');
  });

  it('is a readable snapshot with no jobs at all', async () => {
    const snap = parseSnapshot((await captureSnapshotSliced(new SchedulerState(), 0, 's')).toString());
    expect(snap).toMatchObject({ v: 1, seq: 0, stream: 's', jobs: [], imageOnly: [] });
  });
});
