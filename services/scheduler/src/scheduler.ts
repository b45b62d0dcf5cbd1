import { z } from 'zod';
import type { Redis } from 'ioredis';
import {
  AdmissionReply, ControlReply, ControlRequest, Heartbeat, commandForSubject, jobIdFor, makeEvent, messages, subjects, streams, upcast,
  type CancelRequest, type JobEvent, type RestoreRequest, type SaveRequest, type WorkItem,
} from '@vmsave/contracts';
import {
  ack, BusValidationError, decodeMessage, describeIssues, eventsOfJob, publishEvent, publishValidated, readHosts, readLog, runConsumer,
  type Bus, type Logger, type MessageContext, type Outcome,
} from '@vmsave/bus';
import { decide, decideRetry, evolve, initialState, isTerminal, type JobCommand, type JobState } from '@vmsave/jobs';
import { Leases, type Lease } from '@vmsave/store';
import type { SchedulerConfig } from './config.ts';
import {
  admitRestore, admitSave, defaultDeadlineMs, pickNext, retryDelayMs,
  type HostView, type KnownImage, type QueuedJob, type Refusal,
} from './policy.ts';

const SOURCE = 'scheduler';
/** The lease that makes one scheduler the active one (not a valid VM name, so never a VM's lease). */
const LEADER = '_scheduler';
const ACTIVE = new Set(['scheduled', 'running']);

/**
 * The scheduler: admits commands, serialises work per VM, places it on hosts within their
 * limits, retries retryable failures, and fails jobs whose executor went silent.
 *
 * All state is folded from the event log (plus host announcements and heartbeats), so a
 * restarted scheduler resumes where the log says. Every state change runs through `serial`,
 * one at a time. One scheduler runs per deployment.
 */
export class Scheduler {
  readonly jobs = new Map<string, JobState>();
  /** Jobs not yet final: the only ones placement and the watchdog look at (the log holds many more). */
  private readonly open = new Set<string>();
  readonly hosts = new Map<string, HostView>();
  private readonly heartbeats = new Map<string, { atMs: number; jobs: Set<string> }>();
  /** Last time each active job was known alive (scheduled, or named in a heartbeat). */
  private readonly seen = new Map<string, number>();
  /** Host and VM an admitted job was placed on (recomputed after a restart). */
  private readonly placement = new Map<string, { host: string; vm?: string; ramBytes: number }>();
  private readonly own = new Set<string>();
  private readonly leases: Leases;
  private chain: Promise<unknown> = Promise.resolve();
  private readonly ac = new AbortController();
  private tasks: Promise<unknown>[] = [];
  private startedAtMs = Date.now();
  private readonly id = `scheduler-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

  constructor(
    private readonly bus: Bus,
    redis: Redis,
    private readonly cfg: SchedulerConfig,
    private readonly log: Logger,
  ) {
    this.leases = new Leases(redis, cfg.VMSAVE_REDIS_PREFIX);
  }

  private leader?: Lease;

  /**
   * Become the one active scheduler (a Redis lease; a second scheduler waits as a standby),
   * rebuild from the log, then follow hosts, heartbeats, events and commands until `stop()`.
   * `onLostLeadership` is called if the lease is ever lost; the process should then exit.
   */
  async start(onLostLeadership: () => void = () => undefined): Promise<void> {
    const signal = this.ac.signal;
    for (let waited = false; !this.leader; waited = true) {
      this.leader = await this.leases.acquire(LEADER, this.id, this.cfg.VMSAVE_LEASE_TTL_MS);
      if (this.leader) break;
      if (!waited) this.log.warn({ holder: await this.leases.holder(LEADER) }, 'another scheduler is active; standing by');
      await new Promise((r) => setTimeout(r, Math.max(200, this.cfg.VMSAVE_LEASE_TTL_MS / 3)));
      if (signal.aborted) return;
    }
    const renew = setInterval(() => {
      void (async () => {
        if (await this.leases.renew(this.leader!, this.cfg.VMSAVE_LEASE_TTL_MS)) return;
        // The lease vanished (Redis flushed or restarted): take it again unless another scheduler has.
        const again = await this.leases.acquire(LEADER, this.id, this.cfg.VMSAVE_LEASE_TTL_MS);
        if (again) {
          this.leader = again;
          this.log.warn('scheduler lease was gone (Redis flushed?); re-acquired it');
        } else if (!signal.aborted) {
          this.log.error({ holder: await this.leases.holder(LEADER) }, 'lost the scheduler lease to another scheduler; stopping');
          onLostLeadership();
        }
      })().catch((err) => this.log.warn({ err }, 'could not renew the scheduler lease'));
    }, Math.max(100, this.cfg.VMSAVE_LEASE_TTL_MS / 3));
    signal.addEventListener('abort', () => clearInterval(renew), { once: true });
    this.startedAtMs = Date.now();
    let lastSeq = 0;
    for await (const { seq, event } of readLog(this.bus)) {
      this.put(event.jobId, evolve(this.jobs.get(event.jobId) ?? initialState(), event));
      lastSeq = seq;
    }
    for await (const a of readHosts(this.bus)) this.hosts.set(a.host, { announcement: a, lastSeenMs: Date.parse(a.at) });
    const active = [...this.openJobs()].filter((j) => ACTIVE.has(j.status)).length;
    this.log.info({ jobs: this.jobs.size, active, hosts: this.hosts.size, lastSeq }, 'scheduler rebuilt its view from the log');

    // While this scheduler was cut off it heard no heartbeats: that silence says nothing about executors.
    const off = this.bus.onReconnect(() => {
      const now = Date.now();
      for (const id of this.seen.keys()) this.seen.set(id, now);
      for (const h of this.heartbeats.values()) h.atMs = now;
    });
    signal.addEventListener('abort', off, { once: true });
    const hb = this.bus.nc.subscribe(subjects.heartbeatAll);
    signal.addEventListener('abort', () => hb.unsubscribe(), { once: true });
    this.tasks.push(
      (async () => {
        for await (const m of hb) {
          try {
            this.onHeartbeat(decodeMessage(Heartbeat, m.data, m.subject));
          } catch (err) {
            this.log.warn({ err: (err as Error).message, subject: m.subject }, 'invalid heartbeat ignored');
          }
        }
      })(),
      (async () => {
        for await (const a of readHosts(this.bus, { follow: true, signal, onResume: this.resumed('host announcements') })) {
          const prev = this.hosts.get(a.host);
          this.hosts.set(a.host, { announcement: a, lastSeenMs: Math.max(Date.parse(a.at), prev?.lastSeenMs ?? 0) });
          this.requestPump();
        }
      })(),
      (async () => {
        for await (const { event } of readLog(this.bus, { fromSeq: lastSeq + 1, follow: true, signal, onResume: this.resumed('event log') })) {
          // Our own events come back through the log; they were applied when appended.
          if (this.own.delete(event.eventId)) continue;
          await this.serial(() => this.onLogEvent(event));
        }
      })(),
      runConsumer(this.bus, {
        stream: streams.commands.name,
        durable: 'scheduler',
        filterSubject: subjects.cmd.all,
        schema: z.unknown(),
        service: SOURCE,
        log: this.log,
        signal,
        handler: (raw, ctx) => this.serial(() => this.onCommand(raw, ctx)),
        onInvalid: (err, ctx) => this.reply(ctx, { outcome: 'rejected', rule: 'schema', message: err.message }),
      }),
    );
    const tick = setInterval(() => void this.serial(() => this.tick()).catch((err) => this.log.error({ err }, 'tick failed')), this.cfg.VMSAVE_TICK_MS);
    signal.addEventListener('abort', () => clearInterval(tick), { once: true });
    await this.serial(() => this.pump());
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await Promise.allSettled(this.tasks);
    await this.chain.catch(() => undefined);
    if (this.leader) await this.leases.release(this.leader).catch(() => false);
  }

  private put(jobId: string, s: JobState): void {
    this.jobs.set(jobId, s);
    if (s.status === 'none' || isTerminal(s) || s.status === 'completed') this.open.delete(jobId);
    else this.open.add(jobId);
  }

  private *openJobs(): Iterable<JobState> {
    for (const id of this.open) yield this.jobs.get(id)!;
  }

  /** Run state changes one at a time. */
  /** A log line for a following read reopened after NATS went away. */
  private resumed(what: string) {
    return (err: unknown, attempt: number) => this.log.warn({ err: (err as Error)?.message ?? String(err), attempt }, `${what}: read reopened`);
  }

  private serial<T>(fn: () => Promise<T> | T): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /* ---------------- commands ---------------- */

  private async onCommand(raw: unknown, ctx: MessageContext): Promise<Outcome> {
    const def = commandForSubject(ctx.subject);
    if (!def) throw new BusValidationError(`${ctx.subject}: not a command subject`, ['(subject): unknown']);
    const parsed = def.schema.safeParse(upcast(raw));
    if (!parsed.success) {
      const issues = describeIssues(parsed.error);
      const message = `${def.name}: ${issues.join('; ')}`;
      // A request whose id is readable still gets a job that says why it was refused.
      const requestId = (raw as { requestId?: unknown })?.requestId;
      const kind = def === messages.restoreRequest ? 'restore' : def === messages.saveRequest ? 'save' : undefined;
      if (kind && typeof requestId === 'string' && /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(requestId)) {
        const jobId = jobIdFor(kind, requestId);
        if (!this.jobs.has(jobId)) {
          const field = parsed.error.issues[0]!.path.join('.') || undefined;
          const type = kind === 'save' ? 'SaveRejected' : 'RestoreRejected';
          await this.append(makeEvent(type, jobId, { rule: 'schema', field, message }, { source: SOURCE, eventId: `${jobId}.rejected` }));
        }
      }
      throw new BusValidationError(message, issues);
    }
    const cmd = parsed.data as SaveRequest | RestoreRequest | CancelRequest;
    if (def === messages.saveRequest) return this.onSave(cmd as SaveRequest, ctx);
    if (def === messages.restoreRequest) return this.onRestore(cmd as RestoreRequest, ctx);
    return this.onCancel(cmd as CancelRequest, ctx);
  }

  private async onSave(req: SaveRequest, ctx: MessageContext): Promise<Outcome> {
    const jobId = jobIdFor('save', req.requestId);
    const log = this.log.child({ jobId, vm: req.vm });
    const s = this.jobs.get(jobId) ?? { ...initialState(), jobId };
    if (s.status !== 'none') {
      log.info({ requestId: req.requestId }, 'duplicate save request: returning the existing job');
      this.reply(ctx, this.answer(jobId, true));
      return ack();
    }
    await this.emit(s, { type: 'RequestSave', jobId, request: req }, `${jobId}.requested`);
    const adm = admitSave(req, this.hosts.values(), this.admitOpts());
    if ('rule' in adm) {
      await this.emit(this.jobs.get(jobId)!, { type: 'Reject', ...adm }, `${jobId}.rejected`);
      log.info({ rule: adm.rule }, `save rejected: ${adm.message}`);
    } else {
      this.placement.set(jobId, { host: adm.host, vm: req.vm, ramBytes: adm.ramBytes });
      log.info({ host: adm.host, format: adm.format }, 'save admitted');
    }
    this.reply(ctx, this.answer(jobId, false));
    this.requestPump();
    return ack();
  }

  private async onRestore(req: RestoreRequest, ctx: MessageContext): Promise<Outcome> {
    const jobId = jobIdFor('restore', req.requestId);
    const log = this.log.child({ jobId, image: req.image });
    const s = this.jobs.get(jobId) ?? { ...initialState(), jobId };
    if (s.status !== 'none') {
      this.reply(ctx, this.answer(jobId, true));
      return ack();
    }
    const adm = admitRestore(req, this.hosts, this.knownImages(), this.admitOpts());
    await this.emit(s, { type: 'RequestRestore', jobId, request: req, vm: 'rule' in adm ? undefined : adm.vm, sourceJobId: 'rule' in adm ? undefined : adm.sourceJobId }, `${jobId}.requested`);
    if ('rule' in adm) {
      await this.emit(this.jobs.get(jobId)!, { type: 'Reject', ...adm }, `${jobId}.rejected`);
      log.info({ rule: adm.rule }, `restore rejected: ${adm.message}`);
    } else {
      this.placement.set(jobId, { host: adm.host, vm: adm.vm, ramBytes: 0 });
      log.info({ host: adm.host }, 'restore admitted');
    }
    this.reply(ctx, this.answer(jobId, false));
    this.requestPump();
    return ack();
  }

  private async onCancel(req: CancelRequest, ctx: MessageContext): Promise<Outcome> {
    const s = this.jobs.get(req.jobId);
    if (!s) {
      this.reply(ctx, { outcome: 'rejected', requestId: req.requestId, jobId: req.jobId, rule: 'job-unknown', field: 'jobId', message: `jobId: no job ${req.jobId}` });
      return ack();
    }
    const d = decide({ type: 'Cancel', reason: req.reason, requestId: req.requestId }, s, { source: SOURCE });
    if (!d.ok) {
      this.reply(ctx, { outcome: 'rejected', requestId: req.requestId, jobId: req.jobId, rule: d.rule, message: d.message });
      return ack();
    }
    for (const e of d.events) await this.append(e);
    if (s.host && ACTIVE.has(s.status)) await this.askExecutorToCancel(s.host, req.jobId, req.reason);
    this.reply(ctx, { outcome: 'accepted', requestId: req.requestId, jobId: req.jobId, duplicate: d.events.length === 0 });
    return ack();
  }

  private async askExecutorToCancel(host: string, jobId: string, reason: string): Promise<void> {
    try {
      const m = await this.bus.nc.request(subjects.control(host), JSON.stringify(ControlRequest.parse({ action: 'cancel', jobId, reason })), { timeout: 5000 });
      const r = ControlReply.parse(m.json());
      this.log.info({ jobId, host, ok: r.ok }, `executor answered cancel: ${r.message}`);
    } catch (err) {
      // No answer: the heartbeat watchdog closes the job if the executor is gone.
      this.log.warn({ jobId, host, err: (err as Error).message }, 'executor did not answer the cancel');
    }
  }

  private answer(jobId: string, duplicate: boolean): AdmissionReply {
    const s = this.jobs.get(jobId)!;
    const requestId = s.saveRequest?.requestId ?? s.restoreRequest?.requestId ?? '';
    if (s.status === 'rejected' && s.rejection) return { outcome: 'rejected', requestId, jobId, ...s.rejection };
    return { outcome: 'accepted', requestId, jobId, duplicate };
  }

  private reply(ctx: MessageContext, answer: AdmissionReply): void {
    const to = ctx.headers.get('Vmsave-Reply-To');
    if (to) this.bus.nc.publish(to, JSON.stringify(AdmissionReply.parse(answer)));
  }

  /* ---------------- events ---------------- */

  /** Decide a command against a job and append what it produces. */
  private async emit(s: JobState, cmd: JobCommand, eventId?: string): Promise<JobEvent[]> {
    const d = cmd.type === 'Retry' ? decideRetry(cmd, s, { source: SOURCE }) : decide(cmd, s, { source: SOURCE });
    if (!d.ok) {
      this.log.warn({ jobId: s.jobId, rule: d.rule }, `not applied: ${d.message}`);
      return [];
    }
    for (const [i, e] of d.events.entries()) await this.append(eventId && i === 0 ? { ...e, eventId } : e);
    return d.events;
  }

  private async append(e: JobEvent): Promise<void> {
    // Marked before publishing: the log may deliver the echo before the publish ack returns.
    this.own.add(e.eventId);
    try {
      await publishEvent(this.bus, e);
    } catch (err) {
      this.own.delete(e.eventId);
      throw err;
    }
    await this.apply(e);
  }

  private async onLogEvent(e: JobEvent): Promise<void> {
    await this.apply(e);
    // Only events that free a slot or queue a job call for placement.
    if (e.type !== 'SaveStarted' && e.type !== 'RestoreStarted') this.requestPump();
  }

  private async apply(e: JobEvent): Promise<void> {
    const before = this.jobs.get(e.jobId) ?? initialState();
    const s = evolve(before, e);
    this.put(e.jobId, s);
    const log = this.log.child({ jobId: e.jobId });
    switch (e.type) {
      case 'SaveFailed':
      case 'RestoreFailed': {
        if (before.status === s.status) return;
        await this.releaseLease(before);
        const delayMs = retryDelayMs(s.attempt + 1, this.cfg.VMSAVE_RETRY_BASE_MS, this.cfg.VMSAVE_RETRY_MAX_MS);
        const r = await this.emit(s, { type: 'Retry', delayMs, maxAttempts: this.cfg.VMSAVE_MAX_ATTEMPTS });
        if (r.length) {
          log.info({ delayMs, attempt: s.attempt + 1, code: e.data.code }, 'retrying after a retryable failure');
          setTimeout(() => this.requestPump(), delayMs + 10).unref();
        }
        return;
      }
      case 'SaveCompleted':
      case 'RestoreCompleted':
      case 'SaveCancelled':
      case 'RestoreCancelled':
        if (before.status !== s.status) await this.releaseLease(before);
        return;
      default:
    }
  }

  private async releaseLease(s: JobState): Promise<void> {
    const vm = s.vm ?? this.placement.get(s.jobId!)?.vm;
    this.seen.delete(s.jobId!);
    if (vm && s.fencingToken !== undefined) await this.leases.release({ vm, owner: s.jobId!, token: s.fencingToken }).catch(() => false);
  }

  /* ---------------- placement ---------------- */

  private admitOpts() {
    return { nowMs: Date.now(), hostOfflineMs: this.cfg.VMSAVE_HOST_OFFLINE_MS };
  }

  private knownImages(): KnownImage[] {
    const out: KnownImage[] = [];
    for (const j of this.jobs.values()) {
      if (j.kind === 'save' && (j.status === 'completed' || j.status === 'verified') && j.host && j.imagePath && j.vm) {
        out.push({ host: j.host, imagePath: j.imagePath, vm: j.vm, jobId: j.jobId!, verified: j.status === 'verified' });
      }
    }
    return out;
  }

  /** Where a queued job goes, recomputed from the current hosts; a refusal other than a silent host rejects it. */
  private place(s: JobState): { host: string; vm?: string; ramBytes: number } | Refusal | undefined {
    const known = this.placement.get(s.jobId!);
    if (known && this.hosts.has(known.host)) return known;
    const adm = s.kind === 'save' ? admitSave(s.saveRequest!, this.hosts.values(), this.admitOpts()) : admitRestore(s.restoreRequest!, this.hosts, this.knownImages(), this.admitOpts());
    if ('rule' in adm) return adm.rule === 'host-online' ? undefined : adm;
    const p = { host: adm.host, vm: 'vm' in adm && typeof adm.vm === 'string' ? adm.vm : s.vm, ramBytes: 'ramBytes' in adm ? adm.ramBytes : 0 };
    this.placement.set(s.jobId!, p);
    return p;
  }

  private pumpQueued = false;

  /** Ask for one placement pass; any number of requests before it runs make one pass. */
  private requestPump(): void {
    if (this.pumpQueued || this.ac.signal.aborted) return;
    this.pumpQueued = true;
    void this.serial(async () => {
      this.pumpQueued = false;
      await this.pump();
    }).catch((err) => this.log.error({ err }, 'placement failed'));
  }

  private limitOf = (host: string): number => this.hosts.get(host)?.announcement.maxConcurrentJobs ?? this.cfg.VMSAVE_HOST_LIMIT;

  /** Hand out every queued job that may run now. */
  private async pump(): Promise<void> {
    const now = Date.now();
    const queue: QueuedJob[] = [];
    const activePerHost = new Map<string, number>();
    const busyVms = new Set<string>();
    for (const s of this.openJobs()) {
      if (ACTIVE.has(s.status) && s.host) {
        activePerHost.set(s.host, (activePerHost.get(s.host) ?? 0) + 1);
        const vm = s.vm ?? this.placement.get(s.jobId!)?.vm;
        if (vm) busyVms.add(vm);
      }
    }
    for (const s of [...this.openJobs()]) {
      if (s.status !== 'requested') continue;
      const p = this.place(s);
      if (!p) continue;
      if ('rule' in p) {
        await this.emit(s, { type: 'Reject', ...p });
        continue;
      }
      const priority = s.saveRequest?.priority ?? s.restoreRequest?.priority ?? 'normal';
      queue.push({ jobId: s.jobId!, host: p.host, vm: p.vm, priority, requestedAtMs: Date.parse(s.requestedAt ?? ''), notBeforeMs: s.notBefore ? Date.parse(s.notBefore) : undefined });
    }
    for (const q of pickNext(queue, activePerHost, busyVms, this.limitOf, now)) await this.dispatch(q);
  }

  private async dispatch(q: QueuedJob): Promise<void> {
    const s = this.jobs.get(q.jobId)!;
    const log = this.log.child({ jobId: q.jobId, host: q.host });
    let token = 0;
    if (q.vm) {
      const lease = await this.leases.acquire(q.vm, q.jobId, this.cfg.VMSAVE_LEASE_TTL_MS);
      if (!lease) {
        log.info({ vm: q.vm }, 'VM lease held elsewhere; job stays queued');
        return;
      }
      token = lease.token;
    }
    const host = this.hosts.get(q.host)!.announcement;
    const ramBytes = this.placement.get(q.jobId)?.ramBytes ?? 0;
    const deadlineMs = s.saveRequest?.deadlineMs ?? s.restoreRequest?.deadlineMs ?? defaultDeadlineMs(ramBytes, host.throughputBytesPerSec);
    const deadlineAt = new Date(Date.now() + deadlineMs).toISOString();
    const events = await this.emit(s, { type: 'Schedule', host: q.host, fencingToken: token, deadlineAt });
    if (!events.length) return;
    const after = this.jobs.get(q.jobId)!;
    this.seen.set(q.jobId, Date.now());
    let work: WorkItem;
    if (s.kind === 'save') {
      const fmt = admitSave(s.saveRequest!, [this.hosts.get(q.host)!], { nowMs: Date.now(), hostOfflineMs: Number.MAX_SAFE_INTEGER });
      work = { kind: 'save', jobId: q.jobId, attempt: after.attempt, fencingToken: token, host: q.host, deadlineAt, format: 'rule' in fmt ? 'legacy' : fmt.format, request: s.saveRequest! };
    } else {
      work = { kind: 'restore', jobId: q.jobId, attempt: after.attempt, fencingToken: token, host: q.host, deadlineAt, request: s.restoreRequest! };
    }
    await publishValidated(this.bus, messages.work, subjects.work(q.host), work, { msgId: `${q.jobId}.${after.attempt}` });
    log.info({ attempt: after.attempt, fencingToken: token, deadlineAt }, 'work handed to executor');
  }

  /* ---------------- liveness ---------------- */

  private onHeartbeat(h: Heartbeat): void {
    const now = Date.now();
    this.heartbeats.set(h.host, { atMs: now, jobs: new Set(h.jobs.map((j) => j.jobId)) });
    const host = this.hosts.get(h.host);
    if (host) host.lastSeenMs = now;
    for (const j of h.jobs) if (this.seen.has(j.jobId)) this.seen.set(j.jobId, now);
  }

  private async tick(): Promise<void> {
    const now = Date.now();
    for (const s of [...this.openJobs()]) {
      if (!ACTIVE.has(s.status) || !s.host || isTerminal(s)) continue;
      const jobId = s.jobId!;
      if (!this.seen.has(jobId)) this.seen.set(jobId, Math.max(this.startedAtMs, Date.parse(s.updatedAt ?? '') || 0));
      const hb = this.heartbeats.get(s.host);
      if (hb && now - hb.atMs < this.cfg.VMSAVE_HEARTBEAT_TIMEOUT_MS && hb.jobs.has(jobId)) {
        this.seen.set(jobId, hb.atMs);
        const vm = s.vm ?? this.placement.get(jobId)?.vm;
        if (vm && s.fencingToken !== undefined) {
          const lease = { vm, owner: jobId, token: s.fencingToken, expiresAt: 0 };
          if (!(await this.leases.renew(lease, this.cfg.VMSAVE_LEASE_TTL_MS))) await this.leases.acquire(vm, jobId, this.cfg.VMSAVE_LEASE_TTL_MS);
        }
      }
      const silentMs = now - this.seen.get(jobId)!;
      const deadline = s.deadlineAt ? Date.parse(s.deadlineAt) + this.cfg.VMSAVE_DEADLINE_GRACE_MS : Infinity;
      if (silentMs > this.cfg.VMSAVE_HEARTBEAT_TIMEOUT_MS) {
        // The attempt may have ended while its events still wait in our queue: ask the log first.
        const closed = (await eventsOfJob(this.bus, jobId)).map((l) => l.event).filter((e) => e.type.endsWith('Completed') || e.type.endsWith('Failed') || e.type.endsWith('Cancelled'));
        if (closed.length) {
          for (const e of closed) if (!this.own.has(e.eventId)) await this.apply(e);
          if (!ACTIVE.has(this.jobs.get(jobId)!.status)) continue;
        }
        this.log.warn({ jobId, host: s.host, silentMs }, 'executor lost: no heartbeat for this job');
        await this.fail(s, 'lost', 'executor-lost', `executor on ${s.host} sent no heartbeat for this job for ${Math.round(silentMs / 1000)} s`, true);
      } else if (now > deadline) {
        await this.askExecutorToCancel(s.host, jobId, 'deadline exceeded');
        await this.fail(s, 'deadline', 'deadline-exceeded', `job ran past its deadline ${s.deadlineAt}`, false);
      }
    }
    this.requestPump();
  }

  private async fail(s: JobState, stage: 'lost' | 'deadline', code: string, reason: string, retryable: boolean): Promise<void> {
    const base = { attempt: s.attempt, stage, code, reason, retryable, host: s.host, fencingToken: s.fencingToken };
    await this.emit(s, s.kind === 'save' ? { type: 'FailSave', data: { ...base, vmResumed: false } } : { type: 'FailRestore', data: base });
  }
}
