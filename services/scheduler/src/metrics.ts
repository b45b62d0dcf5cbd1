/**
 * The scheduler's own metrics, on top of what every service exports (process, bus, and the
 * admissions counted from the events it appends): queue depth and active jobs per host, jobs by
 * kind and status, and admission latency. The numbers come from a {@link SchedulerMetricsSource},
 * read at each scrape; {@link schedulerStateSource} builds one over the scheduler's folded state.
 */
import type { JobState } from '@vmsave/jobs';
import { ON_HOST_STATUSES } from '@vmsave/jobs';
import type { ServiceMetrics } from '@vmsave/metrics';

/** What the scheduler's gauges read at each scrape. */
export interface SchedulerMetricsSource {
  /** Admitted jobs not yet handed to a host, by the host they are placed on ('' while none is known). */
  queueDepthByHost(): Record<string, number>;
  /** Jobs scheduled or running, by host. */
  activeByHost(): Record<string, number>;
  /** Jobs by kind and status (all the scheduler knows); optional. */
  jobsByKindAndState?(): Array<{ kind: string; state: string; count: number }>;
}

export interface SchedulerMetrics {
  /** Run one command's admission and record how long it took, whatever its outcome. */
  timeAdmission<T>(fn: () => Promise<T>): Promise<T>;
}

/** Register the scheduler's gauges (read from `source` at each scrape) and its admission histogram. */
export function registerSchedulerMetrics(metrics: ServiceMetrics, source: SchedulerMetricsSource): SchedulerMetrics {
  const setAll = (g: { reset(): void; set(labels: { host: string }, v: number): void }, byHost: Record<string, number>) => {
    g.reset();
    for (const [host, n] of Object.entries(byHost)) g.set({ host }, n);
  };
  metrics.gauge('queueDepth', function () {
    setAll(this, source.queueDepthByHost());
  });
  metrics.gauge('activeJobs', function () {
    setAll(this, source.activeByHost());
  });
  metrics.gauge('jobs', function () {
    this.reset();
    for (const { kind, state, count } of source.jobsByKindAndState?.() ?? []) this.set({ kind, state }, count);
  });
  // At 0 from the start, so the first admission is a visible change.
  metrics.counter('admissions');
  const seconds = metrics.histogram('admissionSeconds');
  return {
    async timeAdmission<T>(fn: () => Promise<T>): Promise<T> {
      const end = seconds.startTimer();
      try {
        return await fn();
      } finally {
        end();
      }
    },
  };
}

/** The parts of the scheduler's state the source reads (`SchedulerState` has them). */
export interface SchedulerStateView {
  readonly jobs: ReadonlyMap<string, JobState>;
  readonly placement: ReadonlyMap<string, { host: string }>;
  openJobs(): Iterable<JobState>;
  /** The state's own incremental counters, read instead of a walk when it keeps them. */
  queueDepthByHost?(): Record<string, number>;
  activeByHost?(): Record<string, number>;
}

/**
 * A {@link SchedulerMetricsSource} over the scheduler's folded state: a `requested` job is queued
 * on the host it is placed on (or asked for); a `scheduled` or `running` one is active on its host.
 */
export function schedulerStateSource(state: SchedulerStateView): SchedulerMetricsSource {
  const count = (pick: (s: JobState) => string | undefined) => {
    const out: Record<string, number> = {};
    for (const s of state.openJobs()) {
      const host = pick(s);
      if (host !== undefined) out[host] = (out[host] ?? 0) + 1;
    }
    return out;
  };
  return {
    queueDepthByHost: () =>
      state.queueDepthByHost?.() ?? count((s) => (s.status === 'requested' ? (state.placement.get(s.jobId!)?.host ?? s.restoreRequest?.host ?? '') : undefined)),
    activeByHost: () => state.activeByHost?.() ?? count((s) => (s.status !== 'none' && ON_HOST_STATUSES.has(s.status) ? (s.host ?? '') : undefined)),
    jobsByKindAndState: () => {
      const n = new Map<string, { kind: string; state: string; count: number }>();
      for (const s of state.jobs.values()) {
        if (!s.kind || s.status === 'none') continue;
        const k = `${s.kind}/${s.status}`;
        const row = n.get(k) ?? { kind: s.kind, state: s.status, count: 0 };
        row.count++;
        n.set(k, row);
      }
      return [...n.values()];
    },
  };
}
