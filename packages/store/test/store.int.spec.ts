import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { SaveRequest, jobIdFor, makeEvent, sourceOf, type JobEvent } from '@vmsave/contracts';
import { Bus, createLogger, publishEvent } from '@vmsave/bus';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import { Leases, Projection, connectRedis } from '../src/index.ts';

const log = createLogger('store-test', { level: 'silent' });
let bus: Bus;
let redis: Redis;
let empty: Redis;

beforeAll(async () => {
  const { natsUrl, redisUrl } = await testUrls();
  bus = await Bus.connect({ servers: natsUrl, name: 'store-test' });
  await bus.ensureStreams();
  redis = await connectRedis(redisUrl);
  // A separate logical database stands in for "an empty Redis".
  const u = new URL(redisUrl);
  u.pathname = '/7';
  empty = await connectRedis(u.toString());
});
afterAll(async () => {
  await bus?.close();
  redis?.disconnect();
  empty?.disconnect();
});

function saveHistory(vm: string, host: string, outcome: 'verified' | 'failed'): JobEvent[] {
  const request = SaveRequest.parse({ requestId: uniq('r'), vm });
  const jobId = jobIdFor('save', request.requestId);
  const s = { source: 'test' };
  const base = { host, attempt: 1, fencingToken: 1 };
  const events: JobEvent[] = [
    makeEvent('SaveRequested', jobId, { request }, s),
    makeEvent('SaveScheduled', jobId, { ...base, deadlineAt: new Date(Date.now() + 60_000).toISOString() }, s),
    makeEvent('SaveStarted', jobId, { ...base, imagePath: `/img/${vm}.vmsave`, format: 'sparse', channels: 1, directIo: false, wasRunning: true, ramBytes: 64 << 20 }, s),
  ];
  if (outcome === 'failed') {
    events.push(makeEvent('SaveFailed', jobId, { attempt: 1, stage: 'migrate', reason: 'No space left on device', code: 'ENOSPC', retryable: false, vmResumed: true }, s));
  } else {
    events.push(
      makeEvent(
        'SaveCompleted',
        jobId,
        { ...base, imagePath: `/img/${vm}.vmsave`, format: 'sparse', bytes: 1, blocks: 1, durationMs: 1, throughputBytesPerSec: 1, vmState: 'running', qemu: {} },
        s,
      ),
    );
    events.push(makeEvent('ImageVerified', jobId, { imagePath: `/img/${vm}.vmsave`, checks: [{ name: 'header.magic', status: 'pass', detail: 'complete' }] }, s));
  }
  // Each event as the role that may publish it (the log reader refuses any other source).
  return events.map((e) => ({ ...e, source: sourceOf(e.type) }));
}

describe('read models', () => {
  it('fold the log live, and a rebuild from the log into an empty Redis equals them', async () => {
    const prefix = uniq('live');
    const live = new Projection(redis, prefix);
    const ac = new AbortController();
    const running = live.run(bus, { signal: ac.signal, log });

    const vm = uniq('vm');
    const a = saveHistory(vm, 'host-a', 'verified');
    const b = saveHistory(vm, 'host-b', 'failed');
    for (const e of [...a, ...b]) await publishEvent(bus, e);
    const last = (await bus.jsm.streams.info('VMSAVE_EVT')).state.last_seq;
    await waitFor('the live projection to reach the end of the log', async () => (await live.appliedSeq()) >= last, 60_000);
    ac.abort();
    await running;

    const jobA = await live.job(a[0]!.jobId);
    expect(jobA).toMatchObject({ status: 'verified', vm, host: 'host-a', imagePath: `/img/${vm}.vmsave` });
    expect((await live.job(b[0]!.jobId))?.lastFailure).toMatchObject({ code: 'ENOSPC', vmResumed: true });
    expect((await live.jobs({ vm })).map((j) => j.jobId).sort()).toEqual([a[0]!.jobId, b[0]!.jobId].sort());
    expect((await live.jobs({ host: 'host-b' })).map((j) => j.jobId)).toContain(b[0]!.jobId);
    expect(await live.latestImage(vm)).toMatchObject({ jobId: a[0]!.jobId, imagePath: `/img/${vm}.vmsave` });

    // Applying an old event again is a no-op.
    expect(await live.apply({ seq: 1, event: a[0]! })).toBe(false);

    const rebuilt = new Projection(empty, prefix);
    await rebuilt.clear();
    const n = await rebuilt.rebuild(bus, { log });
    expect(n).toBeGreaterThanOrEqual(a.length + b.length);
    expect(await rebuilt.dump()).toEqual(await live.dump());
    await live.clear();
    await rebuilt.clear();
  });

  it('a restarted projection resumes after the last applied sequence', async () => {
    const prefix = uniq('resume');
    const p = new Projection(redis, prefix);
    const first = saveHistory(uniq('vm'), 'h', 'verified');
    for (const e of first) await publishEvent(bus, e);
    let last = (await bus.jsm.streams.info('VMSAVE_EVT')).state.last_seq;
    let ac = new AbortController();
    let run = p.run(bus, { signal: ac.signal });
    await waitFor('first batch', async () => (await p.appliedSeq()) >= last, 60_000);
    ac.abort();
    await run;

    const second = saveHistory(uniq('vm'), 'h', 'failed');
    for (const e of second) await publishEvent(bus, e);
    last = (await bus.jsm.streams.info('VMSAVE_EVT')).state.last_seq;
    const appliedSeen: number[] = [];
    ac = new AbortController();
    const before = await p.appliedSeq();
    run = p.run(bus, { signal: ac.signal, onApplied: (e) => appliedSeen.push(e.seq) });
    await waitFor('second batch', async () => (await p.appliedSeq()) >= last, 60_000);
    ac.abort();
    await run;
    expect(Math.min(...appliedSeen)).toBe(before + 1);
    expect((await p.job(second[0]!.jobId))?.status).toBe('failed');
    await p.clear();
  });
});

describe('latest image after a scrub finds damage', () => {
  it('falls back on the newest other verified image of the VM, then on none', async () => {
    const p = new Projection(redis, uniq('scrub'));
    const vm = uniq('vm');
    const older = saveHistory(vm, 'h', 'verified');
    const newer = saveHistory(vm, 'h', 'verified');
    let seq = 0;
    for (const e of [...older, ...newer]) await p.apply({ seq: ++seq, event: e });
    expect((await p.latestImage(vm))?.jobId).toBe(newer[0]!.jobId);
    const scrubbed = (jobId: string) =>
      ({
        ...makeEvent(
          'ImageRejected',
          jobId,
          { imagePath: `/img/${vm}.vmsave`, scrub: true, checks: [{ name: 'seal.ram', status: 'fail', detail: 'differs' }] },
          { source: 'verifier' },
        ),
      }) as JobEvent;
    await p.apply({ seq: ++seq, event: scrubbed(newer[0]!.jobId) });
    expect((await p.job(newer[0]!.jobId))?.status).toBe('rejected');
    expect((await p.latestImage(vm))?.jobId).toBe(older[0]!.jobId);
    await p.apply({ seq: ++seq, event: scrubbed(older[0]!.jobId) });
    expect(await p.latestImage(vm)).toBeUndefined();
    await p.clear();
  });
});

describe('per-VM lease', () => {
  it('cannot be taken by another owner until it expires; fencing tokens grow', async () => {
    const prefix = uniq('lease');
    const leases = new Leases(redis, prefix);
    const vm = uniq('vm');
    const a = await leases.acquire(vm, 'job-a', 300);
    expect(a).toBeDefined();
    expect(await leases.acquire(vm, 'job-b', 300)).toBeUndefined();
    expect(await leases.renew({ ...a!, token: a!.token + 1 }, 300)).toBe(false);
    expect(await leases.renew(a!, 300)).toBe(true);
    expect((await leases.holder(vm))?.owner).toBe('job-a');
    await waitFor('the lease to expire', async () => (await leases.holder(vm)) === undefined, 5000);
    const b = await leases.acquire(vm, 'job-b', 1000);
    expect(b!.token).toBeGreaterThan(a!.token);
    // The stale holder can neither renew nor release the new lease.
    expect(await leases.renew(a!, 1000)).toBe(false);
    expect(await leases.release(a!)).toBe(false);
    expect(await leases.release(b!)).toBe(true);
    expect(await leases.holder(vm)).toBeUndefined();
    await redis.del(`${prefix}:lease:token`);
  });
});
