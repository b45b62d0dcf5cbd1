import { messages, subjects, type HostAnnouncement, type WorkItem } from '@vmsave/contracts';
import { publishValidated, readHosts, type Bus, type Logger } from '@vmsave/bus';
import { ON_HOST_STATUSES, type JobState } from '@vmsave/jobs';
import type { Leases } from '@vmsave/store';
import type { SchedulerConfig } from './config.ts';
import type { Journal } from './journal.ts';
import { admitRestore, admitSave, defaultDeadlineMs, pickNext, type KnownImage, type QueuedJob, type Refusal } from './policy.ts';
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

  constructor(private readonly d: PlacementDeps) {}

  /** The latest announcement of every host, before following them. */
  async rebuildHosts(): Promise<void> {
    for await (const a of readHosts(this.d.bus)) this.d.state.hosts.set(a.host, { announcement: a, lastSeenMs: Date.parse(a.at) });
  }

  /** A host announced itself (again). */
  onAnnouncement(a: HostAnnouncement): void {
    const prev = this.d.state.hosts.get(a.host);
    this.d.state.hosts.set(a.host, { announcement: a, lastSeenMs: Math.max(Date.parse(a.at), prev?.lastSeenMs ?? 0) });
    this.requestPump();
  }

  admitOpts() {
    return { nowMs: Date.now(), hostOfflineMs: this.d.cfg.VMSAVE_HOST_OFFLINE_MS };
  }

  knownImages(): KnownImage[] {
    const out: KnownImage[] = [];
    for (const j of this.d.state.jobs.values()) {
      if (j.kind === 'save' && (j.status === 'completed' || j.status === 'verified') && j.host && j.imagePath && j.vm) {
        out.push({ host: j.host, imagePath: j.imagePath, vm: j.vm, jobId: j.jobId!, verified: j.status === 'verified' });
      }
    }
    return out;
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

  /** Hand out every queued job that may run now. */
  async pump(): Promise<void> {
    const { state } = this.d;
    const now = Date.now();
    const queue: QueuedJob[] = [];
    const activePerHost = new Map<string, number>();
    const busyVms = new Set<string>();
    for (const s of state.openJobs()) {
      if (s.status !== 'none' && ON_HOST_STATUSES.has(s.status) && s.host) {
        activePerHost.set(s.host, (activePerHost.get(s.host) ?? 0) + 1);
        // Its VM (once known) and its lease key: a restore of an image the log does not know is
        // leased by image, and names its VM when the executor has read the image.
        for (const k of new Set([state.vmOf(s), state.leaseKeyOf(s)])) if (k) busyVms.add(k);
      }
    }
    for (const s of [...state.openJobs()]) {
      if (s.status !== 'requested') continue;
      const p = this.place(s);
      if (!p) continue;
      if ('rule' in p) {
        await this.d.journal.emit(s, { type: 'Reject', ...p });
        continue;
      }
      const priority = s.saveRequest?.priority ?? s.restoreRequest?.priority ?? 'normal';
      queue.push({
        jobId: s.jobId!,
        host: p.host,
        vm: state.leaseKeyOf(s) ?? p.vm,
        priority,
        requestedAtMs: Date.parse(s.requestedAt ?? ''),
        notBeforeMs: s.notBefore ? Date.parse(s.notBefore) : undefined,
      });
    }
    for (const q of pickNext(queue, activePerHost, busyVms, this.limitOf, now)) await this.dispatch(q);
  }

  private limitOf = (host: string): number => this.d.state.hosts.get(host)?.announcement.maxConcurrentJobs ?? this.d.cfg.VMSAVE_HOST_LIMIT;

  /** Where a queued job goes, recomputed from the current hosts; a refusal other than a silent host rejects it. */
  private place(s: JobState): Placed | Refusal | undefined {
    const { state } = this.d;
    const known = state.placement.get(s.jobId!);
    if (known && state.hosts.has(known.host)) return known;
    const adm =
      s.kind === 'save' ? admitSave(s.saveRequest!, state.hosts.values(), this.admitOpts()) : admitRestore(s.restoreRequest!, state.hosts, this.knownImages(), this.admitOpts());
    if ('rule' in adm) return adm.rule === 'host-online' ? undefined : adm;
    const p = { host: adm.host, vm: 'vm' in adm && typeof adm.vm === 'string' ? adm.vm : s.vm, ramBytes: 'ramBytes' in adm ? adm.ramBytes : 0 };
    state.placement.set(s.jobId!, p);
    return p;
  }

  private async dispatch(q: QueuedJob): Promise<void> {
    const { state, cfg } = this.d;
    const s = state.jobs.get(q.jobId)!;
    const log = this.d.log.child({ jobId: q.jobId, host: q.host });
    // Every job runs under a lease with a fencing token: its VM's, or (a restore of an image the
    // log does not know) its image's on that host.
    if (!q.vm) {
      log.warn('no VM or image to lease; job stays queued');
      return;
    }
    const lease = await this.d.leases.acquire(q.vm, q.jobId, cfg.VMSAVE_LEASE_TTL_MS);
    if (!lease) {
      log.info({ lease: q.vm }, 'VM lease held elsewhere; job stays queued');
      return;
    }
    const token = lease.token;
    const host = state.hosts.get(q.host)!.announcement;
    const ramBytes = state.placement.get(q.jobId)?.ramBytes ?? 0;
    const deadlineMs = s.saveRequest?.deadlineMs ?? s.restoreRequest?.deadlineMs ?? defaultDeadlineMs(ramBytes, host.throughputBytesPerSec);
    const deadlineAt = new Date(Date.now() + deadlineMs).toISOString();
    const events = await this.d.journal.emit(s, { type: 'Schedule', host: q.host, fencingToken: token, deadlineAt });
    if (!events.length) return;
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
      work = { kind: 'restore', jobId: q.jobId, attempt: after.attempt, fencingToken: token, host: q.host, deadlineAt, request: s.restoreRequest! };
    }
    await publishValidated(this.d.bus, messages.work, subjects.work(q.host), work, { msgId: `${q.jobId}.${after.attempt}` });
    log.info({ attempt: after.attempt, fencingToken: token, deadlineAt }, 'work handed to executor');
  }
}
