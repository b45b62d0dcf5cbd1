import { createInbox } from '@nats-io/nats-core';
import {
  AdmissionReply, ProgressSample, jobIdFor, messages, subjects,
  type CancelRequestInput, type JobEvent, type RestoreRequestInput, type SaveRequestInput,
} from '@vmsave/contracts';
import { decodeMessage, eventsOfJob, publishValidated, readLog, type Bus } from '@vmsave/bus';
import { fold, isFinal, type JobState } from '@vmsave/jobs';

/**
 * The client side of the bus: publish requests (deduplicated by request id), get the
 * scheduler's admission answer, follow a job's events and progress.
 *
 * @example
 * const client = new VmsaveClient(bus);
 * const { jobId, admission } = await client.save({ requestId: 'evacuate-42', vm: 'web-1', format: 'sparse' });
 * const final = await client.waitForJob(jobId, { until: (s) => s.status === 'verified' });
 */
export class VmsaveClient {
  constructor(readonly bus: Bus) {}

  save(req: SaveRequestInput, opts: { admissionTimeoutMs?: number } = {}) {
    return this.submit('save', messages.saveRequest, subjects.cmd.save, req, opts);
  }

  restore(req: RestoreRequestInput, opts: { admissionTimeoutMs?: number } = {}) {
    return this.submit('restore', messages.restoreRequest, subjects.cmd.restore, req, opts);
  }

  async cancel(req: CancelRequestInput, opts: { admissionTimeoutMs?: number } = {}): Promise<AdmissionReply | undefined> {
    const inbox = createInbox();
    const sub = this.bus.nc.subscribe(inbox, { max: 1 });
    await publishValidated(this.bus, messages.cancelRequest, subjects.cmd.cancel, req, { msgId: req.requestId, replyTo: inbox });
    return this.firstReply(sub, opts.admissionTimeoutMs ?? 10_000);
  }

  private async submit(kind: 'save' | 'restore', def: typeof messages.saveRequest | typeof messages.restoreRequest, subject: string, req: SaveRequestInput | RestoreRequestInput, opts: { admissionTimeoutMs?: number }) {
    const inbox = createInbox();
    const sub = this.bus.nc.subscribe(inbox, { max: 1 });
    const { ack } = await publishValidated(this.bus, def as typeof messages.saveRequest, subject, req as SaveRequestInput, { msgId: req.requestId, replyTo: inbox });
    const jobId = jobIdFor(kind, req.requestId);
    // A duplicate publish is dropped by JetStream and gets no second answer: the log has it.
    const admission = ack.duplicate ? await this.admissionFromLog(jobId) : await this.firstReply(sub, opts.admissionTimeoutMs ?? 10_000);
    if (ack.duplicate) sub.unsubscribe();
    return { jobId, duplicate: ack.duplicate, streamSeq: ack.seq, admission };
  }

  private async firstReply(sub: ReturnType<Bus['nc']['subscribe']>, timeoutMs: number): Promise<AdmissionReply | undefined> {
    const timer = setTimeout(() => sub.unsubscribe(), timeoutMs);
    try {
      for await (const m of sub) return decodeMessage(AdmissionReply, m.data, 'admission reply');
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  private async admissionFromLog(jobId: string): Promise<AdmissionReply | undefined> {
    const s = await this.job(jobId);
    if (s.status === 'none') return undefined;
    const requestId = s.saveRequest?.requestId ?? s.restoreRequest?.requestId ?? '';
    return s.status === 'rejected' && s.rejection && !s.checks
      ? { outcome: 'rejected', requestId, jobId, ...s.rejection }
      : { outcome: 'accepted', requestId, jobId, duplicate: true };
  }

  /** A job's state, folded from its whole history in the log. */
  async job(jobId: string): Promise<JobState> {
    return fold((await eventsOfJob(this.bus, jobId)).map((e) => e.event));
  }

  async history(jobId: string): Promise<JobEvent[]> {
    return (await eventsOfJob(this.bus, jobId)).map((e) => e.event);
  }

  /**
   * Follow a job until `until` holds (default: final — terminal with no retry to come, or a
   * completed restore) or the time is up.
   * `onEvent` sees every event, `onProgress` every progress sample.
   */
  async waitForJob(
    jobId: string,
    opts: { until?: (s: JobState) => boolean; timeoutMs?: number; onEvent?: (e: JobEvent, s: JobState) => void; onProgress?: (p: ProgressSample) => void; signal?: AbortSignal } = {},
  ): Promise<JobState> {
    const until = opts.until ?? isFinal;
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), opts.timeoutMs ?? 10 * 60_000);
    opts.signal?.addEventListener('abort', () => ac.abort(), { once: true });
    const progress = opts.onProgress ? this.bus.nc.subscribe(subjects.progress(jobId)) : undefined;
    if (progress) {
      void (async () => {
        for await (const m of progress) {
          try { opts.onProgress!(decodeMessage(ProgressSample, m.data, m.subject)); } catch { /* ignore a bad sample */ }
        }
      })();
    }
    let state = fold([]);
    try {
      for await (const { event } of readLog(this.bus, { filter: subjects.evtOfJob(jobId), follow: true, signal: ac.signal })) {
        state = fold([event], state);
        opts.onEvent?.(event, state);
        if (until(state)) return state;
      }
      throw new Error(`timed out waiting for job ${jobId} (last state: ${state.status})`);
    } finally {
      clearTimeout(timer);
      progress?.unsubscribe();
    }
  }
}
