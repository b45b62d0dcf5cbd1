import { streams, subjects, type JobEvent, type JobEventType } from '@vmsave/contracts';
import { eventsOfJob, publishEvent, readLog, type Bus, type LoggedEvent, type Logger } from '@vmsave/bus';
import { closesAttempt, decide, evolve, fold, type JobCommand, type JobState } from '@vmsave/jobs';
import type { ExecutorContext } from './context.ts';

/**
 * One job as this executor sees it: its history folded from the log, then every event it
 * decided itself. Every state change goes through {@link JobTrack.apply}: `decide(command,
 * state)`, then the decided events are published; a refusal (a stale attempt, a job already
 * over) is logged and publishes nothing.
 */
export class JobTrack {
  private constructor(
    private readonly ctx: Pick<ExecutorContext, 'bus' | 'source' | 'onPublished'>,
    readonly jobId: string,
    private events: JobEvent[],
    private current: JobState,
  ) {}

  /** Decided, not yet acknowledged by the log. */
  private pending: JobEvent[] = [];

  static async load(ctx: Pick<ExecutorContext, 'bus' | 'source' | 'onPublished'>, jobId: string): Promise<JobTrack> {
    const events = (await jobEvents(ctx.bus, jobId)).map((l) => l.event);
    return new JobTrack(ctx, jobId, events, fold(events));
  }

  get state(): JobState {
    return this.current;
  }

  get history(): readonly JobEvent[] {
    return this.events;
  }

  /** Whether the log already closed `attempt` (its completion or failure, a cancel, a verdict). */
  closes(attempt: number): boolean {
    return this.events.some((e) => closesAttempt(e, attempt));
  }

  /** Whether the log has `attempt`'s completion (the image, or the restored VM, is done). */
  completed(attempt: number): boolean {
    return this.events.some((e) => (e.type === 'SaveCompleted' || e.type === 'RestoreCompleted') && e.data.attempt === attempt);
  }

  /** The reason of the cancel request the state says is pending, if any. */
  cancelReason(): string | undefined {
    if (!this.current.cancelRequested) return undefined;
    const e = this.events.findLast((x) => x.type === 'SaveCancelRequested' || x.type === 'RestoreCancelRequested');
    return e?.type === 'SaveCancelRequested' || e?.type === 'RestoreCancelRequested' ? e.data.reason : 'cancelled on request';
  }

  /**
   * Fold the log again before an attempt's outcome is decided: the scheduler may have closed the
   * attempt meanwhile (its heartbeat watchdog). Events this executor decided but could not
   * publish yet count too (they are published before anything decided after them). When the log
   * cannot be read, the state this executor already has decides.
   */
  async refresh(log: Logger): Promise<void> {
    try {
      if (await this.logUnchanged()) return;
      const logged = (await jobEvents(this.ctx.bus, this.jobId)).map((l) => l.event);
      const ids = new Set(logged.map((e) => e.eventId));
      this.pending = this.pending.filter((e) => !ids.has(e.eventId));
      this.events = [...logged, ...this.pending];
      this.current = fold(this.events);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'could not re-read the job from the log; deciding on what this executor knows');
    }
  }

  /**
   * Whether the log holds exactly the events this track read or published, per subject (one
   * stream-info round trip with a subject filter, instead of a consumer to read the job again).
   * Any difference (an event someone else appended, one that was refused when read) answers
   * false, and the job is read again.
   */
  private async logUnchanged(): Promise<boolean> {
    const want = new Map<string, number>();
    const pending = new Set(this.pending);
    for (const e of this.events) {
      if (pending.has(e)) continue;
      const subject = subjects.evt(this.jobId, e.type);
      want.set(subject, (want.get(subject) ?? 0) + 1);
    }
    let info: { state: { subjects?: Record<string, number> } } | undefined;
    try {
      info = await this.ctx.bus.jsm.streams.info(streams.events.name, { subjects_filter: subjects.evtOfJob(this.jobId) });
    } catch {
      return false;
    }
    const logged = info?.state.subjects;
    if (!logged) return false;
    const entries = Object.entries(logged);
    return entries.length === want.size && entries.every(([subject, n]) => want.get(subject) === n);
  }

  /**
   * Decide `cmd` against the state and publish what it produces. An event's id is derived from
   * job, attempt and type, so a publish retried after a crash or a reconnect is deduplicated.
   * Resolves false (nothing published) when the command is refused.
   */
  async apply(cmd: JobCommand, attempt: number, log: Logger): Promise<boolean> {
    const events = this.decideNow(cmd, attempt, log);
    if (!events) return false;
    await this.publish();
    return true;
  }

  /**
   * The decision alone, folded at once so the next command is decided against it; {@link publish}
   * sends it. Undefined (and logged) when `decide` refuses the command.
   */
  decideNow(cmd: JobCommand, attempt: number, log: Logger): JobEvent[] | undefined {
    const d = decide(cmd, this.current, { source: this.ctx.source });
    if (!d.ok) {
      log.warn({ command: cmd.type, rule: d.rule }, `not applied: ${d.message}`);
      return undefined;
    }
    const events = d.events.map((e) => ({ ...e, eventId: `${this.jobId}.${attempt}.${e.type}` }));
    for (const e of events) {
      this.events.push(e);
      this.pending.push(e);
      this.current = evolve(this.current, e);
    }
    return events;
  }

  /** Publish every decided event not yet in the log, in the order decided. */
  async publish(): Promise<void> {
    while (this.pending.length) {
      const e = this.pending[0]!;
      const ack = await publishEvent(this.ctx.bus, e);
      if (!ack.duplicate) this.ctx.onPublished?.(e, this.events);
      if (this.pending[0] === e) this.pending.shift();
    }
  }
}

/**
 * One job's events, in order, validated and checked like every log read: by direct get (one
 * request per event, no consumer created and deleted per job: the executor role may direct-get
 * `VMSAVE_EVT`), or, when the server refuses or does not answer that (a NATS configuration
 * rendered before the grant), with an ephemeral consumer as before.
 */
export async function jobEvents(bus: Bus, jobId: string): Promise<LoggedEvent[]> {
  try {
    return await eventsOfJob(bus, jobId, { via: 'direct' });
  } catch {
    return eventsOfJob(bus, jobId, { via: 'consumer' });
  }
}

/**
 * The events of one job of the given types only, in log order: one direct-get walk per type, all
 * at once (a few requests instead of the job's whole history); when direct get fails, the whole
 * job read as {@link jobEvents} does, filtered here.
 */
export async function jobEventsOfTypes(bus: Bus, jobId: string, types: readonly JobEventType[]): Promise<LoggedEvent[]> {
  try {
    const per = await Promise.all(
      types.map(async (t) => {
        const out: LoggedEvent[] = [];
        for await (const e of readLog(bus, { filter: subjects.evt(jobId, t), via: 'direct' })) out.push(e);
        return out;
      }),
    );
    return per.flat().sort((a, b) => a.seq - b.seq);
  } catch {
    const wanted = new Set<string>(types);
    return (await eventsOfJob(bus, jobId, { via: 'consumer' })).filter((e) => wanted.has(e.event.type));
  }
}
