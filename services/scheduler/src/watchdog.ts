import type { Heartbeat } from '@vmsave/contracts';
import { eventsOfJob, type Bus, type Logger } from '@vmsave/bus';
import { closesAttempt, isTerminal, ON_HOST_STATUSES, type JobState } from '@vmsave/jobs';
import type { Leases } from '@vmsave/store';
import type { SchedulerConfig } from './config.ts';
import { askExecutorToCancel } from './control.ts';
import type { Journal } from './journal.ts';
import type { SchedulerState } from './state.ts';

export interface WatchdogDeps {
  bus: Bus;
  state: SchedulerState;
  journal: Journal;
  leases: Leases;
  cfg: SchedulerConfig;
  log: Logger;
  /** Ask for a placement pass after a tick. */
  wake: () => void;
  /** A host's job limit (a lease that lapsed is taken again with a slot of its host). */
  limitOf: (host: string) => number;
}

/** Overdue verdicts handled per tick (the rest wait for the next ones). */
const VERDICTS_PER_TICK = 32;

const onHost = (s: JobState | undefined): boolean => !!s && s.status !== 'none' && ON_HOST_STATUSES.has(s.status);

/**
 * Liveness and deadlines: heartbeats keep a job (and its VM lease) alive; a job whose executor
 * is silent too long is failed as lost (retryable), one past its deadline is cancelled and failed;
 * a completed save with no verdict in time is verified again, then raised (`verdicts`).
 */
export class Watchdog {
  constructor(private readonly d: WatchdogDeps) {}

  onHeartbeat(h: Heartbeat): void {
    const { state } = this.d;
    const now = Date.now();
    state.heartbeats.set(h.host, { atMs: now, jobs: new Set(h.jobs.map((j) => j.jobId)) });
    const host = state.hosts.get(h.host);
    if (host) host.lastSeenMs = now;
    for (const j of h.jobs) if (state.seen.has(j.jobId)) state.seen.set(j.jobId, now);
  }

  /** While this scheduler was cut off it heard no heartbeats: that silence says nothing about executors. */
  onReconnect(): void {
    const { state } = this.d;
    const now = Date.now();
    for (const id of state.seen.keys()) state.seen.set(id, now);
    for (const h of state.heartbeats.values()) h.atMs = now;
  }

  /** How long after a check an on-host job is checked again at most (its lease is renewed then). */
  private get recheckMs(): number {
    const { cfg } = this.d;
    return Math.max(cfg.VMSAVE_TICK_MS, Math.min(Math.floor(cfg.VMSAVE_LEASE_TTL_MS / 3), cfg.VMSAVE_HEARTBEAT_TIMEOUT_MS));
  }

  /**
   * The jobs whose check is due in the time-ordered index (`state.dueChecks`), not a scan: each
   * check renews the lease of a job a recent heartbeat names, fails a job silent too long as lost
   * (after asking the log whether its attempt already ended) or one past its deadline, and
   * schedules the job's next check at its next bound.
   */
  async tick(): Promise<void> {
    const { state } = this.d;
    const now = Date.now();
    state.checkAfterMs = this.recheckMs;
    const due = state.dueChecks(now);
    const results = await Promise.allSettled(due.map((id) => this.check(id, now)));
    for (const [i, r] of results.entries()) if (r.status === 'rejected') this.d.log.error({ jobId: due[i], err: r.reason }, 'watchdog check failed');
    await this.verdicts(now);
    this.d.wake();
  }

  private async check(jobId: string, now: number): Promise<void> {
    const { state, cfg, leases } = this.d;
    const s = state.jobs.get(jobId);
    if (!s || !onHost(s) || !s.host || isTerminal(s)) return;
    // Another scheduler's job: its owner watches it (taking its partition schedules a check again, `state.adopt`).
    if (!state.ownsJob(jobId)) return;
    if (!state.seen.has(jobId)) state.seen.set(jobId, Math.max(state.startedAtMs, Date.parse(s.updatedAt ?? '') || 0));
    const hb = state.heartbeats.get(s.host);
    if (hb && now - hb.atMs < cfg.VMSAVE_HEARTBEAT_TIMEOUT_MS && hb.jobs.has(jobId)) {
      state.seen.set(jobId, Math.max(state.seen.get(jobId)!, hb.atMs));
      const key = state.leaseKeyOf(s);
      if (key && s.fencingToken !== undefined) {
        // The VM lease and its host slot together.
        const lease = { vm: key, owner: jobId, token: s.fencingToken, expiresAt: 0, host: s.host };
        if (!(await leases.renew(lease, cfg.VMSAVE_LEASE_TTL_MS))) await leases.acquireWithSlot(key, jobId, cfg.VMSAVE_LEASE_TTL_MS, s.host, this.d.limitOf(s.host));
      }
    }
    const seen = state.seen.get(jobId)!;
    const silentMs = now - seen;
    const deadline = s.deadlineAt ? Date.parse(s.deadlineAt) + cfg.VMSAVE_DEADLINE_GRACE_MS : Number.POSITIVE_INFINITY;
    if (silentMs > cfg.VMSAVE_HEARTBEAT_TIMEOUT_MS && state.pendingLogEvents > 0) {
      // Events read from the log still wait to be applied (its end may be among them): judge once caught up.
      state.scheduleCheck(jobId, now + cfg.VMSAVE_TICK_MS);
      return;
    }
    if (silentMs > cfg.VMSAVE_HEARTBEAT_TIMEOUT_MS) {
      // The attempt may have ended while its events still wait in our queue: ask the log first.
      const closed = (await eventsOfJob(this.d.bus, jobId)).map((l) => l.event).filter((e) => closesAttempt(e, s.attempt));
      if (closed.length) {
        for (const e of closed) if (!state.own.has(e.eventId)) await this.d.journal.apply(e);
        if (!onHost(state.jobs.get(jobId)!)) return;
      }
      this.d.log.warn({ jobId, host: s.host, silentMs }, 'executor lost: no heartbeat for this job');
      await this.fail(s, 'lost', 'executor-lost', `executor on ${s.host} sent no heartbeat for this job for ${Math.round(silentMs / 1000)} s`, true);
    } else if (now > deadline) {
      await askExecutorToCancel(this.d.bus, this.d.log, s.host, jobId, 'deadline exceeded');
      await this.fail(s, 'deadline', 'deadline-exceeded', `job ran past its deadline ${s.deadlineAt}`, false);
    }
    // Still on its host (alive, or the failure was refused): the next bound that may need action.
    if (onHost(state.jobs.get(jobId))) {
      state.scheduleCheck(jobId, Math.max(now + 1, Math.min(seen + cfg.VMSAVE_HEARTBEAT_TIMEOUT_MS + 1, deadline + 1, now + this.recheckMs)));
    }
  }

  /**
   * Completed saves whose verdict is overdue: the first bound asks for verification again
   * (`VerificationOverdue` notice 1, which the verifier handles like `SaveCompleted`), the
   * second raises it (notice 2). Reads only the head of the due-ordered `awaitingVerdict`.
   */
  private async verdicts(now: number): Promise<void> {
    const { state, cfg, journal, log } = this.d;
    // Only the due head of the due-ordered map (never a copy of all of it).
    const due: Array<[string, { notice: 0 | 1; sinceMs: number; completedAtMs: number }]> = [];
    for (const entry of state.awaitingVerdict) {
      // At most VERDICTS_PER_TICK per tick: each asks the log, and the rest of the scheduler waits meanwhile.
      if (now - entry[1].sinceMs < cfg.VMSAVE_VERDICT_TIMEOUT_MS || due.length >= VERDICTS_PER_TICK) break;
      // Another scheduler's save: its owner watches the verdict.
      if (!state.ownsJob(entry[0])) continue;
      due.push(entry);
    }
    for (const [jobId, w] of due) {
      // The verdict may wait in our queue: ask the log first.
      const verdict = (await eventsOfJob(this.d.bus, jobId)).map((l) => l.event).find((e) => e.type === 'ImageVerified' || e.type === 'ImageRejected');
      if (verdict) {
        if (!state.own.has(verdict.eventId)) await journal.apply(verdict);
        state.awaitingVerdict.delete(jobId);
        continue;
      }
      const s = state.jobs.get(jobId)!;
      const notice = w.notice === 0 ? 1 : 2;
      const waitedMs = now - w.completedAtMs;
      log.warn(
        { jobId, host: s.host, imagePath: s.imagePath, waitedMs, notice },
        notice === 1 ? 'verdict overdue: verification asked again' : 'verdict overdue: raised, no verifier answered',
      );
      const r = await journal.emit(s, { type: 'FlagVerificationOverdue', notice, waitedMs });
      // Refused or a duplicate: nothing more this watchdog can do for it.
      if (!r.length) state.awaitingVerdict.delete(jobId);
    }
  }

  private async fail(s: JobState, stage: 'lost' | 'deadline', code: string, reason: string, retryable: boolean): Promise<void> {
    const base = { attempt: s.attempt, stage, code, reason, retryable, host: s.host, fencingToken: s.fencingToken };
    await this.d.journal.emit(s, s.kind === 'save' ? { type: 'FailSave', data: { ...base, vmResumed: false } } : { type: 'FailRestore', data: base });
  }
}
