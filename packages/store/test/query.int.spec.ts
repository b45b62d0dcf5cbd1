import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { RestoreRequest, SaveRequest, jobIdFor, makeEvent, type JobEvent } from '@vmsave/contracts';
import type { LoggedEvent } from '@vmsave/bus';
import { testUrls, uniq } from '@vmsave/testkit';
import { Projection, connectRedis, keys, queryJobs } from '../src/index.ts';

let redis: Redis;
const prefixes: string[] = [];
beforeAll(async () => {
  redis = await connectRedis((await testUrls()).redisUrl);
});
afterAll(async () => {
  for (const p of prefixes) await new Projection(redis, p).clear();
  redis?.disconnect();
});
const fresh = () => {
  const p = uniq('query');
  prefixes.push(p);
  return p;
};

const T0 = Date.parse('2026-11-01T00:00:00Z');
const src = (ms: number) => ({ source: 'test', at: new Date(T0 + ms) });

/** A save of `vm` on `host` requested at T0 + `t` seconds, ending in `end`. */
function save(t: number, vm: string, host: string, end: 'requested' | 'running' | 'failed' | 'verified'): JobEvent[] {
  const request = SaveRequest.parse({ requestId: uniq('r'), vm });
  const jobId = jobIdFor('save', request.requestId);
  const ms = t * 1000;
  const base = { host, attempt: 1, fencingToken: 1 };
  const out: JobEvent[] = [makeEvent('SaveRequested', jobId, { request }, src(ms))];
  if (end === 'requested') return out;
  out.push(makeEvent('SaveScheduled', jobId, { ...base, deadlineAt: new Date(T0 + ms + 60_000).toISOString() }, src(ms + 1)));
  out.push(
    makeEvent(
      'SaveStarted',
      jobId,
      { ...base, imagePath: `${vm}-${jobId}.vmsave`, format: 'sparse', channels: 1, directIo: false, wasRunning: true, ramBytes: 64 << 20 },
      src(ms + 2),
    ),
  );
  if (end === 'running') return out;
  if (end === 'failed')
    return [
      ...out,
      makeEvent('SaveFailed', jobId, { attempt: 1, stage: 'migrate', reason: 'No space left on device', code: 'ENOSPC', retryable: false, vmResumed: true, host }, src(ms + 3)),
    ];
  out.push(
    makeEvent(
      'SaveCompleted',
      jobId,
      { ...base, imagePath: `${vm}-${jobId}.vmsave`, format: 'sparse', bytes: 1, blocks: 1, durationMs: 1, throughputBytesPerSec: 1, vmState: 'running', qemu: {} },
      src(ms + 3),
    ),
  );
  return [
    ...out,
    makeEvent('ImageVerified', jobId, { imagePath: `${vm}-${jobId}.vmsave`, host, checks: [{ name: 'header.magic', status: 'pass', detail: 'complete' }] }, src(ms + 4)),
  ];
}

function restore(t: number, vm: string): JobEvent[] {
  const request = RestoreRequest.parse({ requestId: uniq('rr'), image: `${vm}.vmsave` });
  return [makeEvent('RestoreRequested', jobIdFor('restore', request.requestId), { request, vm }, src(t * 1000))];
}

/** Events in log order (interleaved by time, as a log holds them), numbered from 1. */
const logged = (events: JobEvent[]): LoggedEvent[] => [...events].sort((a, b) => Date.parse(a.at) - Date.parse(b.at)).map((event, i) => ({ seq: i + 1, event }));

/** A small fleet: 3 VMs on 2 hosts, 12 saves and 2 restores, known states. */
function fleet(): LoggedEvent[] {
  const events: JobEvent[] = [];
  const ends = ['verified', 'failed', 'running', 'requested'] as const;
  for (let i = 0; i < 12; i++) events.push(...save(i * 10, `vm-${i % 3}`, `h-${i % 2}`, ends[i % 4]!));
  events.push(...restore(125, 'vm-0'), ...restore(135, 'vm-1'));
  return logged(events);
}

describe('the read model indexes and queryJobs', () => {
  it('applyBatch writes exactly what apply writes one event at a time', async () => {
    const events = fleet();
    const one = new Projection(redis, fresh());
    const many = new Projection(redis, fresh());
    for (const e of events) await one.apply(e);
    // Odd batch sizes: a job's events split across batches, and several jobs per batch.
    for (let i = 0; i < events.length; i += 7) await many.applyBatch(events.slice(i, i + 7));
    expect(await many.dump()).toEqual(await one.dump());
    // Replaying what is applied is a no-op.
    expect(await many.applyBatch(events)).toBe(0);
  });

  it('a job moves between the state indexes as its status changes', async () => {
    const prefix = fresh();
    const p = new Projection(redis, prefix);
    const k = keys(prefix);
    const events = logged(save(0, 'vm-a', 'h-a', 'failed'));
    const jobId = events[0]!.event.jobId;
    const where = async () => {
      const out: string[] = [];
      for (const s of ['requested', 'scheduled', 'running', 'failed']) if ((await redis.zscore(k.jobsByState(s), jobId)) !== null) out.push(s);
      return out;
    };
    const seen: string[][] = [];
    for (const e of events) {
      await p.apply(e);
      seen.push(await where());
    }
    expect(seen).toEqual([['requested'], ['scheduled'], ['running'], ['failed']]);
    expect(await redis.zscore(k.jobsByKind('save'), jobId)).toBe(String(T0));
  });

  it('filters by state, kind, VM, host and time, sorts both ways, pages, and counts per state', async () => {
    const prefix = fresh();
    const p = new Projection(redis, prefix);
    await p.applyBatch(fleet());
    const ids = async (q: Parameters<typeof queryJobs>[2]) => (await queryJobs(redis, prefix, q)).items.map((j) => `${j.kind}:${j.vm}@${j.requestedAt?.slice(14, 19)}`);

    const all = await queryJobs(redis, prefix, { limit: 5 });
    expect(all.total).toBe(14);
    expect(all.totals).toMatchObject({ requested: 5, scheduled: 0, running: 3, failed: 3, verified: 3 });
    expect(all.items.map((j) => j.requestedAt)).toEqual([135, 125, 110, 100, 90].map((s) => new Date(T0 + s * 1000).toISOString()));
    expect(await ids({ limit: 3, offset: 3 })).toEqual(['save:vm-1@01:40', 'save:vm-0@01:30', 'save:vm-2@01:20']);
    expect(await ids({ limit: 3, order: 'oldest' })).toEqual(['save:vm-0@00:00', 'save:vm-1@00:10', 'save:vm-2@00:20']);

    // i % 4 == 1 failed: saves 1, 5, 9 (vm-1 h-1, vm-2 h-1, vm-0 h-1)
    expect(await ids({ states: ['failed'], limit: 10 })).toEqual(['save:vm-0@01:30', 'save:vm-2@00:50', 'save:vm-1@00:10']);
    expect((await queryJobs(redis, prefix, { states: ['failed', 'verified'], limit: 10 })).total).toBe(6);
    expect(await ids({ kind: 'restore', limit: 10 })).toEqual(['restore:vm-1@02:15', 'restore:vm-0@02:05']);
    expect(await ids({ kind: 'save', vm: 'vm-0', limit: 10 })).toEqual(['save:vm-0@01:30', 'save:vm-0@01:00', 'save:vm-0@00:30', 'save:vm-0@00:00']);
    // Host and state together, and the totals under the host filter alone.
    // h-0 ran saves 0, 2, 4, …, 10: verified, running, verified, …; a requested save has no host yet.
    const h0 = await queryJobs(redis, prefix, { host: 'h-0', states: ['verified', 'running'], limit: 10 });
    expect(h0.items.map((j) => j.status)).toEqual(['running', 'verified', 'running', 'verified', 'running', 'verified']);
    expect(h0.totals).toMatchObject({ failed: 0, running: 3, verified: 3, requested: 0 });
    expect(h0.total).toBe(6);
    // VM + host + state: an intersection of three sets and a union.
    expect(await ids({ vm: 'vm-0', host: 'h-1', states: ['failed', 'verified'], limit: 10 })).toEqual(['save:vm-0@01:30']);
    // Time: [since, until).
    const win = await queryJobs(redis, prefix, { since: T0 + 30_000, until: T0 + 60_000, limit: 10 });
    expect(win.items.map((j) => j.requestedAt)).toEqual([50, 40, 30].map((s) => new Date(T0 + s * 1000).toISOString()));
    expect(win.total).toBe(3);
    expect((await queryJobs(redis, prefix, { since: T0 + 30_000, states: ['failed'], limit: 1 })).total).toBe(2);
    // No scratch key is left behind.
    expect(await redis.keys(`${prefix}:tmp:*`)).toEqual([]);
  });

  it('ensureIndexes builds the state and kind indexes over jobs stored before them, once', async () => {
    const prefix = fresh();
    const p = new Projection(redis, prefix);
    const k = keys(prefix);
    await p.applyBatch(fleet());
    // As a read model written by the projection before these indexes existed.
    for (const s of ['requested', 'running', 'failed', 'verified']) await redis.del(k.jobsByState(s));
    await redis.del(k.jobsByKind('save'), k.jobsByKind('restore'), k.indexVersion);
    expect((await queryJobs(redis, prefix, { states: ['failed'], limit: 10 })).total).toBe(0);
    expect(await p.ensureIndexes()).toBe(14);
    expect(await p.ensureIndexes()).toBe(0);
    expect((await queryJobs(redis, prefix, { states: ['failed'], limit: 10 })).total).toBe(3);
    expect((await queryJobs(redis, prefix, { kind: 'restore', limit: 10 })).total).toBe(2);
  });
});
