import type { Redis } from 'ioredis';
import { SaveRequest, jobIdFor, makeEvent, sourceOf, streams, type JobEvent, type SaveRequestInput } from '@vmsave/contracts';
import { Bus, createLogger, publishEvent } from '@vmsave/bus';
import { connectRedis, keys, Projection } from '@vmsave/store';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import type { FastifyInstance } from 'fastify';
import { createDashboard, type DashboardOptions } from '../src/index.ts';

export const quiet = createLogger('dashboard-test', { level: process.env.VMSAVE_TEST_LOG ?? 'silent' });
const source = { source: 'dashboard-test' };
// Jobs are ordered by request time in milliseconds: give each request its own millisecond.
let lastAt = 0;
const requestTime = () => {
  lastAt = Math.max(Date.now(), lastAt + 1);
  return new Date(lastAt);
};

export interface Harness {
  bus: Bus;
  redis: Redis;
  prefix: string;
  app: FastifyInstance;
  projection: Projection;
  close(): Promise<void>;
}

/**
 * A dashboard on a fresh Redis prefix whose read models start at the current end of the
 * shared event log (so a test sees only the jobs published after it started).
 */
export async function startDashboard(opts: Partial<DashboardOptions> = {}, env: { natsUrl?: string } = {}): Promise<Harness> {
  const urls = await testUrls();
  const { redisUrl } = urls;
  const natsUrl = env.natsUrl ?? urls.natsUrl;
  const bus = await Bus.connect({ servers: natsUrl, name: 'dashboard-test' });
  await bus.ensureStreams();
  const redis = await connectRedis(redisUrl);
  const prefix = uniq('dash');
  const last = (await bus.jsm.streams.info(streams.events.name)).state.last_seq;
  await redis.set(keys(prefix).appliedSeq, String(last));
  const app = await createDashboard({ bus, redis, prefix, log: quiet, progressThrottleMs: 100, ...opts });
  await app.ready();
  const projection = new Projection(redis, prefix);
  return {
    bus,
    redis,
    prefix,
    app,
    projection,
    async close() {
      const t0 = Date.now();
      await app.close();
      if (process.env.VMSAVE_TEST_LOG) console.log('app.close ms', Date.now() - t0);
      await projection.clear();
      await redis.del(keys(prefix).appliedSeq);
      redis.disconnect();
      await bus.close();
    },
  };
}

export interface SaveScript {
  jobId: string;
  vm: string;
  host: string;
  request: SaveRequest;
  requested(): JobEvent;
  scheduled(): JobEvent;
  started(): JobEvent;
  completed(): JobEvent;
  verified(): JobEvent;
  imageRejected(): JobEvent;
  failed(reason?: string): JobEvent;
  rejected(message?: string): JobEvent;
}

export const GiB = 1024 ** 3;

/** The events of one save job, built with the contracts' `makeEvent`. */
export function saveJob(vm: string, host: string, req: Partial<SaveRequestInput> = {}): SaveScript {
  const request = SaveRequest.parse({ requestId: uniq('r'), vm, format: 'sparse', channels: 4, directIo: true, ...req });
  const jobId = jobIdFor('save', request.requestId);
  const base = { host, attempt: 1, fencingToken: 7 };
  const imagePath = `${vm}-${jobId}.vmsave`;
  return {
    jobId,
    vm,
    host,
    request,
    requested: () => makeEvent('SaveRequested', jobId, { request }, { ...source, at: requestTime() }),
    scheduled: () => makeEvent('SaveScheduled', jobId, { ...base, deadlineAt: new Date(Date.now() + 600_000).toISOString() }, source),
    started: () => makeEvent('SaveStarted', jobId, { ...base, imagePath, format: 'sparse', channels: 4, directIo: true, wasRunning: true, ramBytes: 4 * GiB }, source),
    completed: () =>
      makeEvent(
        'SaveCompleted',
        jobId,
        {
          ...base,
          imagePath,
          format: 'sparse',
          bytes: 4 * GiB + 8192,
          blocks: (1.5 * GiB) / 512,
          durationMs: 2600,
          throughputBytesPerSec: 1.6 * GiB,
          vmState: 'running',
          qemu: { totalTimeMs: 2500 },
        },
        source,
      ),
    verified: () =>
      makeEvent(
        'ImageVerified',
        jobId,
        {
          imagePath,
          host,
          checks: [
            { name: 'header.magic', status: 'pass', detail: 'complete image, version 1' },
            { name: 'descriptor.checksum', status: 'pass', detail: 'sha256 matches' },
            { name: 'format.compatibility', status: 'pass', detail: 'mapped-ram stream in a sparse image' },
            { name: 'sparseness', status: 'warn', detail: '37% of the logical size allocated' },
          ],
        },
        source,
      ),
    imageRejected: () =>
      makeEvent(
        'ImageRejected',
        jobId,
        {
          imagePath,
          host,
          checks: [
            { name: 'header.magic', status: 'pass', detail: 'complete image, version 1' },
            { name: 'sparseness', status: 'fail', detail: 'pages region is dense: 100% allocated (copied without --sparse?)' },
          ],
        },
        source,
      ),
    failed: (reason = 'No space left on device') =>
      makeEvent('SaveFailed', jobId, { attempt: 1, stage: 'migrate', reason, code: 'ENOSPC', retryable: false, vmResumed: true, host }, source),
    rejected: (message = `VM ${vm} already has a job in progress`) => makeEvent('SaveRejected', jobId, { rule: 'one-job-per-vm', field: 'vm', message }, source),
  };
}

/** Ids of the events the tests published (other services on a shared NATS add their own). */
export const publishedEventIds = new Set<string>();

export async function publishAll(bus: Bus, events: JobEvent[]): Promise<number> {
  let seq = 0;
  for (const e of events) publishedEventIds.add(e.eventId);
  // Each event as the role that may publish it (the log reader refuses any other source).
  for (const e of events) seq = (await publishEvent(bus, { ...e, source: sourceOf(e.type) })).seq;
  return seq;
}

/** Wait until the dashboard's read models include stream sequence `seq`. */
export async function projected(h: Harness, seq: number): Promise<void> {
  await waitFor(`read models at seq ${seq}`, async () => (await h.projection.appliedSeq()) >= seq, 30_000);
}

export { uniq, waitFor };
