/** Percentiles, medians and the Markdown the load benchmark prints and writes. */

/** Nearest-rank percentile (p in 0..100) of unsorted values; NaN for none. */
export function percentile(values: readonly number[], p: number): number {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))]!;
}

export const median = (values: readonly number[]): number => percentile(values, 50);

export interface RunResult {
  requests: number;
  vms: number;
  hosts: number;
  slots: number;
  /** Requests whose SaveScheduled arrived (all of them unless the run timed out). */
  scheduled: number;
  admitted: number;
  rejected: number;
  /** SaveFailed events (e.g. the watchdog calling an executor lost): 0 in a healthy run. */
  failed: number;
  /** Of those, SaveFailed for an attempt whose SaveCompleted was already in the log. */
  failedAfterCompleted: number;
  /** Work items the simulated executors received (more than `requests` when jobs were retried). */
  workItems: number;
  /** Scheduler processes sharing the work. */
  schedulers: number;
  /** Where the requests were published: each VM's partition subject, or the bare `vmsave.cmd.save`. */
  subjectMode: 'partitioned' | 'bare';
  /** The checks, across all schedulers (all 0 in a correct run): a second SaveRequested of a job, a second SaveScheduled of an attempt, a second work item of an attempt. */
  requestedTwice: number;
  scheduledTwice: number;
  workItemsTwice: number;
  /** A VM's job scheduled while another job of that VM was between SaveScheduled and its end. */
  vmOverlaps: number;
  /** Jobs admitted (scheduled) after a job of their VM whose command came later in the command stream. */
  outOfOrderRequested: number;
  outOfOrderScheduled: number;
  /** "partitions owned" lines the schedulers logged after the burst began (0: nobody took over anything mid-run). */
  ownershipChanges: number;
  timedOut: boolean;
  /** JetStream acks of the publishes, per second (what the bus absorbs). */
  publishPerSec: number;
  /** SaveRequested in the log per second, from the first publish to the last SaveRequested. */
  admittedPerSec: number;
  /** SaveScheduled per second, from the first publish to the last SaveScheduled. */
  scheduledPerSec: number;
  /** Admission rate over the first and the last tenth of the requests (how it degrades with the backlog). */
  admittedPerSecFirstTenth: number;
  admittedPerSecLastTenth: number;
  /** Publish → SaveRequested, ms. */
  admitP50: number;
  admitP99: number;
  /** Publish → SaveScheduled, ms: all requests, and the first `slots` (no queueing behind the host limit). */
  schedP50: number;
  schedP99: number;
  schedMax: number;
  firstP50: number;
  firstP99: number;
  firstMax: number;
  /** First publish → last SaveCompleted, s. */
  wallS: number;
  /** Sum over the schedulers. */
  schedulerCpuS: number;
  /** Each scheduler's CPU seconds, "a + b + c". */
  schedulerCpuSplit: string;
  /** Scheduler CPU time over wall time (1.0 = one core busy all the time). */
  schedulerCpuShare: number;
  schedulerRssMiB: number;
  schedulerPeakRssMiB: number;
  natsCpuS: number;
  benchCpuS: number;
  loadAvg: number;
  /** Arrival of SaveScheduled in the benchmark minus the event's own timestamp, ms (part of every latency above). */
  followLagP50: number;
  followLagP99: number;
  /** JetStream's own publish-ack rate on the same NATS (scratch stream, same window): the ceiling. */
  ceilingPerSec: number;
  /** Jobs/s the slots could absorb: slots ÷ the mean simulated save time. */
  slotCapacityPerSec: number;
  /** The paced stream after the burst (half the burst's admission rate). */
  pacedRate: number;
  pacedCount: number;
  pacedAdmitted: number;
  pacedP50: number;
  pacedP99: number;
}

const f0 = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '–');
const f1 = (n: number): string => (Number.isFinite(n) ? n.toFixed(1) : '–');
const f2 = (n: number): string => (Number.isFinite(n) ? n.toFixed(2) : '–');
const ms = (n: number): string => (!Number.isFinite(n) ? '–' : n >= 10_000 ? `${(n / 1000).toFixed(1)} s` : `${Math.round(n)} ms`);

/** The median of each field over repetitions of one size. */
export function medianRun(runs: readonly RunResult[]): RunResult {
  const first = runs[0]!;
  const out = { ...first } as Record<string, unknown>;
  for (const k of Object.keys(first) as (keyof RunResult)[]) {
    if (typeof first[k] === 'number') out[k] = median(runs.map((r) => r[k] as number));
  }
  out.timedOut = runs.some((r) => r.timedOut);
  return out as unknown as RunResult;
}

export function sizeLabel(r: Pick<RunResult, 'requests' | 'vms' | 'hosts'>): string {
  return `${f0(r.requests)} req / ${f0(r.vms)} VMs / ${r.hosts} hosts`;
}

/** A row: the size and how many schedulers shared it. */
export function rowLabel(r: Pick<RunResult, 'requests' | 'vms' | 'hosts' | 'schedulers'>): string {
  return `${sizeLabel(r)}, ${r.schedulers} scheduler${r.schedulers === 1 ? '' : 's'}`;
}

/** Two tables (throughput and cost; latency), one row per size. */
export function renderTables(rows: readonly { result: RunResult; reps: number }[]): string {
  const t1 = [
    '| size | admitted req/s | admitted req/s, first → last tenth | SaveScheduled/s | publish acks/s | wall (to last SaveCompleted) | scheduler CPU | CPU per request | scheduler RSS (peak) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map(
      ({ result: r }) =>
        `| ${rowLabel(r)}${r.timedOut ? ` (timed out: ${f0(r.scheduled)} scheduled)` : ''} | ${f0(r.admittedPerSec)} | ${f0(r.admittedPerSecFirstTenth)} → ${f0(r.admittedPerSecLastTenth)} | ${f0(r.scheduledPerSec)} | ${f0(r.publishPerSec)} | ${f1(r.wallS)} s | ${f1(r.schedulerCpuS)} s${r.schedulers > 1 ? ` (${r.schedulerCpuSplit})` : ''} (${Math.round(r.schedulerCpuShare * 100)} % of a core) | ${f2((r.schedulerCpuS * 1000) / r.requests)} ms | ${f0(r.schedulerRssMiB)} MiB (${f0(r.schedulerPeakRssMiB)}) |`,
    ),
  ];
  const t2 = [
    '| size | slots (hosts × limit) | publish → SaveRequested p50 / p99 | publish → SaveScheduled p50 / p99 / max | first *slots* requests (no queueing) p50 / p99 / max |',
    '|---|---:|---:|---:|---:|',
    ...rows.map(
      ({ result: r }) =>
        `| ${rowLabel(r)} | ${r.slots} | ${ms(r.admitP50)} / ${ms(r.admitP99)} | ${ms(r.schedP50)} / ${ms(r.schedP99)} / ${ms(r.schedMax)} | ${ms(r.firstP50)} / ${ms(r.firstP99)} / ${ms(r.firstMax)} |`,
    ),
  ];
  const t3 = [
    "| size | repetitions | rejected | SaveFailed (of them after that attempt's SaveCompleted) | work items received | log follower lag p50 / p99 | nats-server CPU | benchmark process CPU | load average at start |",
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map(
      ({ result: r, reps }) =>
        `| ${rowLabel(r)} | ${reps} | ${r.rejected} | ${f0(r.failed)} (${f0(r.failedAfterCompleted)}) | ${f0(r.workItems)} | ${ms(r.followLagP50)} / ${ms(r.followLagP99)} | ${f1(r.natsCpuS)} s | ${f1(r.benchCpuS)} s | ${f2(r.loadAvg)} |`,
    ),
  ];
  const t4 = [
    '| size | JetStream publish acks/s (ceiling) | admitted ÷ ceiling | SaveScheduled/s ÷ slot capacity | paced stream (half the rate in Settings) | paced publish → SaveRequested p50 / p99 |',
    '|---|---:|---:|---:|---:|---:|',
    ...rows.map(
      ({ result: r }) =>
        `| ${rowLabel(r)} | ${f0(r.ceilingPerSec)} | ${f2(r.admittedPerSec / r.ceilingPerSec)} | ${f0(r.scheduledPerSec)} ÷ ${f0(r.slotCapacityPerSec)} = ${f2(r.scheduledPerSec / r.slotCapacityPerSec)} | ${r.pacedCount ? `${f0(r.pacedAdmitted)} of ${f0(r.pacedCount)} at ${f0(r.pacedRate)}/s` : '–'} | ${ms(r.pacedP50)} / ${ms(r.pacedP99)} |`,
    ),
  ];
  const t5 = [
    '| size | published on | admitted twice | attempt scheduled twice | attempt handed out twice | VM with two jobs at once | out of per-VM command order: admitted / scheduled | partition ownership changes during the run |',
    '|---|---|---:|---:|---:|---:|---:|---:|',
    ...rows.map(
      ({ result: r }) =>
        `| ${rowLabel(r)} | ${r.subjectMode === 'partitioned' ? 'partition subjects' : 'bare `vmsave.cmd.save`'} | ${f0(r.requestedTwice)} | ${f0(r.scheduledTwice)} | ${f0(r.workItemsTwice)} | ${f0(r.vmOverlaps)} | ${f0(r.outOfOrderRequested)} / ${f0(r.outOfOrderScheduled)} | ${f0(r.ownershipChanges)} |`,
    ),
  ];
  return [t1.join('\n'), t2.join('\n'), t3.join('\n'), t4.join('\n'), t5.join('\n')].join('\n\n');
}

/** The issue's targets (benchmark goals, not tests), each with what this run reached; CPU per request is compared across sizes at each scheduler count. */
export function renderTargets(results: readonly RunResult[]): string {
  const yes = (ok: boolean) => (ok ? 'met' : '**not met**');
  const lines = ['| target | reached | |', '|---|---|---|'];
  for (const r of results) {
    lines.push(`| ≥ 5,000 admitted/s at ${rowLabel(r)} | ${f0(r.admittedPerSec)}/s | ${yes(r.admittedPerSec >= 5000)} |`);
    const ratio = r.admittedPerSecLastTenth / r.admittedPerSecFirstTenth;
    lines.push(`| last tenth ≥ 0.8 × first tenth at ${rowLabel(r)} | ${f2(ratio)} × | ${yes(ratio >= 0.8)} |`);
    lines.push(`| paced p99 ≤ 50 ms at ${rowLabel(r)} | ${ms(r.pacedP99)} | ${yes(r.pacedP99 <= 50)} |`);
    const wrong = r.requestedTwice + r.scheduledTwice + r.workItemsTwice + r.vmOverlaps + r.outOfOrderRequested + r.outOfOrderScheduled + r.failedAfterCompleted;
    const whole = r.admitted + r.rejected === r.requests && !r.timedOut;
    lines.push(
      `| every request admitted once, no save run twice, no SaveFailed after SaveCompleted, per-VM order at ${rowLabel(r)} | ${f0(r.admitted)} admitted + ${f0(r.rejected)} rejected of ${f0(r.requests)}; ${wrong} violations | ${yes(whole && wrong === 0)} |`,
    );
  }
  for (const n of [...new Set(results.map((r) => r.schedulers))]) {
    const group = results.filter((r) => r.schedulers === n);
    if (group.length < 2) continue;
    const cpu = group.map((r) => (r.schedulerCpuS * 1000) / r.requests);
    const mid = median(cpu);
    const spread = Math.max(...cpu.map((c) => Math.abs(c - mid) / mid));
    lines.push(
      `| CPU per request within ±20 % across sizes, ${n} scheduler${n === 1 ? '' : 's'} | ${cpu.map((c) => `${f2(c)} ms`).join(', ')} (largest deviation from the median ${Math.round(spread * 100)} %) | ${yes(spread <= 0.2)} |`,
    );
  }
  return lines.join('\n');
}

export const BEGIN = '<!-- load-bench:begin (written by npm run bench:load -w @vmsave/scheduler; edits here are overwritten) -->';
export const END = '<!-- load-bench:end -->';

/** Replace what lies between the markers (or append a section with them). */
export function splice(doc: string, body: string, heading: string): string {
  const i = doc.indexOf(BEGIN.slice(0, 22));
  const j = doc.indexOf(END);
  if (i >= 0 && j > i) return `${doc.slice(0, i)}${BEGIN}\n${body}\n${doc.slice(j)}`;
  return `${doc.trimEnd()}\n\n${heading}\n\n${BEGIN}\n${body}\n${END}\n`;
}
