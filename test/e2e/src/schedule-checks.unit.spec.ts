import { describe, expect, it } from 'vitest';
import type { JobEvent } from '@vmsave/contracts';
import { attemptWindows, byJob, maxOverlap, repeated } from './schedule-checks.ts';

const at = (s: number) => new Date(Date.UTC(2026, 11, 4, 20, 0, s)).toISOString();
const ev = (jobId: string, type: string, s: number, data: Record<string, unknown>) =>
  ({ eventId: `${jobId}-${type}-${s}`, type, schemaVersion: 1, jobId, at: at(s), source: 'test', data }) as unknown as JobEvent;
const ms = (s: number) => Date.parse(at(s));

describe('attemptWindows', () => {
  it('given a failed first attempt and a completed retry, when folded, then one window per attempt with its host and ends', () => {
    const h = [
      ev('s-1', 'SaveRequested', 0, { request: { vm: 'web-1', requestId: 'r1' } }),
      ev('s-1', 'SaveScheduled', 1, { host: 'a', attempt: 1, fencingToken: 1, deadlineAt: at(60) }),
      ev('s-1', 'SaveStarted', 2, { host: 'a', attempt: 1 }),
      ev('s-1', 'SaveFailed', 3, { attempt: 1 }),
      ev('s-1', 'SaveScheduled', 5, { host: 'b', attempt: 2, fencingToken: 2, deadlineAt: at(60) }),
      ev('s-1', 'SaveCompleted', 7, { host: 'b', attempt: 2 }),
    ];
    expect(attemptWindows(h)).toEqual([
      { jobId: 's-1', vm: 'web-1', host: 'a', attempt: 1, scheduledAt: ms(1), startedAt: ms(2), endedAt: ms(3), endedBy: 'SaveFailed' },
      { jobId: 's-1', vm: 'web-1', host: 'b', attempt: 2, scheduledAt: ms(5), endedAt: ms(7), endedBy: 'SaveCompleted' },
    ]);
  });

  it('given an attempt never closed, then its window stays open (Infinity); a cancel closes the open one', () => {
    const open = attemptWindows([ev('s-2', 'SaveScheduled', 1, { host: 'a', attempt: 1 })]);
    expect(open[0]?.endedAt).toBe(Number.POSITIVE_INFINITY);
    const cancelled = attemptWindows([ev('s-3', 'SaveScheduled', 1, { host: 'a', attempt: 1 }), ev('s-3', 'SaveCancelled', 4, { reason: 'x' })]);
    expect(cancelled[0]).toMatchObject({ endedAt: ms(4), endedBy: 'SaveCancelled' });
  });
});

describe('maxOverlap', () => {
  it('counts intervals open at once; one ending when another starts does not overlap it', () => {
    expect(maxOverlap([]).max).toBe(0);
    expect(
      maxOverlap([
        { from: 0, to: 10, label: 'a' },
        { from: 10, to: 20, label: 'b' },
      ]).max,
    ).toBe(1);
    const o = maxOverlap([
      { from: 0, to: 10, label: 'a' },
      { from: 5, to: 20, label: 'b' },
      { from: 8, to: 9, label: 'c' },
      { from: 15, to: Number.POSITIVE_INFINITY, label: 'd' },
    ]);
    expect(o).toEqual({ max: 3, at: 8, labels: ['a', 'b', 'c'] });
  });
});

describe('byJob and repeated', () => {
  it('groups save events by job in order, leaves other jobs out; finds repeats', () => {
    const m = byJob([ev('s-1', 'SaveRequested', 0, {}), ev('r-1', 'RestoreRequested', 1, {}), ev('s-1', 'SaveScheduled', 2, {})]);
    expect([...m.keys()]).toEqual(['s-1']);
    expect(m.get('s-1')?.map((e) => e.type)).toEqual(['SaveRequested', 'SaveScheduled']);
    expect(repeated([1, 2, 2, 3, 3, 3])).toEqual([
      [2, 2],
      [3, 3],
    ]);
  });
});
