import type { JobEvent } from '@vmsave/contracts';
import { publishEvent, readLog, type Bus, type Logger } from '@vmsave/bus';
import { decide, decideRetry, evolve, initialState, type JobCommand, type JobState } from '@vmsave/jobs';
import type { Leases } from '@vmsave/store';
import type { SchedulerConfig } from './config.ts';
import { retryDelayMs } from './policy.ts';
import type { SchedulerState } from './state.ts';

export const SOURCE = 'scheduler';

export interface JournalDeps {
  bus: Bus;
  state: SchedulerState;
  leases: Leases;
  cfg: SchedulerConfig;
  log: Logger;
  /** Ask for a placement pass (a slot freed, a job queued again). */
  wake: () => void;
}

/**
 * Event intake and job state: decides commands against a job and appends the events, folds
 * every event of the log (its own and others') into the state, and reacts to the ones that end
 * an attempt (release the VM lease; retry a retryable failure after a backoff).
 */
export class Journal {
  constructor(private readonly d: JournalDeps) {}

  /** Fold the log from `fromSeq` (after a snapshot) into the state; returns the last sequence read. */
  async rebuild(fromSeq = 1): Promise<number> {
    const { bus } = this.d;
    let lastSeq = fromSeq - 1;
    for await (const { seq, event } of readLog(bus, { fromSeq })) {
      this.fold(event);
      lastSeq = seq;
    }
    return lastSeq;
  }

  /** Fold one event into its job's state; returns the state before and after. */
  private fold(e: JobEvent): { before: JobState; s: JobState } {
    const { state } = this.d;
    const before = state.jobs.get(e.jobId) ?? initialState();
    const s = evolve(before, e);
    // A restore of an image no save in the log wrote: its VM is known only to the executor.
    if (e.type === 'RestoreRequested' && before.status === 'none' && e.data.vm === undefined) state.imageOnly.add(e.jobId);
    state.put(e.jobId, s);
    state.unfolded.delete(e.eventId);
    return { before, s };
  }

  /** Decide a command against a job and append what it produces. */
  async emit(s: JobState, cmd: JobCommand, eventId?: string): Promise<JobEvent[]> {
    const d = cmd.type === 'Retry' ? decideRetry(cmd, s, { source: SOURCE }) : decide(cmd, s, { source: SOURCE });
    if (!d.ok) {
      this.d.log.warn({ jobId: s.jobId, rule: d.rule }, `not applied: ${d.message}`);
      return [];
    }
    for (const [i, e] of d.events.entries()) await this.append(eventId && i === 0 ? { ...e, eventId } : e);
    return d.events;
  }

  async append(e: JobEvent): Promise<void> {
    await this.publish(e);
    await this.apply(e);
  }

  /**
   * Publish one of our events, marked as ours first (the log may deliver the echo before the
   * publish ack returns); resolves once the event is stored. Does not fold it: the caller does.
   */
  async publish(e: JobEvent): Promise<void> {
    const { state } = this.d;
    const { own } = state;
    own.add(e.eventId);
    state.unfolded.add(e.eventId);
    try {
      const ack = await publishEvent(this.d.bus, e);
      // A duplicate ack has no echo to wait for (the event is in the log already).
      if (!ack.duplicate && ack.seq > state.ownMaxSeq) state.ownMaxSeq = ack.seq;
    } catch (err) {
      own.delete(e.eventId);
      state.unfolded.delete(e.eventId);
      throw err;
    }
  }

  /** Fold an event that needs no reaction (a request, an admission rejection), synchronously. */
  foldOnly(e: JobEvent): void {
    this.fold(e);
  }

  /** An event another service appended (ours were applied when appended). */
  async onLogEvent(e: JobEvent): Promise<void> {
    await this.apply(e);
    // Only events that free a slot or queue a job call for placement.
    if (e.type !== 'SaveStarted' && e.type !== 'RestoreStarted') this.d.wake();
  }

  async apply(e: JobEvent): Promise<void> {
    const { before, s } = this.fold(e);
    const log = this.d.log.child({ jobId: e.jobId });
    switch (e.type) {
      case 'SaveFailed':
      case 'RestoreFailed': {
        if (before.status === s.status) return;
        // Another scheduler's job (its partition not ours): folded only; its owner reacts.
        if (!this.d.state.ownsJob(e.jobId)) return this.endedElsewhere(before);
        await this.releaseLease(before);
        await this.retry(s, log, e.data.code);
        return;
      }
      case 'SaveCompleted':
      case 'RestoreCompleted':
      case 'SaveCancelled':
      case 'RestoreCancelled':
        if (before.status === s.status) return;
        if (this.d.state.ownsJob(e.jobId)) await this.releaseLease(before);
        else this.endedElsewhere(before);
        return;
      default:
    }
  }

  /** Queue a failed job again after its backoff (or end it, attempts used up); also for a taken partition's failed jobs. */
  async retry(s: JobState, log: Logger = this.d.log.child({ jobId: s.jobId }), code = s.lastFailure?.code): Promise<void> {
    const { cfg } = this.d;
    const delayMs = retryDelayMs(s.attempt + 1, cfg.VMSAVE_RETRY_BASE_MS, cfg.VMSAVE_RETRY_MAX_MS);
    const r = await this.emit(s, { type: 'Retry', delayMs, maxAttempts: cfg.VMSAVE_MAX_ATTEMPTS });
    if (r.length) {
      log.info({ delayMs, attempt: s.attempt + 1, code }, 'retrying after a retryable failure');
      setTimeout(() => this.d.wake(), delayMs + 10).unref();
    }
  }

  /** Remember the lease of another scheduler's job that ended, for a lease TTL (`state.endedElsewhere`). */
  private endedElsewhere(s: JobState): void {
    const { state, cfg } = this.d;
    const key = state.leaseKeyOf(s);
    if (!key || s.fencingToken === undefined || !s.jobId) return;
    const now = Date.now();
    state.endedElsewhere.delete(s.jobId);
    state.endedElsewhere.set(s.jobId, { vm: key, owner: s.jobId, token: s.fencingToken, ...(s.host ? { host: s.host } : {}), atMs: now });
    for (const [id, l] of state.endedElsewhere) {
      if (now - l.atMs < cfg.VMSAVE_LEASE_TTL_MS) break;
      state.endedElsewhere.delete(id);
    }
  }

  /** A taken partition: release the leases its previous owner's ended jobs may still hold. */
  releaseEndedElsewhere(partitions: ReadonlySet<number>): void {
    const { state, leases } = this.d;
    for (const [id, l] of state.endedElsewhere) {
      if (!partitions.has(state.partitionOfJob(id) ?? -1)) continue;
      state.endedElsewhere.delete(id);
      void leases.release(l).catch(() => false);
    }
  }

  private async releaseLease(s: JobState): Promise<void> {
    const { state, leases } = this.d;
    const key = state.leaseKeyOf(s);
    state.seen.delete(s.jobId!);
    // Not awaited: the log's next event need not wait for Redis. Commands on the one Redis
    // connection run in the order sent, so a later acquire of this key comes after the release.
    // With its host slot (`acquireWithSlot` at dispatch).
    if (key && s.fencingToken !== undefined) void leases.release({ vm: key, owner: s.jobId!, token: s.fencingToken, ...(s.host ? { host: s.host } : {}) }).catch(() => false);
  }
}
