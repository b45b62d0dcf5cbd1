/**
 * The client against a real NATS with no scheduler on it (run with a private `NATS_URL`): the
 * test plays the scheduler where one is needed, answering on the reply inbox and writing the
 * events a scheduler would have written.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobIdFor, messages, newEventId, partitionOf, sourceOf, streams, subjects, type AdmissionReply, type JobEvent } from '@vmsave/contracts';
import { Bus, publishCore, publishEvent } from '@vmsave/bus';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import { JobWaitTimeout, VmsaveClient } from '../src/index.ts';

let bus: Bus;
let client: VmsaveClient;

beforeAll(async () => {
  const { natsUrl } = await testUrls();
  bus = await Bus.connect({ servers: natsUrl, name: 'client-test' });
  await bus.ensureStreams();
  client = new VmsaveClient(bus);
});
afterAll(async () => {
  await bus?.close();
});

const event = (jobId: string, type: JobEvent['type'], data: unknown): JobEvent =>
  ({ eventId: newEventId(), type, schemaVersion: 1, jobId, at: new Date().toISOString(), source: sourceOf(type), data }) as JobEvent;

/**
 * A fake scheduler's admission for the command with `requestId`: read it from the commands stream
 * (a work queue with no consumer here, so it stays there) and answer on its `Vmsave-Reply-To` inbox.
 */
async function answer(subject: string, requestId: string, reply: AdmissionReply): Promise<void> {
  const m = await waitFor(
    `the command ${requestId}`,
    async () => {
      const last = await bus.jsm.streams.getMessage(streams.commands.name, { last_by_subj: subject });
      return last && last.json<{ requestId: string }>().requestId === requestId ? last : undefined;
    },
    10_000,
    20,
  );
  publishCore(bus, messages.admissionReply, m.header.get('Vmsave-Reply-To'), reply);
}

describe('VmsaveClient on a real NATS', () => {
  it('save() with no scheduler: stored, but no admission answer in time', async () => {
    const requestId = uniq('noone');
    const r = await client.save({ requestId, vm: 'web-1', format: 'sparse' }, { admissionTimeoutMs: 400 });
    expect(r).toEqual({ jobId: jobIdFor('save', requestId), duplicate: false, streamSeq: expect.any(Number), admission: undefined });
  });

  it("a cancel goes on its job's VM partition (read from the job's first event), else on the bare subject", async () => {
    const requestId = uniq('cancel-part');
    const vm = 'db.primary-7';
    const s = await client.save({ requestId, vm }, { admissionTimeoutMs: 100 });
    await publishEvent(bus, event(s.jobId, 'SaveRequested', { request: { requestId, vm, format: 'auto' } }));
    const cancelId = uniq('c');
    await client.cancel({ requestId: cancelId, jobId: s.jobId }, { admissionTimeoutMs: 100 });
    const onPartition = await bus.jsm.streams.getMessage(streams.commands.name, { last_by_subj: subjects.cmd.partitioned('cancel', partitionOf(vm)) });
    expect(onPartition?.json<{ requestId: string }>().requestId).toBe(cancelId);
    // A job whose events cannot be read (unknown here): the bare subject, where a scheduler forwards it.
    const bareId = uniq('c');
    await client.cancel({ requestId: bareId, jobId: jobIdFor('save', uniq('nobody')) }, { admissionTimeoutMs: 100 });
    expect((await bus.jsm.streams.getMessage(streams.commands.name, { last_by_subj: subjects.cmd.cancel }))?.json<{ requestId: string }>().requestId).toBe(bareId);
  });

  it("the admission answer comes back on the request's reply inbox", async () => {
    const requestId = uniq('answered');
    // On the VM's partition subject (`vmsave.cmd.save.<NN>`), as every save since bus API 1.1.
    const answered = answer(subjects.cmd.partitioned('save', partitionOf('web-1')), requestId, {
      outcome: 'accepted',
      requestId,
      jobId: jobIdFor('save', requestId),
      duplicate: false,
    });
    const r = await client.save({ requestId, vm: 'web-1' }, { admissionTimeoutMs: 10_000 });
    await answered;
    expect(r.admission).toEqual({ outcome: 'accepted', requestId, jobId: r.jobId, duplicate: false });
  });

  it('a duplicate request id is answered from the log: accepted, or the recorded rejection', async () => {
    const requestId = uniq('dup');
    const first = await client.save({ requestId, vm: 'web-1', format: 'legacy' }, { admissionTimeoutMs: 200 });
    // Before any scheduler wrote the job, a duplicate has no answer either.
    const early = await client.save({ requestId, vm: 'web-1', format: 'legacy' }, { admissionTimeoutMs: 200 });
    expect(early).toMatchObject({ jobId: first.jobId, duplicate: true, streamSeq: first.streamSeq, admission: undefined });

    await publishEvent(bus, event(first.jobId, 'SaveRequested', { request: { requestId, vm: 'web-1', format: 'legacy' } }));
    // Nobody answers on NATS here: the answer can only come from the log.
    const again = await client.save({ requestId, vm: 'web-1', format: 'legacy' }, { admissionTimeoutMs: 10_000 });
    expect(again).toEqual({ jobId: first.jobId, duplicate: true, streamSeq: first.streamSeq, admission: { outcome: 'accepted', requestId, jobId: first.jobId, duplicate: true } });

    const rejectedId = uniq('dup-rejected');
    const r1 = await client.save({ requestId: rejectedId, vm: 'nope' }, { admissionTimeoutMs: 200 });
    await publishEvent(bus, event(r1.jobId, 'SaveRequested', { request: { requestId: rejectedId, vm: 'nope' } }));
    await publishEvent(bus, event(r1.jobId, 'SaveRejected', { rule: 'vm-exists', field: 'vm', message: 'no announced host has a VM named "nope"' }));
    const r2 = await client.save({ requestId: rejectedId, vm: 'nope' });
    expect(r2.admission).toEqual({
      outcome: 'rejected',
      requestId: rejectedId,
      jobId: r1.jobId,
      rule: 'vm-exists',
      field: 'vm',
      message: 'no announced host has a VM named "nope"',
    });
  });

  it('waitForJob follows the log to the final state, with live progress; job() and history() fold the same events', async () => {
    const requestId = uniq('follow');
    const jobId = jobIdFor('save', requestId);
    await publishEvent(bus, event(jobId, 'SaveRequested', { request: { requestId, vm: 'web-1' } }));
    const seen: string[] = [];
    const progress: number[] = [];
    const waiting = client.waitForJob(jobId, { onEvent: (e, s) => seen.push(`${e.type}:${s.status}`), onProgress: (p) => progress.push(p.transferredBytes), timeoutMs: 20_000 });
    await new Promise((r) => setTimeout(r, 300));
    const sample = {
      jobId,
      host: 'h1',
      stage: 'save',
      status: 'active',
      transferredBytes: 1024,
      totalBytes: 4096,
      remainingBytes: 3072,
      bytesPerSec: 1024,
      at: new Date().toISOString(),
    };
    publishCore(bus, messages.progress, subjects.progress(jobId), sample);
    bus.nc.publish(subjects.progress(jobId), new TextEncoder().encode('{"not":"a sample"}'));
    await bus.nc.flush();
    await new Promise((r) => setTimeout(r, 100));
    await publishEvent(bus, event(jobId, 'SaveRejected', { rule: 'vm-exists', message: 'gone' }));
    const final = await waiting;
    expect(final.status).toBe('rejected');
    expect(seen).toEqual(['SaveRequested:requested', 'SaveRejected:rejected']);
    expect(progress).toEqual([1024]);
    expect((await client.job(jobId)).status).toBe('rejected');
    expect((await client.history(jobId)).map((e) => e.type)).toEqual(['SaveRequested', 'SaveRejected']);
  });

  it('waitForJob gives up with JobWaitTimeout naming the last state', async () => {
    const jobId = jobIdFor('save', uniq('never'));
    const err = await client.waitForJob(jobId, { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobWaitTimeout);
    expect(err).toMatchObject({ code: 'wait-timeout', retryable: true, message: `timed out waiting for job ${jobId} (last state: none)` });
  });

  it('cancel() with no scheduler: no answer in time', async () => {
    expect(await client.cancel({ requestId: uniq('cancel'), jobId: jobIdFor('save', uniq('x')), reason: 'test' }, { admissionTimeoutMs: 200 })).toBeUndefined();
  });
});
