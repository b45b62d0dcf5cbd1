import {
  commandForSubject,
  isReplySubject,
  jobIdFor,
  makeEvent,
  messages,
  upcast,
  type AdmissionReply,
  type CancelRequest,
  type RestoreRequest,
  type SaveRequest,
} from '@vmsave/contracts';
import { ack, BusValidationError, describeIssues, publishCore, type Bus, type Logger, type MessageContext, type Outcome } from '@vmsave/bus';
import { decide, initialState, ON_HOST_STATUSES } from '@vmsave/jobs';
import { askExecutorToCancel } from './control.ts';
import { SOURCE, type Journal } from './journal.ts';
import type { Placement } from './placement.ts';
import { admitRestore, admitSave } from './policy.ts';
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

/**
 * Admission of commands (`vmsave.cmd.*`): validates each, deduplicates by request id, records the
 * request and the admission rules' verdict as events, and answers on the command's
 * `Vmsave-Reply-To` (accepted, duplicate, or rejected naming the rule and the field) when that
 * is a well-formed inbox (`isReplySubject`); any other reply subject is logged and not answered.
 */
export class Admission {
  /** Schema failures already answered by `handle` (with their request id): `refuseUnreadable` skips them. */
  private readonly answered = new WeakSet<Error>();

  constructor(private readonly d: AdmissionDeps) {}

  /** One command from the consumer (run through `state.serial` by the caller). */
  async handle(raw: unknown, ctx: MessageContext): Promise<Outcome> {
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
        if (kind && !this.d.state.jobs.has(jobIdFor(kind, requestId))) {
          jobId = jobIdFor(kind, requestId);
          const type = kind === 'save' ? 'SaveRejected' : 'RestoreRejected';
          await this.d.journal.append(makeEvent(type, jobId, { rule: 'schema', field, message }, { source: SOURCE, eventId: `${jobId}.rejected` }));
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

  /** Answer a command the consumer could not read at all. */
  refuseUnreadable(err: Error, ctx: MessageContext): void {
    if (this.answered.has(err)) return;
    this.reply(ctx, { outcome: 'rejected', rule: 'schema', message: err.message });
  }

  private async onSave(req: SaveRequest, ctx: MessageContext): Promise<Outcome> {
    const { state, journal, placement } = this.d;
    const jobId = jobIdFor('save', req.requestId);
    const log = this.d.log.child({ jobId, vm: req.vm });
    const s = state.jobs.get(jobId) ?? { ...initialState(), jobId };
    if (s.status !== 'none') {
      log.info({ requestId: req.requestId }, 'duplicate save request: returning the existing job');
      this.reply(ctx, this.answer(jobId, true));
      return ack();
    }
    await journal.emit(s, { type: 'RequestSave', jobId, request: req }, `${jobId}.requested`);
    const adm = admitSave(req, state.hosts.values(), placement.admitOpts());
    if ('rule' in adm) {
      await journal.emit(state.jobs.get(jobId)!, { type: 'Reject', ...adm }, `${jobId}.rejected`);
      log.info({ rule: adm.rule }, `save rejected: ${adm.message}`);
    } else {
      state.placement.set(jobId, { host: adm.host, vm: req.vm, ramBytes: adm.ramBytes });
      log.info({ host: adm.host, format: adm.format }, 'save admitted');
    }
    this.reply(ctx, this.answer(jobId, false));
    placement.requestPump();
    return ack();
  }

  private async onRestore(req: RestoreRequest, ctx: MessageContext): Promise<Outcome> {
    const { state, journal, placement } = this.d;
    const jobId = jobIdFor('restore', req.requestId);
    const log = this.d.log.child({ jobId, image: req.image });
    const s = state.jobs.get(jobId) ?? { ...initialState(), jobId };
    if (s.status !== 'none') {
      this.reply(ctx, this.answer(jobId, true));
      return ack();
    }
    const adm = admitRestore(req, state.hosts, placement.knownImages(), placement.admitOpts());
    await journal.emit(
      s,
      { type: 'RequestRestore', jobId, request: req, vm: 'rule' in adm ? undefined : adm.vm, sourceJobId: 'rule' in adm ? undefined : adm.sourceJobId },
      `${jobId}.requested`,
    );
    if ('rule' in adm) {
      await journal.emit(state.jobs.get(jobId)!, { type: 'Reject', ...adm }, `${jobId}.rejected`);
      log.info({ rule: adm.rule }, `restore rejected: ${adm.message}`);
    } else {
      state.placement.set(jobId, { host: adm.host, vm: adm.vm, ramBytes: 0 });
      log.info({ host: adm.host }, 'restore admitted');
    }
    this.reply(ctx, this.answer(jobId, false));
    placement.requestPump();
    return ack();
  }

  private async onCancel(req: CancelRequest, ctx: MessageContext): Promise<Outcome> {
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
    const s = this.d.state.jobs.get(jobId)!;
    const requestId = s.saveRequest?.requestId ?? s.restoreRequest?.requestId ?? '';
    if (s.status === 'rejected' && s.rejection) return { outcome: 'rejected', requestId, jobId, ...s.rejection };
    return { outcome: 'accepted', requestId, jobId, duplicate };
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
