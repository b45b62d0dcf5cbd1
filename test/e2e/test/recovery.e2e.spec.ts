import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { Projection, connectRedis } from '@vmsave/store';
import { makePattern, patternVm, testUrls, uniq, waitFor, MiB } from '@vmsave/testkit';
import { NatsCluster, Stack, recordFault } from '../src/index.ts';

// A private single NATS server with file storage, so it can be killed and restarted safely.
let dir: string;
let nats: NatsCluster;
let stack: Stack;
let redis: Redis;
let projection: Projection;
const ac = new AbortController();
let projecting: Promise<void>;
const vm = uniq('rec').replace(/[^A-Za-z0-9_-]/g, '');
const done = (s: { status: string; lastFailure?: { retryable: boolean } }) =>
  s.status === 'verified' || s.status === 'rejected' || (s.status === 'failed' && !s.lastFailure?.retryable);

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-recovery-'));
  nats = await NatsCluster.start(dir, 1);
  stack = await Stack.start({ hosts: ['a'], natsUrl: nats.url });
  redis = await connectRedis((await testUrls()).redisUrl);
  projection = new Projection(redis, `${stack.env.VMSAVE_REDIS_PREFIX}-rm`);
  projecting = projection.run(stack.bus, { signal: ac.signal });
  await stack.startVm('a', await patternVm(stack.dir, vm, 1024, makePattern(8 * MiB), 96));
  await stack.waitForHost('a', [vm]);
}, 240_000);
afterAll(async () => {
  ac.abort();
  await projecting?.catch(() => undefined);
  await projection?.clear().catch(() => undefined);
  redis?.disconnect();
  await stack?.stop();
  await nats?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('recovery from infrastructure faults', () => {
  it('NATS is killed during a save and restarted: the save completes, the log keeps every event once', async () => {
    const j = await stack.client.save({ requestId: uniq('nr'), vm, format: 'legacy' });
    await stack.client.waitForJob(j.jobId, { until: (s) => s.status === 'running' || done(s), timeoutMs: 60_000 });
    await nats.killNode(0);
    await new Promise((r) => setTimeout(r, 2000));
    await nats.startNode(0);
    const f = await stack.client.waitForJob(j.jobId, { until: done, timeoutMs: 180_000 });
    const h = await stack.client.history(j.jobId);
    expect(f.status, JSON.stringify(h.map((e) => e.type))).toBe('verified');
    expect(new Set(h.map((e) => e.eventId)).size).toBe(h.length);
    for (const name of ['scheduler', 'verifier', `executor:${stack.host('a')}`] as const) expect(stack.procs.get(name)!.exitCode, name).toBeNull();
    await recordFault({
      fault: 'NATS restarted',
      injection: 'SIGKILL of the (single, file-storage) NATS server while a save runs; restarted 2 s later on the same port and store',
      checked: 'save verified, each event once, no service restarted',
      result: 'pass',
      detail: h.map((e) => e.type).join(' → '),
    });
  });

  it('Redis is flushed: read models are rebuilt from the log and equal a rebuild into an empty Redis; scheduling goes on', async () => {
    const prefix = stack.env.VMSAVE_REDIS_PREFIX!;
    // Everything this deployment keeps in Redis: read models, VM leases, the scheduler's lease.
    const keys = [...(await redis.keys(`${prefix}:*`)), ...(await redis.keys(`${prefix}-rm:*`))];
    if (keys.length) await redis.del(...keys);
    const j = await stack.client.save({ requestId: uniq('rf'), vm, format: 'sparse' });
    expect((await stack.client.waitForJob(j.jobId, { until: done, timeoutMs: 120_000 })).status).toBe('verified');
    const last = (await stack.bus.jsm.streams.info('VMSAVE_EVT')).state.last_seq;
    await waitFor('the projection to rebuild and catch up', async () => (await projection.appliedSeq()) >= last, 60_000, 200);
    const fresh = new Projection(redis, `${prefix}-fresh`);
    await fresh.rebuild(stack.bus);
    expect(await projection.dump()).toEqual(await fresh.dump());
    expect((await projection.job(j.jobId))?.status).toBe('verified');
    await fresh.clear();
    expect(stack.procs.get('scheduler')!.exitCode).toBeNull();
    await recordFault({
      fault: 'Redis flushed',
      injection: "delete every key of the deployment (read models, VM leases, the scheduler's lease) while the stack runs",
      checked: 'a new save is verified; the live projection notices and rebuilds; it equals a rebuild into an empty prefix; scheduler alive',
      result: 'pass',
      detail: `${last} events replayed`,
    });
  });
});
