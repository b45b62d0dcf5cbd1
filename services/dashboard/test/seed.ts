/**
 * Synthetic job histories folded into the read model through the real projection
 * (`Projection.applyBatch`, the code the dashboard's projector runs): 100,000 jobs in a few
 * seconds, under their own Redis prefix. Used by `bench:page` and the 100k browser test.
 *
 *   tsx --conditions=development test/seed.ts --jobs 100000 --prefix vmsave-seed   (prints the prefix; remove with --clear)
 */
import { jobIdFor, makeEvent, RestoreRequest, SaveRequest, type JobEvent } from '@vmsave/contracts';
import type { LoggedEvent } from '@vmsave/bus';
import { Projection } from '@vmsave/store';
import type { Redis } from 'ioredis';

const GiB = 1024 ** 3;
const DAY = 86_400_000;

export interface SeedSpec {
  jobs: number;
  vms?: number;
  hosts?: number;
  /** Requests spread over this many days before `endAt` (30). */
  days?: number;
  endAt?: number;
  /** Events per Redis transaction (2000). */
  batch?: number;
  /** Log sequence of the first event (1); the seeded read model's `proj:seq` ends at first + events − 1 unless `resetSeqTo` is set. */
  firstSeq?: number;
  /** After seeding, set the applied sequence to this (e.g. a private log's last sequence, so live events after it apply). */
  resetSeqTo?: number;
}

export const seedVm = (i: number): string => `seed-vm${String(i).padStart(5, '0')}`;
export const seedHost = (i: number): string => `seed-h${String(i).padStart(3, '0')}`;

/** A deterministic pseudo-random sequence (mulberry32), so two seeds of one size are alike. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Where a seeded job ends: mostly verified saves and completed restores, some of every other state. */
type Outcome = 'verified' | 'failed' | 'rejected' | 'cancelled' | 'running' | 'scheduled' | 'requested' | 'completed' | 'image-rejected';
const OUTCOMES: Array<[Outcome, number]> = [
  ['verified', 0.8],
  ['failed', 0.05],
  ['rejected', 0.04],
  ['cancelled', 0.02],
  ['image-rejected', 0.01],
  ['completed', 0.04],
  ['running', 0.02],
  ['scheduled', 0.01],
  ['requested', 0.01],
];

/** The events of seeded job `i`. */
export function seedEvents(i: number, spec: Required<Pick<SeedSpec, 'jobs' | 'vms' | 'hosts' | 'days' | 'endAt'>>, rand: () => number): JobEvent[] {
  const vmIndex = Math.floor(rand() * spec.vms);
  const vm = seedVm(vmIndex);
  const host = seedHost(vmIndex % spec.hosts);
  const src = { source: 'seed' };
  // Request times spread over the period, one millisecond apart at least (the index sorts by them).
  const t0 = spec.endAt - spec.days * DAY + Math.floor((i * spec.days * DAY) / Math.max(1, spec.jobs));
  let t = t0;
  const at = (ms: number) => {
    t += ms;
    return { ...src, at: new Date(t) };
  };
  let r = rand();
  let outcome: Outcome = 'verified';
  for (const [o, p] of OUTCOMES) {
    if (r < p) {
      outcome = o;
      break;
    }
    r -= p;
  }
  const restore = rand() < 0.2;
  const base = { host, attempt: 1, fencingToken: i + 1 };
  const format = rand() < 0.7 ? ('sparse' as const) : ('legacy' as const);
  const ramBytes = [1, 2, 4, 8][Math.floor(rand() * 4)]! * GiB;
  const durationMs = 800 + Math.floor(rand() * 4000);
  const out: JobEvent[] = [];
  if (restore) {
    const requestId = `seed-r-${i}`;
    const jobId = jobIdFor('restore', requestId);
    const imagePath = `${vm}-seed-${i}.vmsave`;
    out.push(makeEvent('RestoreRequested', jobId, { request: RestoreRequest.parse({ requestId, image: imagePath, host }), vm }, { ...src, at: new Date(t) }));
    if (outcome === 'rejected' || outcome === 'image-rejected') {
      out.push(makeEvent('RestoreRejected', jobId, { rule: 'image-unverified', field: 'image', message: `image ${imagePath} is not verified` }, at(3)));
      return out;
    }
    if (outcome === 'requested') return out;
    if (outcome === 'cancelled') return [...out, makeEvent('RestoreCancelled', jobId, { reason: 'cancelled by an operator' }, at(200))];
    out.push(makeEvent('RestoreScheduled', jobId, { ...base, deadlineAt: new Date(t + 600_000).toISOString() }, at(5)));
    if (outcome === 'scheduled') return out;
    out.push(
      makeEvent(
        'RestoreStarted',
        jobId,
        { ...base, imagePath, format, vm: { name: vm, uuid: '6f1c1a0e-3b7e-4c55-9d4e-2b1f0c9a8e11', machine: 'q35', memoryMiB: ramBytes / 2 ** 20, vcpus: 2, args: [] } },
        at(20),
      ),
    );
    if (outcome === 'running') return out;
    if (outcome === 'failed')
      return [
        ...out,
        makeEvent(
          'RestoreFailed',
          jobId,
          { attempt: 1, stage: 'restore', reason: 'qemu exited: load of migration failed', code: 'QEMU_EXIT', retryable: false, host },
          at(durationMs),
        ),
      ];
    return [...out, makeEvent('RestoreCompleted', jobId, { ...base, imagePath, vm, durationMs, vmState: 'running' }, at(durationMs))];
  }
  const requestId = `seed-s-${i}`;
  const jobId = jobIdFor('save', requestId);
  const imagePath = `${vm}-${jobId}.vmsave`;
  const request = SaveRequest.parse({ requestId, vm, format, channels: format === 'sparse' ? 4 : 1, directIo: format === 'sparse' });
  out.push(makeEvent('SaveRequested', jobId, { request }, { ...src, at: new Date(t) }));
  if (outcome === 'rejected') return [...out, makeEvent('SaveRejected', jobId, { rule: 'one-job-per-vm', field: 'vm', message: `VM ${vm} already has a job in progress` }, at(2))];
  if (outcome === 'requested') return out;
  if (outcome === 'cancelled') return [...out, makeEvent('SaveCancelled', jobId, { reason: 'cancelled by an operator' }, at(300))];
  out.push(makeEvent('SaveScheduled', jobId, { ...base, deadlineAt: new Date(t + 600_000).toISOString() }, at(4)));
  if (outcome === 'scheduled') return out;
  out.push(makeEvent('SaveStarted', jobId, { ...base, imagePath, format, channels: request.channels, directIo: request.directIo, wasRunning: true, ramBytes }, at(15)));
  if (outcome === 'running') return out;
  if (outcome === 'failed')
    return [
      ...out,
      makeEvent(
        'SaveFailed',
        jobId,
        { attempt: 1, stage: 'migrate', reason: 'qemu: Unable to write to file: No space left on device', code: 'ENOSPC', retryable: false, vmResumed: true, host },
        at(durationMs),
      ),
    ];
  const bytes = format === 'sparse' ? ramBytes + 8192 : Math.floor(ramBytes * (0.2 + rand() * 0.5));
  out.push(
    makeEvent(
      'SaveCompleted',
      jobId,
      {
        ...base,
        imagePath,
        format,
        bytes,
        blocks: Math.floor((bytes * (0.2 + rand() * 0.5)) / 512),
        durationMs,
        throughputBytesPerSec: Math.floor((ramBytes / durationMs) * 1000),
        vmState: 'running',
        qemu: { totalTimeMs: durationMs - 100 },
      },
      at(durationMs),
    ),
  );
  if (outcome === 'completed') return out;
  const checks = [
    { name: 'header.magic', status: 'pass' as const, detail: 'complete image, version 1' },
    { name: 'descriptor.checksum', status: 'pass' as const, detail: 'sha256 matches' },
  ];
  if (outcome === 'image-rejected')
    return [
      ...out,
      makeEvent('ImageRejected', jobId, { imagePath, host, checks: [...checks, { name: 'sparseness', status: 'fail' as const, detail: 'pages region is dense' }] }, at(400)),
    ];
  return [...out, makeEvent('ImageVerified', jobId, { imagePath, host, checks }, at(400))];
}

/**
 * Seed `spec.jobs` jobs into `prefix` (which should be empty) through `Projection.applyBatch`.
 * Returns the number of events applied.
 */
export async function seedJobs(redis: Redis, prefix: string, spec: SeedSpec): Promise<{ events: number; jobs: number }> {
  const full = { jobs: spec.jobs, vms: spec.vms ?? Math.max(1, Math.round(spec.jobs / 50)), hosts: spec.hosts ?? 50, days: spec.days ?? 30, endAt: spec.endAt ?? Date.now() };
  const projection = new Projection(redis, prefix);
  await projection.ensureIndexes(); // marks the empty prefix's indexes as current
  const rand = rng(spec.jobs);
  const perBatch = spec.batch ?? 2000;
  let seq = (spec.firstSeq ?? 1) - 1;
  let events = 0;
  let batch: LoggedEvent[] = [];
  for (let i = 0; i < spec.jobs; i++) {
    for (const event of seedEvents(i, full, rand)) batch.push({ seq: ++seq, event } as LoggedEvent);
    if (batch.length >= perBatch) {
      events += await projection.applyBatch(batch);
      batch = [];
    }
  }
  if (batch.length) events += await projection.applyBatch(batch);
  if (spec.resetSeqTo !== undefined) await redis.set(projection.k.appliedSeq, String(spec.resetSeqTo));
  return { events, jobs: spec.jobs };
}
