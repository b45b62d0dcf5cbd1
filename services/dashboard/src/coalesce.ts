/**
 * What the live stream owes one browser, bounded however far behind the browser is.
 *
 * Log events are queued as they are read. When the browser keeps up, `take` hands them out one
 * by one in log order. When it is behind (its socket's buffer is full, or more events wait than
 * `maxExact`), the queue is coalesced per job: only each job's latest event is sent, in log order
 * of those latest events, so every event up to the last one sent is sent or superseded and the
 * last id stays a valid resume point. When even that is more than `maxFrames` jobs, or more than
 * `cap` jobs waited (their events are then dropped, only counted), a summary is sent instead: the
 * number of events and jobs and the events per type, with the last sequence, and the browser
 * reloads its page from the API. Memory is bounded by `cap` entries.
 */
export interface Pending<E> {
  seq: number;
  jobId: string;
  event: E;
  /** Earlier events of this job that this one supersedes (0 when sent exactly). */
  superseded: number;
}

export interface Summary {
  /** The last log sequence the summary covers: the browser's new resume point. */
  seq: number;
  events: number;
  jobs: number;
  /** Events per type. */
  byType: Record<string, number>;
}

export type Take<E> = { kind: 'events'; items: Pending<E>[]; coalesced: boolean } | { kind: 'summary'; summary: Summary };

export interface CoalescerOptions {
  /** Queued events sent one by one while the browser keeps up (256). */
  maxExact?: number;
  /** At most this many coalesced job frames at once; more and a summary is sent (200). */
  maxFrames?: number;
  /** At most this many jobs remembered while behind; more and only counts are kept (5,000). */
  cap?: number;
}

export class Coalescer<E extends { type: string }> {
  private queue: Pending<E>[] = [];
  /** jobId → its latest pending event, in insertion order of the latest (delete + set). */
  private latest = new Map<string, Pending<E>>();
  private overflow: Summary | undefined;
  private readonly maxExact: number;
  private readonly maxFrames: number;
  private readonly cap: number;
  private events = 0;
  private byType: Record<string, number> = {};
  private lastSeq = 0;

  constructor(opts: CoalescerOptions = {}) {
    this.maxExact = opts.maxExact ?? 256;
    this.maxFrames = opts.maxFrames ?? 200;
    this.cap = opts.cap ?? 5000;
  }

  /** Events (or counted events) waiting. */
  get size(): number {
    return this.events;
  }

  push(seq: number, jobId: string, event: E): void {
    this.events++;
    this.lastSeq = seq;
    this.byType[event.type] = (this.byType[event.type] ?? 0) + 1;
    if (this.overflow) {
      this.overflow.seq = seq;
      return;
    }
    const prev = this.latest.get(jobId);
    const p: Pending<E> = { seq, jobId, event, superseded: prev ? prev.superseded + 1 : 0 };
    this.latest.delete(jobId);
    this.latest.set(jobId, p);
    this.queue.push(p);
    if (this.latest.size > this.cap) {
      // Too far behind to remember each job: from here on only counts.
      this.overflow = { seq, events: 0, jobs: this.latest.size, byType: {} };
      this.queue = [];
      this.latest.clear();
    }
  }

  /**
   * Everything owed, as events or as one summary; `behind` says the browser's buffer is full.
   * Undefined when nothing waits.
   */
  take(behind: boolean): Take<E> | undefined {
    if (this.events === 0) return undefined;
    let out: Take<E>;
    if (this.overflow || this.latest.size > this.maxFrames) {
      out = {
        kind: 'summary',
        summary: { seq: this.lastSeq, events: this.events, jobs: this.overflow ? Math.max(this.overflow.jobs, this.latest.size) : this.latest.size, byType: this.byType },
      };
    } else if (!behind && this.queue.length <= this.maxExact) {
      out = { kind: 'events', items: this.queue.map((p) => ({ ...p, superseded: 0 })), coalesced: false };
    } else {
      out = { kind: 'events', items: [...this.latest.values()], coalesced: true };
    }
    this.queue = [];
    this.latest.clear();
    this.overflow = undefined;
    this.events = 0;
    this.byType = {};
    return out;
  }
}
