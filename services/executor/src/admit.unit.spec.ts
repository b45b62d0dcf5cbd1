import { describe, expect, it } from 'vitest';
import { makeEvent, type JobEvent } from '@vmsave/contracts';
import { decide, fold, type JobCommand, type JobState } from '@vmsave/jobs';
import { admitWork } from './admit.ts';

const at = { source: 'test' };
const request = {
  schemaVersion: 1 as const,
  requestId: 'r-1',
  vm: 'web',
  format: 'sparse' as const,
  channels: 1,
  directIo: false,
  after: 'running' as const,
  priority: 'normal' as const,
};
const requested = makeEvent('SaveRequested', 's-1', { request }, at);
const scheduled = (attempt: number, fencingToken: number) =>
  makeEvent('SaveScheduled', 's-1', { host: 'h', attempt, fencingToken, deadlineAt: new Date(Date.now() + 60_000).toISOString() }, at);
const startData = (attempt: number, fencingToken: number) => ({
  host: 'h',
  attempt,
  fencingToken,
  imagePath: '/i',
  format: 'sparse' as const,
  channels: 1,
  directIo: false,
  wasRunning: true,
  ramBytes: 1,
});
const started = (attempt: number, fencingToken: number) => makeEvent('SaveStarted', 's-1', startData(attempt, fencingToken), at);
const failed = (attempt: number) =>
  makeEvent('SaveFailed', 's-1', { attempt, stage: 'migrate', reason: 'x', code: 'x', retryable: true, host: 'h', fencingToken: 1, vmResumed: true }, at);
const retrying = (attempt: number) => makeEvent('SaveRetrying', 's-1', { attempt, delayMs: 0, lastCode: 'x' }, at);
const cancelled = makeEvent('SaveCancelled', 's-1', { reason: 'x', stage: 'queued' }, at);

const histories: Record<string, JobEvent[]> = {
  'no such job': [],
  requested: [requested],
  'scheduled, attempt 1 token 7': [requested, scheduled(1, 7)],
  'running, attempt 1 token 7': [requested, scheduled(1, 7), started(1, 7)],
  'failed then retried and scheduled, attempt 2 token 8': [requested, scheduled(1, 7), failed(1), retrying(2), scheduled(2, 8)],
  cancelled: [requested, scheduled(1, 7), cancelled],
};
const works = [
  { attempt: 1, fencingToken: 7 },
  { attempt: 1, fencingToken: 6 },
  { attempt: 2, fencingToken: 8 },
  { attempt: 2, fencingToken: 7 },
];

describe('admitWork', () => {
  it('given a scheduled job, when its current attempt arrives, then it is admitted', () => {
    expect(admitWork({ kind: 'save', attempt: 1, fencingToken: 7 }, fold(histories['scheduled, attempt 1 token 7']!))).toEqual({ ok: true });
  });

  it('given a scheduled job, when a stale fencing token arrives, then it is refused as stale', () => {
    expect(admitWork({ kind: 'save', attempt: 1, fencingToken: 6 }, fold(histories['scheduled, attempt 1 token 7']!))).toMatchObject({ ok: false, rule: 'stale-attempt' });
  });

  it('given a cancelled job, when its work arrives, then it is refused as terminal', () => {
    expect(admitWork({ kind: 'save', attempt: 1, fencingToken: 7 }, fold(histories.cancelled!))).toMatchObject({ ok: false, rule: 'job-terminal' });
  });

  it('given a save job, when restore work arrives, then it is refused', () => {
    expect(admitWork({ kind: 'restore', attempt: 1, fencingToken: 7 }, fold(histories['scheduled, attempt 1 token 7']!))).toMatchObject({ ok: false, rule: 'wrong-kind' });
  });

  // The same rules as decide's StartSave, asked before the start's data exists.
  for (const [name, events] of Object.entries(histories)) {
    for (const w of works) {
      it(`agrees with decide(StartSave) on "${name}" for attempt ${w.attempt} token ${w.fencingToken}`, () => {
        const s: JobState = fold(events);
        const cmd: JobCommand = { type: 'StartSave', data: startData(w.attempt, w.fencingToken) };
        const d = decide(cmd, s, at);
        const a = admitWork({ kind: 'save', ...w }, s);
        expect(a.ok).toBe(d.ok);
        if (!a.ok && !d.ok) expect(a.rule).toBe(d.rule);
      });
    }
  }
});
