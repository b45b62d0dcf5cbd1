import { describe, expect, it } from 'vitest';
import { SaveRequest, RestoreRequest, makeEvent, type JobEvent } from '@vmsave/contracts';
import { decide, decideRetry, type JobCommand } from './decide.ts';
import { fold, initialState, isTerminal, isFinal, type JobState } from './state.ts';

const T0 = new Date('2026-01-01T00:00:00Z');
const meta = { source: 'test', now: T0 };
const J = 's-1';
const saveReq = SaveRequest.parse({ requestId: 'r1', vm: 'vm1' });
const restoreReq = RestoreRequest.parse({ requestId: 'r2', image: 'vm1.vmsave' });
const at = (ms = 0) => ({ source: 'test', at: new Date(T0.getTime() + ms) });
const deadlineAt = new Date(T0.getTime() + 60_000).toISOString();

const started = { host: 'h1', attempt: 1, fencingToken: 7, imagePath: '/img/a', format: 'sparse' as const, channels: 1, directIo: false, wasRunning: true, ramBytes: 1 };
const completed = {
  host: 'h1',
  attempt: 1,
  fencingToken: 7,
  imagePath: '/img/a',
  format: 'sparse' as const,
  bytes: 10,
  blocks: 2,
  durationMs: 5,
  throughputBytesPerSec: 1,
  vmState: 'running' as const,
  qemu: {},
};
const failed = (retryable: boolean) => ({ attempt: 1, stage: 'migrate' as const, reason: 'boom', code: 'qemu-migration-failed', retryable, vmResumed: true });
const checks = (status: 'pass' | 'fail') => [{ name: 'header.magic', status, detail: 'x' }];

/** Histories that bring a save job to each state. */
const histories: Record<string, JobEvent[]> = {
  none: [],
  requested: [makeEvent('SaveRequested', J, { request: saveReq }, at())],
};
histories.rejected = [...histories.requested!, makeEvent('SaveRejected', J, { rule: 'vm-exists', message: 'no' }, at())];
histories.scheduled = [...histories.requested!, makeEvent('SaveScheduled', J, { host: 'h1', attempt: 1, fencingToken: 7, deadlineAt }, at())];
histories.running = [...histories.scheduled!, makeEvent('SaveStarted', J, started, at())];
histories.completed = [...histories.running!, makeEvent('SaveCompleted', J, completed, at())];
histories.verified = [...histories.completed!, makeEvent('ImageVerified', J, { imagePath: '/img/a', checks: checks('pass') }, at())];
histories.imageRejected = [...histories.completed!, makeEvent('ImageRejected', J, { imagePath: '/img/a', checks: checks('fail') }, at())];
histories.failed = [...histories.running!, makeEvent('SaveFailed', J, failed(true), at())];
histories.cancelled = [...histories.requested!, makeEvent('SaveCancelled', J, { reason: 'op' }, at())];

const given = (name: keyof typeof histories): JobState => fold(histories[name]!);

const commands: Record<string, JobCommand> = {
  RequestSave: { type: 'RequestSave', jobId: J, request: saveReq },
  Reject: { type: 'Reject', rule: 'vm-exists', field: 'vm', message: 'no such VM' },
  Schedule: { type: 'Schedule', host: 'h1', fencingToken: 7, deadlineAt },
  StartSave: { type: 'StartSave', data: started },
  CompleteSave: { type: 'CompleteSave', data: completed },
  FailSave: { type: 'FailSave', data: failed(false) },
  Cancel: { type: 'Cancel', reason: 'op' },
  ConfirmCancelled: { type: 'ConfirmCancelled', reason: 'op', vmResumed: true },
  RecordVerification: { type: 'RecordVerification', imagePath: '/img/a', checks: checks('pass') },
  FlagVerificationOverdue: { type: 'FlagVerificationOverdue', notice: 1, waitedMs: 120_000 },
  RecordScrubDamage: { type: 'RecordScrubDamage', imagePath: '/img/a', checks: [{ name: 'seal.ram', status: 'fail', detail: 'ram bytes 1–2' }] },
};

/** The full transition matrix: state × command → the event produced, `[]` (idempotent no-op) or the rule broken. */
// biome-ignore format: aligned state × command table
const matrix: Record<string, Record<string, string>> = {
  none:      { RequestSave: 'SaveRequested', Reject: '!job-unknown', Schedule: '!job-unknown', StartSave: '!job-unknown', CompleteSave: '!job-unknown', FailSave: '!job-unknown', Cancel: '!job-unknown', ConfirmCancelled: '!job-unknown', RecordVerification: '!job-unknown', FlagVerificationOverdue: '!job-unknown', RecordScrubDamage: '!job-unknown' },
  requested: { RequestSave: '[]', Reject: 'SaveRejected', Schedule: 'SaveScheduled', StartSave: '!illegal-transition', CompleteSave: '!illegal-transition', FailSave: '!illegal-transition', Cancel: 'SaveCancelled', ConfirmCancelled: '!illegal-transition', RecordVerification: '!illegal-transition', FlagVerificationOverdue: '!illegal-transition', RecordScrubDamage: '!illegal-transition' },
  scheduled: { RequestSave: '[]', Reject: '!illegal-transition', Schedule: '!illegal-transition', StartSave: 'SaveStarted', CompleteSave: '!illegal-transition', FailSave: 'SaveFailed', Cancel: 'SaveCancelRequested', ConfirmCancelled: 'SaveCancelled', RecordVerification: '!illegal-transition', FlagVerificationOverdue: '!illegal-transition', RecordScrubDamage: '!illegal-transition' },
  running:   { RequestSave: '[]', Reject: '!illegal-transition', Schedule: '!illegal-transition', StartSave: '!illegal-transition', CompleteSave: 'SaveCompleted', FailSave: 'SaveFailed', Cancel: 'SaveCancelRequested', ConfirmCancelled: 'SaveCancelled', RecordVerification: '!illegal-transition', FlagVerificationOverdue: '!illegal-transition', RecordScrubDamage: '!illegal-transition' },
  completed: { RequestSave: '[]', Reject: '!illegal-transition', Schedule: '!illegal-transition', StartSave: '!illegal-transition', CompleteSave: '!illegal-transition', FailSave: '!illegal-transition', Cancel: '!illegal-transition', ConfirmCancelled: '!illegal-transition', RecordVerification: 'ImageVerified', FlagVerificationOverdue: 'VerificationOverdue', RecordScrubDamage: '!illegal-transition' },
};
for (const terminal of ['rejected', 'verified', 'imageRejected', 'failed', 'cancelled']) {
  matrix[terminal] = Object.fromEntries(Object.keys(commands).map((c) => [c, c === 'RequestSave' ? '[]' : '!job-terminal']));
}
// The one way out of a final state: the content scrub finds a verified image damaged.
matrix.verified!.RecordScrubDamage = 'ImageRejected';

describe('save job decider: every state × command', () => {
  for (const [state, row] of Object.entries(matrix)) {
    for (const [cmd, expected] of Object.entries(row)) {
      it(`given ${state}, when ${cmd}, then ${expected}`, () => {
        const d = decide(commands[cmd]!, given(state as keyof typeof histories), meta);
        if (expected.startsWith('!')) {
          expect(d.ok).toBe(false);
          if (!d.ok) expect(d.rule).toBe(expected.slice(1));
        } else {
          expect(d.ok).toBe(true);
          if (d.ok) expect(d.events.map((e) => e.type).join(',') || '[]').toBe(expected);
        }
      });
    }
  }
});

describe('save job decider: details', () => {
  it('given a scheduled job, when an executor starts a stale attempt, then it is refused', () => {
    const d = decide({ type: 'StartSave', data: { ...started, fencingToken: 6 } }, given('scheduled'), meta);
    expect(d).toMatchObject({ ok: false, rule: 'stale-attempt' });
  });
  it('given a completed job, when a check fails, then the image is rejected with the failing check in the reason', () => {
    const d = decide({ type: 'RecordVerification', imagePath: '/img/a', checks: checks('fail') }, given('completed'), meta);
    expect(d.ok && d.events[0]!.type).toBe('ImageRejected');
    const s = fold(d.ok ? d.events : [], given('completed'));
    expect(s.status).toBe('rejected');
    expect(s.rejection?.message).toContain('header.magic');
  });
  it('given a running job already asked to cancel, when cancel again, then nothing new happens', () => {
    const s = fold([makeEvent('SaveCancelRequested', J, { reason: 'op' }, at())], given('running'));
    expect(decide(commands.Cancel!, s, meta)).toEqual({ ok: true, events: [], duplicate: true });
  });
  it('given a save job, when a restore-only command comes, then it is refused as the wrong kind', () => {
    const d = decide(
      { type: 'CompleteRestore', data: { host: 'h1', attempt: 1, fencingToken: 7, imagePath: 'x', vm: 'v', durationMs: 1, vmState: 'running' } },
      given('running'),
      meta,
    );
    expect(d).toMatchObject({ ok: false, rule: 'wrong-kind' });
  });
  it('evolve ignores a stale attempt’s completion', () => {
    const s = fold([makeEvent('SaveCompleted', J, { ...completed, attempt: 9 }, at())], given('running'));
    expect(s.status).toBe('running');
  });
});

describe('retries', () => {
  it('given a retryable failure, when retry, then the job is queued again after the delay with the next attempt', () => {
    const d = decideRetry({ type: 'Retry', delayMs: 5000, maxAttempts: 3 }, given('failed'), meta);
    expect(d.ok && d.events.map((e) => e.type)).toEqual(['SaveRetrying']);
    const s = fold(d.ok ? d.events : [], given('failed'));
    expect(s.status).toBe('requested');
    expect(s.notBefore).toBe(new Date(T0.getTime() + 5000).toISOString());
    expect(decide(commands.Schedule!, s, meta)).toMatchObject({ ok: false, rule: 'backoff' });
    const later = decide(commands.Schedule!, s, { source: 't', now: new Date(T0.getTime() + 6000) });
    expect(later.ok && later.events[0]).toMatchObject({ type: 'SaveScheduled', data: { attempt: 2 } });
  });
  it('given a non-retryable failure, when retry, then refused as not-retryable', () => {
    const s = fold([...histories.running!, makeEvent('SaveFailed', J, failed(false), at())]);
    expect(decideRetry({ type: 'Retry', delayMs: 1, maxAttempts: 3 }, s, meta)).toMatchObject({ ok: false, rule: 'not-retryable' });
  });
  it('given the last attempt failed, when retry, then the failure is repeated as not retryable and the job is final', () => {
    const before = given('failed');
    expect(before.lastFailure?.retryable).toBe(true);
    expect(isFinal(before)).toBe(false);
    const d = decideRetry({ type: 'Retry', delayMs: 1, maxAttempts: 1 }, before, meta);
    expect(d.ok && d.events).toMatchObject([
      {
        type: 'SaveFailed',
        eventId: `${J}.1.SaveFailed.final`,
        data: { attempt: 1, retryable: false, code: before.lastFailure!.code, reason: expect.stringMatching(/^gave up after 1 attempt: /) },
      },
    ]);
    const s = fold(d.ok ? d.events : [], before);
    expect(s).toMatchObject({ status: 'failed', lastFailure: { retryable: false } });
    expect(isFinal(s)).toBe(true);
    expect(decideRetry({ type: 'Retry', delayMs: 1, maxAttempts: 1 }, s, meta)).toMatchObject({ ok: false, rule: 'not-retryable' });
  });
  it("given a failed job, a stale attempt's failure or a retryable repeat changes nothing", () => {
    const before = given('failed');
    expect(fold([makeEvent('SaveFailed', J, { ...failed(false), attempt: 9 }, at())], before)).toEqual({ ...before, version: before.version + 1, updatedAt: expect.any(String) });
    expect(fold([makeEvent('SaveFailed', J, failed(true), at())], before).lastFailure).toEqual(before.lastFailure);
  });
  it('given attempt 1 failed by the watchdog, when the executor fails attempt 1 too, then it is refused at every later point (one SaveFailed per attempt)', () => {
    const watchdog = makeEvent(
      'SaveFailed',
      J,
      { ...failed(true), stage: 'migrate', code: 'executor-lost', reason: 'no heartbeat from h1 for 15 s', host: 'h1', fencingToken: 7, vmResumed: false },
      at(10),
    );
    const executorFails: JobCommand = { type: 'FailSave', data: { ...failed(false), code: 'qemu-gone', host: 'h1', fencingToken: 7 } };
    const afterWatchdog = fold([...histories.running!, watchdog]);
    expect(afterWatchdog).toMatchObject({ status: 'failed', attempt: 1 });
    expect(decide(executorFails, afterWatchdog, meta)).toMatchObject({ ok: false, rule: 'job-terminal' });
    // Also a retryable one, and after the scheduler queued the retry or started attempt 2.
    expect(decide({ type: 'FailSave', data: { ...executorFails.data, retryable: true } } as JobCommand, afterWatchdog, meta)).toMatchObject({ ok: false, rule: 'job-terminal' });
    const retrying = decideRetry({ type: 'Retry', delayMs: 0, maxAttempts: 3 }, afterWatchdog, meta);
    const queued = fold(retrying.ok ? retrying.events : [], afterWatchdog);
    expect(decide(executorFails, queued, meta)).toMatchObject({ ok: false, rule: 'illegal-transition' });
    const sched = decide({ ...commands.Schedule!, fencingToken: 8 } as JobCommand, queued, { source: 't', now: new Date(T0.getTime() + 60_000) });
    const second = fold(sched.ok ? sched.events : [], queued);
    expect(second).toMatchObject({ status: 'scheduled', attempt: 2 });
    expect(decide(executorFails, second, meta)).toMatchObject({ ok: false, rule: 'stale-attempt' });
    // And the other order: the executor failed it first, the watchdog's FailSave is refused.
    const afterExecutor = fold([...histories.running!, makeEvent('SaveFailed', J, failed(false), at(5))]);
    expect(decide({ type: 'FailSave', data: watchdog.data } as JobCommand, afterExecutor, meta)).toMatchObject({ ok: false, rule: 'job-terminal' });
  });
  it('given a running job, when retry, then refused', () => {
    expect(decideRetry({ type: 'Retry', delayMs: 1, maxAttempts: 3 }, given('running'), meta)).toMatchObject({ ok: false, rule: 'illegal-transition' });
  });
});

describe('restore jobs', () => {
  const R = 'r-1';
  const rStarted = {
    host: 'h1',
    attempt: 1,
    fencingToken: 1,
    imagePath: '/img/a',
    format: 'legacy' as const,
    vm: { name: 'vm1', uuid: '6f1c1a0e-3b7e-4c55-9d4e-2b1f0c9a8e11', machine: 'q35', memoryMiB: 64, vcpus: 1, args: [] },
  };
  const h = [
    makeEvent('RestoreRequested', R, { request: restoreReq, vm: 'vm1' }, at()),
    makeEvent('RestoreScheduled', R, { host: 'h1', attempt: 1, fencingToken: 1, deadlineAt }, at()),
    makeEvent('RestoreStarted', R, rStarted, at()),
  ];
  it('given a running restore, when completed, then the job is terminal and cannot be verified', () => {
    const d = decide(
      { type: 'CompleteRestore', data: { host: 'h1', attempt: 1, fencingToken: 1, imagePath: '/img/a', vm: 'vm1', durationMs: 3, vmState: 'running' } },
      fold(h),
      meta,
    );
    expect(d.ok && d.events[0]!.type).toBe('RestoreCompleted');
    const s = fold(d.ok ? d.events : [], fold(h));
    expect(isTerminal(s)).toBe(true);
    expect(decide(commands.RecordVerification!, s, meta)).toMatchObject({ ok: false, rule: 'job-terminal' });
  });
  it('given a requested restore, when cancelled, then RestoreCancelled', () => {
    const d = decide(commands.Cancel!, fold(h.slice(0, 1)), meta);
    expect(d.ok && d.events[0]!.type).toBe('RestoreCancelled');
  });
  it('given a scheduled restore, when it fails, then RestoreFailed keeps QEMU’s stderr', () => {
    const d = decide(
      { type: 'FailRestore', data: { attempt: 1, stage: 'restore', reason: 'x', code: 'qemu-exited', retryable: false, qemuStderr: 'qemu: bad' } },
      fold(h.slice(0, 2)),
      meta,
    );
    expect(d.ok && d.events[0]).toMatchObject({ type: 'RestoreFailed', data: { qemuStderr: 'qemu: bad' } });
  });
  it('initial state is empty', () => {
    expect(initialState()).toMatchObject({ status: 'none', attempt: 0, version: 0 });
  });
});

describe('verdict overdue', () => {
  const overdue = (notice: 1 | 2, waitedMs: number): JobCommand => ({ type: 'FlagVerificationOverdue', notice, waitedMs });
  it('given a completed save, when its verdict is overdue, then notice 1 names the image, host, attempt and wait, with an id per attempt and notice', () => {
    const d = decide(overdue(1, 120_000.4), given('completed'), meta);
    expect(d.ok).toBe(true);
    const e = d.ok ? d.events[0]! : undefined;
    expect(e).toMatchObject({
      type: 'VerificationOverdue',
      eventId: `${J}.1.VerificationOverdue.1`,
      data: { imagePath: '/img/a', host: 'h1', attempt: 1, waitedMs: 120_000, notice: 1 },
    });
    const s = fold(d.ok ? d.events : [], given('completed'));
    expect(s.status).toBe('completed');
    expect(isTerminal(s)).toBe(false);
    expect(s.verificationOverdue).toMatchObject({ notice: 1, waitedMs: 120_000 });
  });
  it('given notice 1, when overdue again, then notice 2 raises it; a repeat of either is a no-op', () => {
    const once = fold(
      decide(overdue(1, 100), given('completed'), meta).ok
        ? [makeEvent('VerificationOverdue', J, { imagePath: '/img/a', host: 'h1', attempt: 1, waitedMs: 100, notice: 1 }, at())]
        : [],
      given('completed'),
    );
    expect(decide(overdue(1, 150), once, meta)).toEqual({ ok: true, events: [], duplicate: true });
    const d = decide(overdue(2, 200), once, meta);
    expect(d.ok && d.events[0]).toMatchObject({ eventId: `${J}.1.VerificationOverdue.2`, data: { notice: 2, waitedMs: 200 } });
    const twice = fold(d.ok ? d.events : [], once);
    expect(twice.verificationOverdue?.notice).toBe(2);
    expect(decide(overdue(2, 300), twice, meta)).toEqual({ ok: true, events: [], duplicate: true });
  });
  it('given a completed save with no notice, when notice 2 comes first, then it is refused naming the order rule', () => {
    expect(decide(overdue(2, 100), given('completed'), meta)).toMatchObject({ ok: false, rule: 'overdue-order' });
  });
  it('given a raised save, when the verdict finally comes, then it still applies and clears the flag', () => {
    const raised = fold(
      [1, 2].map((n) => makeEvent('VerificationOverdue', J, { imagePath: '/img/a', host: 'h1', attempt: 1, waitedMs: n * 100, notice: n as 1 | 2 }, at())),
      given('completed'),
    );
    expect(decide(commands.RecordVerification!, raised, meta).ok).toBe(true);
    const s = fold([makeEvent('ImageVerified', J, { imagePath: '/img/a', checks: checks('pass') }, at())], raised);
    expect(s.status).toBe('verified');
    expect(s.verificationOverdue).toBeUndefined();
  });
  it('given a verified save, when a late VerificationOverdue is folded, then it changes nothing', () => {
    const s = fold([makeEvent('VerificationOverdue', J, { imagePath: '/img/a', host: 'h1', attempt: 1, waitedMs: 1, notice: 1 }, at())], given('verified'));
    expect(s.status).toBe('verified');
    expect(s.verificationOverdue).toBeUndefined();
  });
});

describe('content scrub damage', () => {
  it('given a verified job, when the scrub records damage, then ImageRejected with scrub: true (one id per job) moves it to rejected, rule scrub', () => {
    const d = decide(commands.RecordScrubDamage!, given('verified'), meta);
    expect(d.ok).toBe(true);
    if (!d.ok) return;
    expect(d.events).toHaveLength(1);
    expect(d.events[0]).toMatchObject({ type: 'ImageRejected', eventId: `${J}.ImageRejected.scrub`, data: { scrub: true, content: 'full', imagePath: '/img/a' } });
    const s = fold(d.events, given('verified'));
    expect(s.status).toBe('rejected');
    expect(s.rejection).toMatchObject({ rule: 'scrub', message: 'seal.ram: ram bytes 1–2' });
    expect(decide(commands.RecordScrubDamage!, s, meta)).toMatchObject({ ok: false, rule: 'job-terminal' });
  });
  it('given a verified job, when a scrub "rejection" has no failed check, then it is refused', () => {
    const d = decide({ type: 'RecordScrubDamage', imagePath: '/img/a', checks: [{ name: 'seal.ram', status: 'pass', detail: '' }] }, given('verified'), meta);
    expect(d).toMatchObject({ ok: false, rule: 'no-damage' });
  });
  it('given a verified job, when a plain ImageRejected (no scrub flag) arrives, then evolve keeps it verified', () => {
    const s = fold([makeEvent('ImageRejected', J, { imagePath: '/img/a', checks: checks('fail') }, at())], given('verified'));
    expect(s.status).toBe('verified');
  });
  it('given a failed or cancelled job, when a scrub ImageRejected arrives, then it changes nothing', () => {
    for (const h of ['failed', 'cancelled'] as const) {
      const s = fold([makeEvent('ImageRejected', J, { imagePath: '/img/a', checks: checks('fail'), scrub: true }, at())], given(h));
      expect(s.status).toBe(h);
    }
  });
});

describe('final states are final', () => {
  it('given a verified job, when a stray SaveFailed arrives (a second scheduler, a stale executor), then evolve keeps it verified', () => {
    const s = fold([makeEvent('SaveFailed', J, { ...failed(true), attempt: 1 }, at())], given('verified'));
    expect(s.status).toBe('verified');
  });
  it('given a failed job, when SaveRetrying arrives, then it is queued again', () => {
    const s = fold([makeEvent('SaveRetrying', J, { attempt: 2, delayMs: 0, lastCode: 'x' }, at())], given('failed'));
    expect(s.status).toBe('requested');
  });
  it('given a cancelled job, when a late SaveCompleted arrives, then it stays cancelled', () => {
    expect(fold([makeEvent('SaveCompleted', J, completed, at())], given('cancelled')).status).toBe('cancelled');
  });
});
