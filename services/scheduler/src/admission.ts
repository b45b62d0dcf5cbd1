import {
  commandForSubject,
  isReplySubject,
  jobIdFor,
  makeEvent,
  messages,
  upcast,
  type AdmissionReply,
  type CancelRequest,
  type JobEvent,
  type RestoreRequest,
  type SaveRequest,
} from '@vmsave/contracts';
import { ack, BusValidationError, describeIssues, publishCore, type Bus, type Logger, type MessageContext, type Outcome } from '@vmsave/bus';
import { decide, evolve, initialState, ON_HOST_STATUSES, type JobCommand, type JobState } from '@vmsave/jobs';
import { askExecutorToCancel } from './control.ts';
import { SOURCE, type Journal } from './journal.ts';
import type { Placement } from './placement.ts';
import { admitRestore, admitSave, type AdmitOptions, type HostView, type Refusal, type SaveAdmission } from './policy.ts';
import type { SchedulerState } from './state.ts';

export interface AdmissionDeps {
  bus: Bus;
  state: SchedulerState;
  journal: Journal;
  placement: Placement;
  log: Logger;
}

/** The request ids a refused request may still get a job for (the contracts' RequestId shape). */
const READABLE_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** Commands decided per turn of the event loop. */
const SLICE = 32;

/**
 * Admission of commands (`vmsave.cmd.*`): validates each, deduplicates by request id, records the
 * request and the admission rules' verdict as events, and answers on the command's
 * `Vmsave-Reply-To` (accepted, duplicate, or rejected naming the rule and the field) when that
 * is a well-formed inbox (`isReplySubject`); any other reply subject is logged and not answered.
 *
 * Pipelined: the consumer hands over many commands at once, and each is decided as it arrives
 * (synchronously, against the state folded so far) and its events published without waiting for
 * the previous command's publish ack. The events are folded in arrival order once stored, then
 * the command is answered and acked; a second command for a job whose events are being stored
 * waits for them (it is then a duplicate). So the job's first event is in the log when the
 * answer goes out, and per-VM order is arrival order.
 */
export class Admission {
  /** Schema failures already answered by `handle` (with their request id): `refuseUnreadable` skips them. */
  private readonly answered = new WeakSet<Error>();
  /** Jobs whose first events are being stored, until they are folded. */
  private readonly pending = new Map<string, Promise<void>>();
  /** Folds of admitted commands, in arrival order. */
  private commits: Promise<void> = Promise.resolve();
  private gate: Promise<void> = Promise.resolve();
  private inSlice = 0;

  constructor(private readonly d: AdmissionDeps) {}

  /** One command from the consumer; many may be in flight at once. */
  async handle(raw: unknown, ctx: MessageContext): Promise<Outcome> {
    await this.turn();
    const def = commandForSubject(ctx.subject);
    if (!def) throw new BusValidationError(`${ctx.subject}: not a command subject`, ['(subject): unknown']);
    const parsed = def.schema.safeParse(upcast(raw));
    if (!parsed.success) {
      const issues = describeIssues(parsed.error);
      const message = `${def.name}: ${issues.join('; ')}`;
      // A request whose id is readable still gets a job that says why it was refused.
      const requestId = (raw as { requestId?: unknown })?.requestId;
      const kind = def === messages.restoreRequest ? 'restore' : def === messages.saveRequest ? 'save' : undefined;
      const err = new BusValidationError(message, issues);
      if (typeof requestId === 'string' && READABLE_ID.test(requestId)) {
        const field = parsed.error.issues[0]!.path.join('.') || undefined;
        let jobId: string | undefined;
        if (kind) {
          const id = jobIdFor(kind, requestId);
          while (this.pending.has(id)) await this.pending.get(id);
          if (!this.d.state.jobs.has(id)) {
            jobId = id;
            const type = kind === 'save' ? 'SaveRejected' : 'RestoreRejected';
            await this.commit(id, [makeEvent(type, id, { rule: 'schema', field, message }, { source: SOURCE, eventId: `${id}.rejected` })]);
          }
        }
        // The answer names the request (and the job the rejection was recorded for).
        this.reply(ctx, { outcome: 'rejected', requestId, ...(jobId ? { jobId } : {}), rule: 'schema', ...(field ? { field } : {}), message });
        this.answered.add(err);
      }
      throw err;
    }
    const cmd = parsed.data as SaveRequest | RestoreRequest | CancelRequest;
    if (def === messages.saveRequest) return this.onSave(cmd as SaveRequest, ctx);
    if (def === messages.restoreRequest) return this.onRestore(cmd as RestoreRequest, ctx);
    return this.onCancel(cmd as CancelRequest, ctx);
  }

  /**
   * Let timers and other I/O run between slices of a burst (the Redis client, the log follower
   * and the watchdog would otherwise wait for the whole batch): every `SLICE` commands wait for
   * the next turn of the event loop. Commands resume in arrival order.
   */
  private turn(): Promise<void> {
    if (++this.inSlice >= SLICE) {
      this.inSlice = 0;
      this.gate = new Promise((r) => setImmediate(r));
    }
    return this.gate;
  }

  /** Answer a command the consumer could not read at all. */
  refuseUnreadable(err: Error, ctx: MessageContext): void {
    if (this.answered.has(err)) return;
    this.reply(ctx, { outcome: 'rejected', rule: 'schema', message: err.message });
  }

  /**
   * Publish a new job's first events at once and fold them, in arrival order, once stored;
   * `prepare` runs just before the fold (the placement). Rejects if any publish failed (the
   * command is then delivered again; what was stored is folded).
   */
  private commit(jobId: string, events: JobEvent[], prepare?: () => void): Promise<void> {
    const stored = Promise.allSettled(events.map((e) => this.d.journal.publish(e)));
    const done = this.commits.then(async () => {
      const results = await stored;
      prepare?.();
      let failure: unknown;
      for (const [i, r] of results.entries()) {
        if (r.status === 'fulfilled') this.d.journal.foldOnly(events[i]!);
        else failure ??= r.reason;
      }
      if (failure !== undefined) throw failure;
    });
    const settled = done.catch(() => undefined);
    this.commits = settled;
    this.pending.set(jobId, settled);
    void settled.then(() => {
      if (this.pending.get(jobId) === settled) this.pending.delete(jobId);
    });
    return done;
  }

  private async onSave(req: SaveRequest, ctx: MessageContext): Promise<Outcome> {
    const { state, placement } = this.d;
    const jobId = jobIdFor('save', req.requestId);
    const { log } = this.d;
    while (this.pending.has(jobId)) await this.pending.get(jobId);
    if ((state.jobs.get(jobId)?.status ?? 'none') !== 'none') {
      log.info({ jobId, vm: req.vm, requestId: req.requestId }, 'duplicate save request: returning the existing job');
      this.reply(ctx, this.answer(jobId, true));
      return ack();
    }
    const { events, admission: adm } = decideSave(state, jobId, req, placement.admitOpts());
    await this.commit(jobId, events, () => {
      if (!('rule' in adm)) state.setPlacement(jobId, { host: adm.host, vm: req.vm, ramBytes: adm.ramBytes });
    });
    // One line per admitted command only at debug: at info it cost a log write per request in a
    // burst, and the admission is in the log (`SaveRequested`) anyway. Rejections stay at info.
    if ('rule' in adm) log.info({ jobId, vm: req.vm, rule: adm.rule }, `save rejected: ${adm.message}`);
    else if (log.isLevelEnabled('debug')) log.debug({ jobId, vm: req.vm, host: adm.host, format: adm.format }, 'save admitted');
    this.reply(ctx, this.answer(jobId, false));
    placement.requestPump();
    return ack();
  }

  private async onRestore(req: RestoreRequest, ctx: MessageContext): Promise<Outcome> {
    const { state, placement } = this.d;
    const jobId = jobIdFor('restore', req.requestId);
    const log = this.d.log.child({ jobId, image: req.image });
    while (this.pending.has(jobId)) await this.pending.get(jobId);
    if ((state.jobs.get(jobId)?.status ?? 'none') !== 'none') {
      this.reply(ctx, this.answer(jobId, true));
      return ack();
    }
    const adm = admitRestore(req, state.hosts as Map<string, HostView>, placement.knownImages(), placement.admitOpts());
    const events = firstEvents(
      jobId,
      { type: 'RequestRestore', jobId, request: req, vm: 'rule' in adm ? undefined : adm.vm, sourceJobId: 'rule' in adm ? undefined : adm.sourceJobId },
      'rule' in adm ? adm : undefined,
    );
    await this.commit(jobId, events, () => {
      if (!('rule' in adm)) state.setPlacement(jobId, { host: adm.host, vm: adm.vm, ramBytes: 0, ...(adm.imageOnHost ? { image: adm.imageOnHost } : {}) });
    });
    if ('rule' in adm) log.info({ rule: adm.rule }, `restore rejected: ${adm.message}`);
    else log.info({ host: adm.host, vm: adm.vm, sourceJobId: adm.sourceJobId }, 'restore admitted');
    this.reply(ctx, this.answer(jobId, false));
    placement.requestPump();
    return ack();
  }

  private async onCancel(req: CancelRequest, ctx: MessageContext): Promise<Outcome> {
    // A job still being admitted is cancelled once it is in the log.
    while (this.pending.has(req.jobId)) await this.pending.get(req.jobId);
    return this.d.state.serial(() => this.cancelNow(req, ctx));
  }

  private async cancelNow(req: CancelRequest, ctx: MessageContext): Promise<Outcome> {
    const { state, journal } = this.d;
    const s = state.jobs.get(req.jobId);
    if (!s) {
      this.reply(ctx, { outcome: 'rejected', requestId: req.requestId, jobId: req.jobId, rule: 'job-unknown', field: 'jobId', message: `jobId: no job ${req.jobId}` });
      return ack();
    }
    const d = decide({ type: 'Cancel', reason: req.reason, requestId: req.requestId }, s, { source: SOURCE });
    if (!d.ok) {
      this.reply(ctx, { outcome: 'rejected', requestId: req.requestId, jobId: req.jobId, rule: d.rule, message: d.message });
      return ack();
    }
    for (const e of d.events) await journal.append(e);
    if (s.host && s.status !== 'none' && ON_HOST_STATUSES.has(s.status)) await askExecutorToCancel(this.d.bus, this.d.log, s.host, req.jobId, req.reason);
    this.reply(ctx, { outcome: 'accepted', requestId: req.requestId, jobId: req.jobId, duplicate: d.events.length === 0 });
    return ack();
  }

  private answer(jobId: string, duplicate: boolean): AdmissionReply {
    return answerFor(this.d.state, jobId, duplicate);
  }

  /**
   * The admission answer, on the reply subject the command named (if any), only when it is a
   * well-formed inbox: the scheduler publishes with its own rights, so a command must not make
   * it publish into the event log, a work queue, the dead letters or a wildcard.
   */
  private reply(ctx: MessageContext, answer: AdmissionReply): void {
    const to = ctx.headers.get('Vmsave-Reply-To');
    if (!to) return;
    if (!isReplySubject(to)) {
      this.d.log.warn(
        {
          jobId: answer.jobId,
          requestId: answer.requestId,
          subject: ctx.subject,
          replyTo: to.slice(0, 300),
          rule: 'Vmsave-Reply-To: an inbox, _INBOX. then tokens of letters, digits, _ - (max 256 chars)',
        },
        'reply subject refused',
      );
      return;
    }
    publishCore(this.d.bus, messages.admissionReply, to, answer);
  }
}

/**
 * A new job's first events, each with its fixed id (a redelivered command appends the same
 * ones): its request, and the rejection of an admission rule when one was broken. Pure.
 */
export function firstEvents(jobId: string, cmd: Extract<JobCommand, { type: 'RequestSave' | 'RequestRestore' }>, refusal?: Refusal, now?: Date): JobEvent[] {
  const s: JobState = { ...initialState(), jobId };
  const d = decide(cmd, s, { source: SOURCE, now });
  if (!d.ok || !d.events.length) throw new Error(`${jobId}: ${cmd.type} not applicable to a new job`);
  const events = [{ ...d.events[0]!, eventId: `${jobId}.requested` }];
  if (refusal) {
    const r = decide({ type: 'Reject', ...refusal }, evolve(s, events[0]!), { source: SOURCE, now });
    if (r.ok && r.events.length) events.push({ ...r.events[0]!, eventId: `${jobId}.rejected` });
  }
  return events;
}

/** The admission of a new save job, decided against the state (only the hosts that announce its VM): its events, and where it goes. Pure. */
export function decideSave(state: SchedulerState, jobId: string, req: SaveRequest, opts: AdmitOptions, now?: Date): { events: JobEvent[]; admission: SaveAdmission | Refusal } {
  const admission = admitSave(req, state.hostsWithVm(req.vm), opts);
  return { events: firstEvents(jobId, { type: 'RequestSave', jobId, request: req }, 'rule' in admission ? admission : undefined, now), admission };
}

/** The admission answer for a job the state knows. */
export function answerFor(state: SchedulerState, jobId: string, duplicate: boolean): AdmissionReply {
  const s = state.jobs.get(jobId)!;
  const requestId = s.saveRequest?.requestId ?? s.restoreRequest?.requestId ?? '';
  if (s.status === 'rejected' && s.rejection) return { outcome: 'rejected', requestId, jobId, ...s.rejection };
  return { outcome: 'accepted', requestId, jobId, duplicate };
}
