import type { EventOf, JobEvent } from '@vmsave/contracts';

/**
 * What the event log says about how saves ran, for end-to-end checks of the schedulers: one
 * window per (job, attempt), from its `SaveScheduled` (the host's slot is taken) or its
 * `SaveStarted` (the executor runs it) to the event that closed that attempt. Pure: give it the
 * events, read the answers.
 */
export interface AttemptWindow {
  jobId: string;
  vm: string;
  host: string;
  attempt: number;
  /** `at` of the attempt's SaveScheduled, in ms. */
  scheduledAt: number;
  /** `at` of its SaveStarted; undefined when the executor never started it. */
  startedAt?: number;
  /** `at` of the SaveCompleted/SaveFailed of this attempt (or the job's SaveCancelled); Infinity while open. */
  endedAt: number;
  endedBy?: 'SaveCompleted' | 'SaveFailed' | 'SaveCancelled';
}

/** Every save job's events, grouped by job id, in log order. */
export function byJob(events: readonly JobEvent[]): Map<string, JobEvent[]> {
  const m = new Map<string, JobEvent[]>();
  for (const e of events) {
    if (!e.jobId.startsWith('s-')) continue;
    const h = m.get(e.jobId);
    if (h) h.push(e);
    else m.set(e.jobId, [e]);
  }
  return m;
}

const ms = (e: JobEvent) => Date.parse(e.at);

/** The attempt windows of one save job (its VM from its SaveRequested). */
export function attemptWindows(history: readonly JobEvent[]): AttemptWindow[] {
  const vm = (history.find((e) => e.type === 'SaveRequested') as EventOf<'SaveRequested'> | undefined)?.data.request.vm ?? '?';
  const out: AttemptWindow[] = [];
  for (const e of history) {
    if (e.type === 'SaveScheduled') {
      out.push({ jobId: e.jobId, vm, host: e.data.host, attempt: e.data.attempt, scheduledAt: ms(e), endedAt: Number.POSITIVE_INFINITY });
      continue;
    }
    const open = (attempt?: number) => out.find((w) => w.endedAt === Number.POSITIVE_INFINITY && (attempt === undefined || w.attempt === attempt));
    if (e.type === 'SaveStarted') {
      const w = open(e.data.attempt);
      if (w && w.startedAt === undefined) w.startedAt = ms(e);
    } else if (e.type === 'SaveCompleted' || e.type === 'SaveFailed') {
      const w = open(e.data.attempt);
      if (w) {
        w.endedAt = ms(e);
        w.endedBy = e.type;
      }
    } else if (e.type === 'SaveCancelled') {
      const w = open();
      if (w) {
        w.endedAt = ms(e);
        w.endedBy = 'SaveCancelled';
      }
    }
  }
  return out;
}

export interface Interval {
  from: number;
  to: number;
  label: string;
}

/**
 * The most intervals open at one moment, and the labels of one such set. Intervals are half-open
 * `[from, to)`: one that ends in the same millisecond another starts does not overlap it.
 */
export function maxOverlap(intervals: readonly Interval[]): { max: number; at?: number; labels: string[] } {
  const points = intervals.flatMap((w) => [
    { t: w.from, d: 1, w },
    { t: w.to, d: -1, w },
  ]);
  // Ends before starts at the same time.
  points.sort((a, b) => a.t - b.t || a.d - b.d);
  const open = new Set<Interval>();
  let best: { max: number; at?: number; labels: string[] } = { max: 0, labels: [] };
  for (const p of points) {
    if (p.d < 0) open.delete(p.w);
    else {
      open.add(p.w);
      if (open.size > best.max) best = { max: open.size, at: p.t, labels: [...open].map((w) => w.label) };
    }
  }
  return best;
}

/** Group items by a key. */
export function groupBy<T>(items: readonly T[], key: (t: T) => string): Map<string, T[]> {
  const m = new Map<string, T[]>();
  for (const t of items) {
    const k = key(t);
    const g = m.get(k);
    if (g) g.push(t);
    else m.set(k, [t]);
  }
  return m;
}

/** The values that occur more than once, with their counts. */
export function repeated<T>(items: readonly T[]): Array<[T, number]> {
  const counts = new Map<T, number>();
  for (const t of items) counts.set(t, (counts.get(t) ?? 0) + 1);
  return [...counts].filter(([, n]) => n > 1);
}
