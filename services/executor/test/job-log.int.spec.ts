/**
 * One SaveFailed per attempt: when the scheduler's heartbeat watchdog failed an attempt while
 * the executor was still on it, the executor's own failure of that attempt is refused by
 * `decide` (after `refresh` re-read the log) and never reaches the log.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SaveRequest, jobIdFor, makeEvent } from '@vmsave/contracts';
import { Bus, createLogger, eventsOfJob, publishEvent } from '@vmsave/bus';
import { testUrls, uniq } from '@vmsave/testkit';
import { JobTrack } from '../src/job-log.ts';

const log = createLogger('job-log-test', { level: 'silent' });
let bus: Bus;

beforeAll(async () => {
  bus = await Bus.connect({ servers: (await testUrls()).natsUrl, name: 'job-log-test' });
  await bus.ensureStreams();
});
afterAll(async () => {
  await bus?.close();
});

describe('JobTrack', () => {
  it('refuses the executor’s SaveFailed of an attempt the watchdog already failed, even when it loaded the job before', async () => {
    const request = SaveRequest.parse({ requestId: uniq('r'), vm: 'vm1' });
    const jobId = jobIdFor('save', request.requestId);
    const s = { source: 'scheduler' };
    const base = { host: 'h1', attempt: 1, fencingToken: 3 };
    await publishEvent(bus, makeEvent('SaveRequested', jobId, { request }, s));
    await publishEvent(bus, makeEvent('SaveScheduled', jobId, { ...base, deadlineAt: new Date(Date.now() + 60_000).toISOString() }, s));
    const track = await JobTrack.load({ bus, source: 'executor@h1' }, jobId);
    expect(
      await track.apply(
        { type: 'StartSave', data: { ...base, imagePath: '/img/a.vmsave', format: 'sparse', channels: 1, directIo: false, wasRunning: true, ramBytes: 64 << 20 } },
        1,
        log,
      ),
    ).toBe(true);
    // The watchdog gives up on the attempt while the executor is still migrating.
    await publishEvent(
      bus,
      makeEvent(
        'SaveFailed',
        jobId,
        { attempt: 1, stage: 'migrate', reason: 'no heartbeat', code: 'executor-lost', retryable: true, host: 'h1', fencingToken: 3, vmResumed: false },
        s,
      ),
    );
    // The executor's failure path: refresh, then decide.
    await track.refresh(log);
    const published = await track.apply(
      { type: 'FailSave', data: { attempt: 1, stage: 'migrate', reason: 'QEMU went away', code: 'qemu-gone', retryable: false, host: 'h1', fencingToken: 3, vmResumed: false } },
      1,
      log,
    );
    expect(published).toBe(false);
    const failures = (await eventsOfJob(bus, jobId)).filter((l) => l.event.type === 'SaveFailed');
    expect(failures.map((l) => l.event.source)).toEqual(['scheduler']);
  });
});
