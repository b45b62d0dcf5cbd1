import {
  jobIdFor,
  messages,
  partitionKeyOfRequest,
  partitionOf,
  subjects,
  type AdmissionReply,
  type CancelRequestInput,
  type JobEvent,
  type ProgressSample,
  type RestoreRequestInput,
  type SaveRequestInput,
} from '@vmsave/contracts';
import { awaitAnswer, eventsOfJob, publishValidated, readLog, subscribeValidated, type Bus } from '@vmsave/bus';
import { fold, isFinal, type JobState } from '@vmsave/jobs';
import { ClientError, JobWaitTimeout } from './errors.ts';

/** Options of a request that waits for the scheduler's admission answer. */
export interface AdmissionOptions {
  /** How long to wait for the answer (default 10 s); then `admission` is `undefined`. */
  admissionTimeoutMs?: number;
}

/** What `save` and `restore` return once the request is in the commands stream. */
export interface Submitted {
  /** The job's id, derived from the kind and the request id (the same request id names the same job). */
  jobId: string;
  /** JetStream dropped this publish as a repeat of an earlier one with the same request id. */
  duplicate: boolean;
  /** Sequence of the request in the commands stream (of the first publish when `duplicate`). */
  streamSeq: number;
  /**
   * The scheduler's answer; for a duplicate, rebuilt from the event log. `undefined` when no
   * answer came in time (no scheduler running) or a duplicate's job is not in the log yet.
   */
  admission: AdmissionReply | undefined;
}

export interface WaitOptions {
  /** Stop when this holds (default `isFinal`: terminal with no retry to come, or a completed restore). */
  until?: (s: JobState) => boolean;
  /** Give up after this long (default 10 min) with `JobWaitTimeout`. */
  timeoutMs?: number;
  /** Every event of the job, in log order, with the state after it. */
  onEvent?: (e: JobEvent, s: JobState) => void;
  /** Every progress sample the executor publishes (core NATS: live only, none are replayed). */
  onProgress?: (p: ProgressSample) => void;
  /** Stop waiting (then `waitForJob` throws a `ClientError` with code `aborted`). */
  signal?: AbortSignal;
}

const DEFAULT_ADMISSION_TIMEOUT_MS = 10_000;

/**
 * The client side of the bus: publish requests (deduplicated by request id), get the
 * scheduler's admission answer, follow a job's events and progress. It owns no connection:
 * give it a connected `Bus` and close that yourself.
 *
 * @example
 * const bus = await Bus.connect({ servers: 'nats://127.0.0.1:4222', name: 'my-tool' });
 * const client = new VmsaveClient(bus);
 * const { jobId, admission } = await client.save({ requestId: 'evacuate-42', vm: 'web-1', format: 'sparse' });
 * if (admission?.outcome !== 'accepted') throw new Error(admission ? admission.message : 'no scheduler answered');
 * const final = await client.waitForJob(jobId, { until: (s) => s.status === 'verified' });
 * await bus.close();
 */
export class VmsaveClient {
  constructor(readonly bus: Bus) {}

  /**
   * Ask for a save. Resolves once the request is stored and the scheduler answered (or the
   * admission time ran out); a repeated `requestId` names the same job and is answered from the log.
   *
   * @example
   * const r = await client.save({ requestId: 'nightly-web-1-2026-12-03', vm: 'web-1', format: 'sparse', channels: 4 });
   * if (r.admission?.outcome === 'rejected') console.error(r.admission.rule, r.admission.message);
   */
  save(req: SaveRequestInput, opts: AdmissionOptions = {}): Promise<Submitted> {
    return this.submit('save', req, opts);
  }

  /**
   * Ask for a restore of an image (a path inside the host's image directory, or its file name).
   *
   * @example
   * const r = await client.restore({ requestId: 'rollback-7', image: 'web-1-s-3f….vmsave', after: 'running' });
   * const s = await client.waitForJob(r.jobId);
   */
  restore(req: RestoreRequestInput, opts: AdmissionOptions = {}): Promise<Submitted> {
    return this.submit('restore', req, opts);
  }

  /**
   * Ask to cancel a queued or running job; resolves with the scheduler's answer (`undefined`
   * when none came in time).
   *
   * @example
   * const a = await client.cancel({ requestId: 'cancel-1', jobId, reason: 'maintenance window over' });
   */
  async cancel(req: CancelRequestInput, opts: AdmissionOptions = {}): Promise<AdmissionReply | undefined> {
    // On the partition of the job's VM (read from its first event), so the scheduler running the job gets it; the bare subject when that is unknown.
    const subject = await this.cancelSubject(req.jobId);
    const answer = this.answer();
    try {
      await publishValidated(this.bus, messages.cancelRequest, subject, req, { msgId: req.requestId, replyTo: answer.inbox });
    } catch (err) {
      answer.cancel();
      throw err;
    }
    return answer.wait(opts.admissionTimeoutMs ?? DEFAULT_ADMISSION_TIMEOUT_MS);
  }

  /**
   * The admission answer's inbox, subscribed before the request is published (so the answer
   * cannot come before anyone listens); `wait` starts the admission time once it is published.
   */
  private answer(): { inbox: string; cancel(): void; wait(timeoutMs: number): Promise<AdmissionReply | undefined> } {
    // No timeout of its own: `wait` cancels it.
    const a = awaitAnswer(this.bus, messages.admissionReply, { timeoutMs: 2 ** 31 - 1 });
    return {
      inbox: a.inbox,
      cancel: a.cancel,
      async wait(timeoutMs) {
        const timer = setTimeout(a.cancel, timeoutMs);
        try {
          return await a.value;
        } finally {
          clearTimeout(timer);
        }
      },
    };
  }

  /** `vmsave.cmd.cancel.<NN>` for the job's VM partition, or the bare `vmsave.cmd.cancel` when its first event cannot be read. */
  private async cancelSubject(jobId: string): Promise<string> {
    const first = await eventsOfJob(this.bus, jobId)
      .then((l) => l[0]?.event)
      .catch(() => undefined);
    if (first?.type === 'SaveRequested') return subjects.cmd.partitioned('cancel', partitionOf(partitionKeyOfRequest({ kind: 'save', vm: first.data.request.vm })));
    if (first?.type === 'RestoreRequested')
      return subjects.cmd.partitioned('cancel', partitionOf(partitionKeyOfRequest({ kind: 'restore', vm: first.data.vm, image: first.data.request.image })));
    return subjects.cmd.cancel;
  }

  private async submit(kind: 'save' | 'restore', req: SaveRequestInput | RestoreRequestInput, opts: AdmissionOptions): Promise<Submitted> {
    const answer = this.answer();
    let ack: Awaited<ReturnType<typeof publishValidated>>['ack'];
    try {
      ({ ack } =
        kind === 'save'
          ? await publishValidated(this.bus, messages.saveRequest, commandSubject('save', req as SaveRequestInput), req as SaveRequestInput, {
              msgId: req.requestId,
              replyTo: answer.inbox,
            })
          : await publishValidated(this.bus, messages.restoreRequest, commandSubject('restore', req as RestoreRequestInput), req as RestoreRequestInput, {
              msgId: req.requestId,
              replyTo: answer.inbox,
            }));
    } catch (err) {
      answer.cancel();
      throw err;
    }
    const jobId = jobIdFor(kind, req.requestId);
    // JetStream drops a duplicate publish, so the scheduler never sees it and never answers: the log has the answer.
    if (ack.duplicate) answer.cancel();
    const admission = ack.duplicate ? await this.admissionFromLog(jobId) : await answer.wait(opts.admissionTimeoutMs ?? DEFAULT_ADMISSION_TIMEOUT_MS);
    return { jobId, duplicate: ack.duplicate, streamSeq: ack.seq, admission };
  }

  private async admissionFromLog(jobId: string): Promise<AdmissionReply | undefined> {
    const s = await this.job(jobId);
    if (s.status === 'none') return undefined;
    const requestId = s.saveRequest?.requestId ?? s.restoreRequest?.requestId ?? '';
    return s.status === 'rejected' && s.rejection && !s.checks
      ? { outcome: 'rejected', requestId, jobId, ...s.rejection }
      : { outcome: 'accepted', requestId, jobId, duplicate: true };
  }

  /**
   * A job's state, folded from its whole history in the log (`status: 'none'` for an unknown job).
   *
   * @example
   * const s = await client.job('s-3f2a…');
   * console.log(s.status, s.imagePath);
   */
  async job(jobId: string): Promise<JobState> {
    return fold(await this.history(jobId));
  }

  /**
   * Every event of a job, in log order.
   *
   * @example
   * for (const e of await client.history(jobId)) console.log(e.at, e.type);
   */
  async history(jobId: string): Promise<JobEvent[]> {
    return (await eventsOfJob(this.bus, jobId)).map((e) => e.event);
  }

  /**
   * Follow a job from the start of its history until `until` holds (default: final) or the
   * time is up (`JobWaitTimeout`). `onEvent` sees every event, `onProgress` every live progress sample.
   *
   * @example
   * const s = await client.waitForJob(jobId, {
   *   timeoutMs: 5 * 60_000,
   *   onProgress: (p) => console.log(`${p.stage} ${p.transferredBytes}/${p.totalBytes}`),
   * });
   * if (s.status !== 'verified') throw new Error(`save ended ${s.status}`);
   */
  async waitForJob(jobId: string, opts: WaitOptions = {}): Promise<JobState> {
    const until = opts.until ?? isFinal;
    const timeoutMs = opts.timeoutMs ?? 10 * 60_000;
    const ac = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, timeoutMs);
    const onAbort = () => ac.abort();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.signal?.aborted) ac.abort();
    const onProgress = opts.onProgress;
    const progress = onProgress ? subscribeValidated(this.bus, messages.progress, subjects.progress(jobId), { signal: ac.signal }) : undefined;
    if (progress) {
      void (async () => {
        // A bad sample is skipped by subscribeValidated; a throwing callback must not end the stream.
        for await (const { value } of progress) {
          try {
            onProgress!(value);
          } catch {
            /* the caller's problem, not the wait's */
          }
        }
      })().catch(() => undefined);
    }
    let state = fold([]);
    try {
      for await (const { event } of readLog(this.bus, { filter: subjects.evtOfJob(jobId), follow: true, signal: ac.signal })) {
        state = fold([event], state);
        opts.onEvent?.(event, state);
        if (until(state)) return state;
      }
      if (timedOut || !opts.signal?.aborted) throw new JobWaitTimeout(jobId, state.status, timeoutMs);
      throw new ClientError(`stopped waiting for job ${jobId} (last state: ${state.status})`, 'aborted', false, { cause: opts.signal.reason });
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      progress?.unsubscribe();
    }
  }
}

/**
 * The partitioned subject of a save (`vmsave.cmd.save.<NN>`, the VM's partition) or a restore
 * (`vmsave.cmd.restore.<NN>`, its image's: the client does not know the image's VM). A request
 * whose key does not parse as a string goes on the bare subject, where validation refuses it.
 */
export function commandSubject(kind: 'save' | 'restore', req: SaveRequestInput | RestoreRequestInput): string {
  const key = kind === 'save' ? (req as SaveRequestInput).vm : (req as RestoreRequestInput).image;
  if (typeof key !== 'string') return kind === 'save' ? subjects.cmd.save : subjects.cmd.restore;
  return subjects.cmd.partitioned(kind, partitionOf(key));
}
