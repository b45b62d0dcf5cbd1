/**
 * Host drains (`vmsave.cmd.drain`, job `d-…`): the orchestrator around `decideDrain` (packages/jobs).
 *
 * A drain reads its host's VMs from the host's latest announcement, then asks one save per VM as
 * an ordinary command on `vmsave.cmd.save` (with `drainId`), so admission, the per-host limit and
 * priorities apply as to any client's save; it follows the children's events in the log and, with
 * `to`, asks a restore (`vmsave.cmd.restore`) for each VM whose image is verified. A cancel
 * naming the drain (`vmsave.cmd.cancel`) cancels its unfinished children the same way.
 *
 * All of it is the fold of the log: after a restart the open drains and their children are read
 * again (`DrainRequested` by type, then each job by id) and `Resume` asks again what may not have
 * been sent (child request ids are deterministic, so a second ask is a duplicate).
 */
import {
  type AdmissionReply,
  CancelRequest,
  DrainRequest,
  drainIdFor,
  isDrainId,
  isReplySubject,
  messages,
  partitionOf,
  streams,
  subjects,
  upcast,
  type HostAnnouncement,
  type JobEvent,
} from '@vmsave/contracts';
import {
  ack,
  describeIssues,
  eventsOfJob,
  publishCore,
  publishEvent,
  publishValidated,
  readHosts,
  readLog,
  type Bus,
  type Logger,
  type MessageContext,
  type Outcome,
} from '@vmsave/bus';
import {
  decideDrain,
  evolve,
  evolveDrain,
  initialDrainState,
  initialState,
  isDrainEvent,
  isDrainFinal,
  type DrainAction,
  type DrainCommand,
  type DrainState,
  type JobState,
} from '@vmsave/jobs';
import { SOURCE } from './journal.ts';

export interface DrainsDeps {
  bus: Bus;
  log: Logger;
  signal: AbortSignal;
  /** The host's latest announcement (default: read from VMSAVE_HOSTS). */
  announcement?: (host: string) => Promise<HostAnnouncement | undefined>;
}

export class Drains {
  private readonly drains = new Map<string, DrainState>();
  /** Child job id → its drain. */
  private readonly childOf = new Map<string, string>();
  private readonly children = new Map<string, JobState>();
  /** Highest log sequence folded per job (a job read by id and then by the follower is folded once). */
  private readonly seqOf = new Map<string, number>();
  /** Our own events, skipped when the log gives them back. */
  private readonly own = new Set<string>();
  private chain: Promise<unknown> = Promise.resolve();
  private readyResolve!: () => void;
  private readonly ready = new Promise<void>((r) => {
    this.readyResolve = r;
  });

  constructor(private readonly d: DrainsDeps) {}

  /** Whether a command on the command stream is a drain's: a drain request, or a cancel naming a drain. */
  static owns(raw: unknown, subject: string): boolean {
    if (subject === subjects.cmd.drain) return true;
    const jobId = (raw as { jobId?: unknown } | null)?.jobId;
    return subject === subjects.cmd.cancel && typeof jobId === 'string' && isDrainId(jobId);
  }

  /** Rebuild the open drains from the log, then follow it until `signal` aborts. */
  async run(): Promise<void> {
    const { bus, log, signal } = this.d;
    const info = await bus.jsm.streams.info(streams.events.name);
    const lastSeq = info.state.last_seq;
    let open = 0;
    try {
      for await (const { seq, event } of readLog(bus, { filter: subjects.evtOfType('DrainRequested'), signal })) {
        if (seq > lastSeq) break;
        if (this.drains.has(event.jobId)) continue;
        await this.readJob(event.jobId);
        const s = this.drains.get(event.jobId);
        if (!s || isDrainFinal(s)) continue;
        open++;
        for (const v of s.vms) for (const id of [v.saveJobId, v.restoreJobId]) if (id) await this.readJob(id);
        await this.decide(event.jobId, { type: 'Resume', children: this.childrenOf(s) });
      }
    } finally {
      this.readyResolve();
    }
    if (open) log.info({ open }, 'drains resumed from the log');
    for await (const { seq, event } of readLog(bus, { fromSeq: lastSeq + 1, follow: true, signal })) {
      if (this.own.delete(event.eventId)) continue;
      if (!isDrainId(event.jobId) && !this.childOf.has(event.jobId)) continue;
      void this.serial(() => this.onLogEvent(seq, event)).catch((err) => log.error({ err, jobId: event.jobId }, 'drain: applying a log event failed'));
    }
  }

  /** A drain request, or a cancel naming a drain (`Drains.owns`). */
  async handle(raw: unknown, ctx: MessageContext): Promise<Outcome> {
    await this.ready;
    return this.serial(() => (ctx.subject === subjects.cmd.drain ? this.onDrainRequest(raw, ctx) : this.onCancel(raw, ctx)));
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async onDrainRequest(raw: unknown, ctx: MessageContext): Promise<Outcome> {
    const { log } = this.d;
    const parsed = DrainRequest.safeParse(upcast(raw));
    if (!parsed.success) {
      const issues = describeIssues(parsed.error);
      const requestId = (raw as { requestId?: unknown } | null)?.requestId;
      log.warn({ issues, requestId }, 'drain request refused by its schema');
      this.reply(ctx, {
        outcome: 'rejected',
        ...(typeof requestId === 'string' ? { requestId: requestId.slice(0, 128) } : {}),
        rule: 'schema',
        field: parsed.error.issues[0]?.path.join('.') || undefined,
        message: `DrainRequest: ${issues.join('; ')}`,
      });
      return ack();
    }
    const request = parsed.data;
    const drainId = drainIdFor(request.requestId);
    const known = this.drains.get(drainId) ?? (await this.readJob(drainId));
    if (known && known.status !== 'none') {
      this.reply(ctx, { outcome: 'accepted', requestId: request.requestId, jobId: drainId, duplicate: true });
      return ack();
    }
    const announcement = this.d.announcement ?? ((h) => latestAnnouncement(this.d.bus, h));
    const a = await announcement(request.host);
    // A target no executor ever announced: refused before any VM quits (its restores could never be placed).
    const unknown = !a ? 'host' : request.to && request.to !== 'any' && request.to !== request.host && !(await announcement(request.to)) ? 'to' : undefined;
    if (!a || unknown) {
      const reason = `${unknown}: "${unknown === 'to' ? request.to : request.host}" has no announcement (no executor on it has been seen)`;
      await this.decide(drainId, { type: 'Refuse', drainId, request, reason });
      this.reply(ctx, { outcome: 'rejected', requestId: request.requestId, jobId: drainId, rule: 'host-known', field: unknown, message: reason });
      return ack();
    }
    const vms = a.vms.filter((v) => v.status !== 'stopped').map((v) => v.name);
    log.info({ jobId: drainId, host: request.host, to: request.to, vms }, 'drain requested');
    const targets = request.to === 'any' ? await liveHosts(this.d.bus, request.host) : undefined;
    await this.decide(drainId, { type: 'Start', drainId, request, vms, ...(targets ? { targets } : {}) });
    this.reply(ctx, { outcome: 'accepted', requestId: request.requestId, jobId: drainId, duplicate: false });
    return ack();
  }

  private async onCancel(raw: unknown, ctx: MessageContext): Promise<Outcome> {
    const parsed = CancelRequest.safeParse(upcast(raw));
    if (!parsed.success) {
      this.reply(ctx, { outcome: 'rejected', rule: 'schema', message: `CancelRequest: ${describeIssues(parsed.error).join('; ')}` });
      return ack();
    }
    const { jobId, requestId, reason } = parsed.data;
    const s = this.drains.get(jobId) ?? (await this.readJob(jobId));
    const d = decideDrain({ type: 'Cancel', reason, requestId }, s ?? initialDrainState(), { source: SOURCE });
    if (!d.ok) {
      this.reply(ctx, { outcome: 'rejected', requestId, jobId, rule: d.rule, field: 'jobId', message: `jobId: ${d.message}` });
      return ack();
    }
    const duplicate = d.events.length === 0;
    await this.apply(jobId, d.events, d.actions);
    this.d.log.info({ jobId, reason, cancels: d.actions.length }, duplicate ? 'drain cancel asked again' : 'drain cancel asked');
    this.reply(ctx, { outcome: 'accepted', requestId, jobId, duplicate });
    return ack();
  }

  private async onLogEvent(seq: number, e: JobEvent): Promise<void> {
    if ((this.seqOf.get(e.jobId) ?? 0) >= seq) return;
    this.seqOf.set(e.jobId, seq);
    if (isDrainEvent(e)) {
      // Another scheduler's (a former leader's) event: folded, nothing to decide.
      this.foldDrainEvent(e);
      return;
    }
    const drainId = this.childOf.get(e.jobId);
    if (!drainId) return;
    const child = evolve(this.children.get(e.jobId) ?? initialState(), e);
    this.children.set(e.jobId, child);
    await this.decide(drainId, { type: 'Observe', child });
  }

  /** Fold one job's whole history from the log (a drain, or a drain's child). */
  private async readJob(jobId: string): Promise<DrainState | undefined> {
    for (const { seq, event } of await eventsOfJob(this.d.bus, jobId)) {
      if ((this.seqOf.get(jobId) ?? 0) >= seq) continue;
      this.seqOf.set(jobId, seq);
      if (isDrainEvent(event)) this.foldDrainEvent(event);
      else this.children.set(jobId, evolve(this.children.get(jobId) ?? initialState(), event));
    }
    return this.drains.get(jobId);
  }

  private foldDrainEvent(e: JobEvent): void {
    const s = evolveDrain(this.drains.get(e.jobId) ?? initialDrainState(), e);
    this.drains.set(e.jobId, s);
    const final = isDrainFinal(s);
    for (const v of s.vms) {
      for (const id of [v.saveJobId, v.restoreJobId]) {
        if (!id) continue;
        // A finished drain follows its children no more.
        if (final) {
          this.childOf.delete(id);
          this.children.delete(id);
          this.seqOf.delete(id);
        } else this.childOf.set(id, e.jobId);
      }
    }
  }

  private childrenOf(s: DrainState): Map<string, JobState> {
    const m = new Map<string, JobState>();
    for (const v of s.vms) for (const id of [v.saveJobId, v.restoreJobId]) if (id && this.children.has(id)) m.set(id, this.children.get(id)!);
    return m;
  }

  private async decide(drainId: string, cmd: DrainCommand): Promise<void> {
    const d = decideDrain(cmd, this.drains.get(drainId) ?? initialDrainState(), { source: SOURCE });
    if (!d.ok) {
      this.d.log.warn({ jobId: drainId, rule: d.rule }, `drain: not applied: ${d.message}`);
      return;
    }
    await this.apply(drainId, d.events, d.actions);
  }

  /** Record the events first (they name the children), then ask for what they decided. */
  private async apply(drainId: string, events: JobEvent[], actions: DrainAction[]): Promise<void> {
    const { bus } = this.d;
    const log = this.d.log.child({ jobId: drainId });
    for (const e of events) {
      this.own.add(e.eventId);
      try {
        const ack = await publishEvent(bus, e);
        if (ack.seq > (this.seqOf.get(e.jobId) ?? 0)) this.seqOf.set(e.jobId, ack.seq);
      } catch (err) {
        this.own.delete(e.eventId);
        throw err;
      }
      this.foldDrainEvent(e);
      if (e.type === 'DrainVmUpdated')
        log.info(
          { vm: e.data.vm, phase: e.data.phase, saveJobId: e.data.saveJobId, restoreJobId: e.data.restoreJobId, error: e.data.error },
          `drain: ${e.data.vm} ${e.data.phase}`,
        );
      else if (e.type !== 'DrainRequested') log.info({ type: e.type }, `drain: ${e.type}`);
    }
    for (const a of actions) {
      this.childOf.set(a.jobId, drainId);
      // On the partitioned subjects: a save on its VM's partition, a restore on its image's, a cancel on its job's (the VM's).
      if (a.type === 'save')
        await publishValidated(bus, messages.saveRequest, subjects.cmd.partitioned('save', partitionOf(a.request.vm)), a.request, { msgId: a.request.requestId });
      else if (a.type === 'restore')
        await publishValidated(bus, messages.restoreRequest, subjects.cmd.partitioned('restore', partitionOf(a.request.image)), a.request, { msgId: a.request.requestId });
      else
        await publishValidated(
          bus,
          messages.cancelRequest,
          this.cancelSubject(a.jobId, a.vm),
          { requestId: a.requestId, jobId: a.jobId, reason: a.reason },
          { msgId: a.requestId },
        );
      log.info({ vm: a.vm, childJobId: a.jobId, action: a.type }, `drain: asked ${a.type} of ${a.vm}`);
    }
  }

  /** A child's cancel goes on its job's partition (its VM's; a restore whose VM the log does not know: its image's). A wrong guess is forwarded by the scheduler that gets it. */
  private cancelSubject(jobId: string, vm: string): string {
    const c = this.children.get(jobId);
    const key = c?.kind === 'restore' ? (c.vm ?? c.restoreRequest?.image ?? vm) : vm;
    return subjects.cmd.partitioned('cancel', partitionOf(key));
  }

  private reply(ctx: MessageContext, answer: AdmissionReply): void {
    const to = ctx.headers.get('Vmsave-Reply-To');
    if (!to) return;
    if (!isReplySubject(to)) {
      this.d.log.warn({ jobId: answer.jobId, subject: ctx.subject, replyTo: to.slice(0, 300) }, 'reply subject refused');
      return;
    }
    publishCore(this.d.bus, messages.admissionReply, to, answer);
  }
}

/** How recent a host's announcement must be for `to: any` to send restores to it. */
export const LIVE_ANNOUNCEMENT_MS = 120_000;

/** The hosts other than `except` whose latest announcement is recent (`LIVE_ANNOUNCEMENT_MS`), by name. */
export async function liveHosts(bus: Bus, except: string, now = Date.now()): Promise<string[]> {
  return [...(await latestAnnouncements(bus)).values()]
    .filter((a) => a.host !== except && now - Date.parse(a.at) <= LIVE_ANNOUNCEMENT_MS)
    .map((a) => a.host)
    .sort();
}

/** A host's latest announcement from VMSAVE_HOSTS. */
export async function latestAnnouncement(bus: Bus, host: string): Promise<HostAnnouncement | undefined> {
  return (await latestAnnouncements(bus)).get(host);
}

/** Every host's latest announcement in VMSAVE_HOSTS, by host. */
async function latestAnnouncements(bus: Bus): Promise<Map<string, HostAnnouncement>> {
  const latest = new Map<string, HostAnnouncement>();
  for await (const a of readHosts(bus)) latest.set(a.host, a);
  return latest;
}
