import { describe, expect, it } from 'vitest';
import { makeEvent } from '@vmsave/contracts';
import { closesAttempt, JOB_STATUSES } from './rules.ts';

const at = { source: 'test', at: new Date('2026-01-01T00:00:00Z') };
const failed = (attempt: number) => makeEvent('SaveFailed', 's-1', { attempt, stage: 'migrate', reason: 'boom', code: 'x', retryable: true, vmResumed: true }, at);

describe('closesAttempt', () => {
  it('given a failure of attempt 2, then it closes attempt 2 and not attempt 1', () => {
    expect(closesAttempt(failed(2), 2)).toBe(true);
    expect(closesAttempt(failed(2), 1)).toBe(false);
  });
  it('given a cancel or a verdict, then it closes any attempt', () => {
    expect(closesAttempt(makeEvent('SaveCancelled', 's-1', { reason: 'r', stage: 'queued' }, at), 5)).toBe(true);
    expect(closesAttempt(makeEvent('ImageVerified', 's-1', { imagePath: '/a', checks: [] }, at), 5)).toBe(true);
  });
  it('given a start or a schedule, then it closes nothing', () => {
    expect(closesAttempt(makeEvent('SaveScheduled', 's-1', { host: 'h', attempt: 1, fencingToken: 1, deadlineAt: at.at.toISOString() }, at), 1)).toBe(false);
  });
  it('lists each status once', () => {
    expect(new Set(JOB_STATUSES).size).toBe(JOB_STATUSES.length);
  });
});
