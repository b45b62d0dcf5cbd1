import { messages, subjects, type HostAnnouncement, type WorkItem } from '@vmsave/contracts';
import { publishValidated, readHosts, type Bus, type Logger } from '@vmsave/bus';
import type { JobState } from '@vmsave/jobs';
import type { Leases } from '@vmsave/store';
import type { SchedulerConfig } from './config.ts';
import type { Journal } from './journal.ts';
import { admitRestore, admitSave, defaultDeadlineMs, type AdmitOptions, type HostLoad, type HostView, type KnownImage, type QueuedJob, type Refusal } from './policy.ts';
import type { Placed, SchedulerState } from './state.ts';

export interface PlacementDeps {
  bus: Bus;
  state: SchedulerState;
  journal: Journal;
  leases: Leases;
  cfg: SchedulerConfig;
  log: Logger;
  /** Once aborted, no more placement passes are queued. */
  signal: AbortSignal;
}

/**
 * Placement and dispatch: which host each queued job goes to, and handing out the jobs that may
 * run now (`pickNext` decides which) as work items on `vmsave.work.<host>`, each under its VM's
 * lease with a fencing token.
 */
export class Placement {
  private pumpQueued = false;
  /** Hosts where a dispatch found its lease held elsewhere: visited again on the next tick. */
  private readonly refused = new Set<string>();
  private retriedAtMs = 0;

  constructor(private readonly d: PlacementDeps) {}

  /** The latest announcement of every host, before following them. */
  async rebuildHosts(): Promise<void> {
    for await (const a of readHosts(this.d.bus)) this.d.state.setHost({ announcement: a, lastSeenMs: Date.parse(a.at) });
  }

  /** A host announced itself (again); its queued jobs are placed again only when the announcement changed. */
  onAnnouncement(a: HostAnnouncement): void {
    const { state } = this.d;
    const prev = state.hosts.get(a.host);
    const changed = state.setHost({ announcement: a, lastSeenMs: Math.max(Date.parse(a.at), prev?.lastSeenMs ?? 0) });
    if (changed && prev) this.replaceQueuedOn(a.host);
    if (changed || state.needsPlacing) this.requestPump();
  }

  /** The jobs queued on a host whose announcement changed: each goes where admission now puts it (a refusal leaves it queued). */
  private replaceQueuedOn(host: string): void {
    const { state } = this.d;
    for (const q of state.queuedOn(host)) {
      const s = state.jobs.get(q.jobId)!;
      if (s.kind !== 'save') continue;
      const adm = admitSave(s.saveRequest!, state.hostsWithVm(s.saveRequest!.vm), this.admitOpts());
      if (!('rule' in adm)) state.setPlacement(q.jobId, { host: adm.host, vm: s.saveRequest!.vm, ramBytes: adm.ramBytes });
    }
  }

  admitOpts(): AdmitOptions {
    return { nowMs: Date.now(), hostOfflineMs: this.d.cfg.VMSAVE_HOST_OFFLINE_MS, load: this.load };
  }

  /** What placing a restore of a replicated image weighs: each host's jobs (on it and queued) against its limit. */
  private readonly load: HostLoad = { jobsOf: (h) => this.d.state.loadOn(h), limitOf: (h) => this.limitOf(h) };

  knownImages(): KnownImage[] {
    return this.d.state.knownImages();
  }

  /** Ask for one placement pass; any number of requests before it runs make one pass. */
  requestPump(): void {
    if (this.pumpQueued || this.d.signal.aborted) return;
    this.pumpQueued = true;
    void this.d.state
      .serial(async () => {
        this.pumpQueued = false;
        await this.pump();
      })
      .catch((err) => this.d.log.error({ err }, 'placement failed'));
  }

  /** Visit every host whose dispatch was refused a lease again (at most once per tick). */
  private retryRefused(): void {
    const { state } = this.d;
    for (const h of this.refused) state.revisit(h);
    this.refused.clear();
    // A job whose host was silent waits unplaced: heartbeats may have brought the host back.
    if (state.unplaced.size) state.needsPlacing = true;
  }

  /**
   * Hand out every queued job that may run now: place jobs that have no host yet, then take the
   * jobs `state.plan` picks from the hosts where something changed, dispatched together.
   */
  async pump(): Promise<void> {
    const { state } = this.d;
    if (state.needsPlacing) {
      state.needsPlacing = false;
      for (const jobId of [...state.unplaced]) {
        const s = state.jobs.get(jobId)!;
        const p = this.place(s);
        if (!p) continue;
        if ('rule' in p) await this.d.journal.emit(s, { type: 'Reject', ...p });
        else state.setPlacement(jobId, p);
      }
    }
    const now = Date.now();
    if (now - this.retriedAtMs >= this.d.cfg.VMSAVE_TICK_MS) {
      this.retriedAtMs = now;
      this.retryRefused();
    }
    const picks = state.plan(now, this.limitOf);
    const results = await Promise.allSettled(picks.map((q) => this.dispatch(q)));
    for (const [i, r] of results.entries()) {
      if (r.status === 'rejected') {
        this.refused.add(picks[i]!.host);
        this.d.log.error({ jobId: picks[i]!.jobId, host: picks[i]!.host, err: r.reason }, 'dispatch failed; job stays queued');
      }
    }
  }

  readonly limitOf = (host: string): number => this.d.state.hosts.get(host)?.announcement.maxConcurrentJobs ?? this.d.cfg.VMSAVE_HOST_LIMIT;

  /** Where a job with no placement goes, from the current hosts; a refusal other than a silent host rejects it. */
  private place(s: JobState): Placed | Refusal | undefined {
    const { state } = this.d;
    const known = state.placement.get(s.jobId!);
    if (known && state.hosts.has(known.host)) return known;
    const adm =
      s.kind === 'save'
        ? admitSave(s.saveRequest!, state.hostsWithVm(s.saveRequest!.vm), this.admitOpts())
        : admitRestore(s.restoreRequest!, state.hosts as Map<string, HostView>, this.knownImages(), this.admitOpts());
    if ('rule' in adm) return adm.rule === 'host-online' ? undefined : adm;
    return {
      host: adm.host,
      vm: 'vm' in adm && typeof adm.vm === 'string' ? adm.vm : s.vm,
      ramBytes: 'ramBytes' in adm ? adm.ramBytes : 0,
      ...('imageOnHost' in adm && adm.imageOnHost ? { image: adm.imageOnHost } : {}),
    };
  }

  private async dispatch(q: QueuedJob): Promise<void> {
    const { state, cfg } = this.d;
    const s = state.jobs.get(q.jobId)!;
    const { log } = this.d;
    const ids = { jobId: q.jobId, host: q.host };
    // Every job runs under a lease with a fencing token: its VM's, or (a restore of an image the
    // log does not know) its image's on that host.
    if (!q.vm) {
      log.warn(ids, 'no VM or image to lease; job stays queued');
      this.refused.add(q.host);
      return;
    }
    // The partition went to another scheduler (or its lease lapsed) since the pass picked it: not
    // ours to start now. Visited again at the next tick (a job of a lapsed partition stays queued).
    if (!state.ownsJob(q.jobId)) {
      this.refused.add(q.host);
      return;
    }
    // The VM lease and a slot of the host in one step: the host's limit holds across schedulers.
    const lease = await this.d.leases.acquireWithSlot(q.vm, q.jobId, cfg.VMSAVE_LEASE_TTL_MS, q.host, this.limitOf(q.host));
    if ('refused' in lease) {
      // At debug: with several schedulers a busy host refuses often, and the next pass tries again.
      if (lease.refused === 'host-full') {
        if (log.isLevelEnabled('debug')) log.debug({ ...ids, lease: q.vm }, 'host full (its slots are held by other jobs); job stays queued');
      } else log.info({ ...ids, lease: q.vm }, 'VM lease held elsewhere; job stays queued');
      this.refused.add(q.host);
      return;
    }
    const token = lease.token;
    const host = state.hosts.get(q.host)!.announcement;
    const ramBytes = state.placement.get(q.jobId)?.ramBytes ?? 0;
    const deadlineMs = s.saveRequest?.deadlineMs ?? s.restoreRequest?.deadlineMs ?? defaultDeadlineMs(ramBytes, host.throughputBytesPerSec);
    const deadlineAt = new Date(Date.now() + deadlineMs).toISOString();
    const events = await this.d.journal.emit(s, { type: 'Schedule', host: q.host, fencingToken: token, deadlineAt });
    if (!events.length) {
      void this.d.leases.release(lease).catch(() => false);
      return;
    }
    const after = state.jobs.get(q.jobId)!;
    state.seen.set(q.jobId, Date.now());
    let work: WorkItem;
    if (s.kind === 'save') {
      const fmt = admitSave(s.saveRequest!, [state.hosts.get(q.host)!], { nowMs: Date.now(), hostOfflineMs: Number.MAX_SAFE_INTEGER });
      work = {
        kind: 'save',
        jobId: q.jobId,
        attempt: after.attempt,
        fencingToken: token,
        host: q.host,
        deadlineAt,
        format: 'rule' in fmt ? 'legacy' : fmt.format,
        request: s.saveRequest!,
      };
    } else {
      // A replicated image fetched onto another host: named as inside its image directory (`RestoreAdmission.imageOnHost`).
      const image = state.placement.get(q.jobId)?.image;
      const request = image ? { ...s.restoreRequest!, image } : s.restoreRequest!;
      work = { kind: 'restore', jobId: q.jobId, attempt: after.attempt, fencingToken: token, host: q.host, deadlineAt, request };
    }
    await publishValidated(this.d.bus, messages.work, subjects.work(q.host), work, { msgId: `${q.jobId}.${after.attempt}` });
    // At debug: `SaveScheduled` in the log says the same, and a line per dispatch at info cost a write per job in a burst.
    if (log.isLevelEnabled('debug')) log.debug({ ...ids, attempt: after.attempt, fencingToken: token, deadlineAt }, 'work handed to executor');
  }
}
