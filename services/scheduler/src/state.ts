import type { JobState } from '@vmsave/jobs';
import { isTerminal } from '@vmsave/jobs';
import { checkImagePath, imageLeaseKey, type HostView } from './policy.ts';

/** Host and VM an admitted job was placed on (recomputed after a restart). */
export interface Placed {
  host: string;
  vm?: string;
  ramBytes: number;
}

/**
 * What the scheduler knows, folded from the event log, host announcements and heartbeats. Every
 * change runs through `serial`, one at a time; the parts (admission, journal, placement,
 * watchdog) share this one object and hold no state of their own that another part reads.
 */
export class SchedulerState {
  readonly jobs = new Map<string, JobState>();
  /** Jobs not yet final: the only ones placement and the watchdog look at (the log holds many more). */
  private readonly open = new Set<string>();
  readonly hosts = new Map<string, HostView>();
  readonly heartbeats = new Map<string, { atMs: number; jobs: Set<string> }>();
  /** Last time each active job was known alive (scheduled, or named in a heartbeat). */
  readonly seen = new Map<string, number>();
  readonly placement = new Map<string, Placed>();
  /** Restores of an image no save in the log wrote (`RestoreRequested` without a VM): leased by image. */
  readonly imageOnly = new Set<string>();
  /**
   * Completed saves waiting for a verdict, in the order their bound runs out: inserted when a
   * `SaveCompleted` is folded, moved to the end when notice 1 is folded, removed on a verdict (or
   * once raised). Every bound is the same `VMSAVE_VERDICT_TIMEOUT_MS`, so insertion order is
   * due order and the watchdog reads only the head. `sinceMs`: when the current bound started.
   */
  readonly awaitingVerdict = new Map<string, { notice: 0 | 1; sinceMs: number; completedAtMs: number }>();
  /** Ids of events this scheduler appended: their echo from the log is skipped. */
  readonly own = new Set<string>();
  /** When this scheduler became the active one (a job's silence before that says nothing). */
  startedAtMs = Date.now();
  private chain: Promise<unknown> = Promise.resolve();

  put(jobId: string, s: JobState): void {
    this.jobs.set(jobId, s);
    if (s.status === 'none' || isTerminal(s) || s.status === 'completed') this.open.delete(jobId);
    else this.open.add(jobId);
    this.trackVerdict(jobId, s);
  }

  private trackVerdict(jobId: string, s: JobState): void {
    const notice = s.verificationOverdue?.notice ?? 0;
    if (s.kind !== 'save' || s.status !== 'completed' || notice === 2) {
      this.awaitingVerdict.delete(jobId);
      return;
    }
    const cur = this.awaitingVerdict.get(jobId);
    if (cur?.notice === notice) return;
    // The state's last event is the one that started this bound (`SaveCompleted`, or notice 1).
    const sinceMs = Date.parse(s.updatedAt ?? '') || Date.now();
    this.awaitingVerdict.delete(jobId);
    this.awaitingVerdict.set(jobId, { notice, sinceMs, completedAtMs: cur?.completedAtMs ?? sinceMs });
  }

  *openJobs(): Iterable<JobState> {
    for (const id of this.open) yield this.jobs.get(id)!;
  }

  /** The VM a job works on: from its events, else from where it was placed. */
  vmOf(s: JobState): string | undefined {
    return s.vm ?? this.placement.get(s.jobId!)?.vm;
  }

  /**
   * The key of the lease a job holds while it is on a host: its VM; for a restore of an image the
   * log does not know, the image on its host (`imageLeaseKey`), since its VM is known only once
   * the executor has read the image.
   */
  leaseKeyOf(s: JobState): string | undefined {
    const req = s.restoreRequest;
    if (!req || !this.imageOnly.has(s.jobId!)) return this.vmOf(s);
    const host = req.host ?? s.host ?? this.placement.get(s.jobId!)?.host;
    if (!host) return undefined;
    const imageDir = this.hosts.get(host)?.announcement.imageDir;
    const p = imageDir === undefined ? undefined : checkImagePath(req.image, imageDir);
    return imageLeaseKey(host, p && 'rel' in p ? p.rel : req.image);
  }

  /** Run state changes one at a time. */
  serial<T>(fn: () => Promise<T> | T): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Resolves once every change queued so far has run. */
  async settled(): Promise<void> {
    await this.chain.catch(() => undefined);
  }
}
