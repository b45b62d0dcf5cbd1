/**
 * `vmsave jobs` reads the read model through the store's `queryJobs` (the dashboard's query):
 * filters by state, host, VM and kind, newest first, with the number of matches.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { RestoreRequest, SaveRequest, jobIdFor, makeEvent, type JobEvent } from '@vmsave/contracts';
import { connectRedis, Projection } from '@vmsave/store';
import { testUrls, uniq } from '@vmsave/testkit';
import { EXIT } from '../src/errors.ts';
import { vmsave } from './helpers.ts';

let redis: Redis;
let projection: Projection;
let env: Record<string, string>;
const prefix = uniq('cli-jobs');
const T0 = Date.parse('2026-11-01T00:00:00Z');
const src = (s: number) => ({ source: 'test', at: new Date(T0 + s * 1000) });

function save(t: number, vm: string, host: string, failed: boolean): JobEvent[] {
  const request = SaveRequest.parse({ requestId: uniq('r'), vm });
  const jobId = jobIdFor('save', request.requestId);
  const base = { host, attempt: 1, fencingToken: 1 };
  const out: JobEvent[] = [
    makeEvent('SaveRequested', jobId, { request }, src(t)),
    makeEvent('SaveScheduled', jobId, { ...base, deadlineAt: new Date(T0 + 600_000).toISOString() }, src(t + 0.1)),
  ];
  if (failed)
    out.push(
      makeEvent('SaveFailed', jobId, { attempt: 1, stage: 'migrate', reason: 'No space left on device', code: 'ENOSPC', retryable: false, vmResumed: true, host }, src(t + 0.2)),
    );
  return out;
}

beforeAll(async () => {
  const { natsUrl, redisUrl } = await testUrls();
  redis = await connectRedis(redisUrl);
  projection = new Projection(redis, prefix);
  const events: JobEvent[] = [];
  for (let i = 0; i < 10; i++) events.push(...save(i, `vm-${i % 2}`, `h-${i % 3}`, i % 2 === 1));
  const restore = RestoreRequest.parse({ requestId: uniq('rr'), image: 'vm-0.vmsave' });
  events.push(makeEvent('RestoreRequested', jobIdFor('restore', restore.requestId), { request: restore, vm: 'vm-0' }, src(20)));
  await projection.ensureIndexes(); // as the projector does when it starts: the indexes are current
  await projection.applyBatch(events.map((event, i) => ({ seq: i + 1, event })));
  // Far past the shared log's end, so the CLI takes the read model as current whatever others publish.
  await redis.set(projection.k.appliedSeq, String(Number.MAX_SAFE_INTEGER));
  env = { NATS_URL: natsUrl, REDIS_URL: redisUrl, VMSAVE_REDIS_PREFIX: prefix };
});
afterAll(async () => {
  await projection?.clear();
  redis?.disconnect();
});

const run = async (args: string[]) => {
  const r = await vmsave(['jobs', ...args, '--json'], env, { timeoutMs: 30_000 });
  expect(r.code, r.stderr).toBe(EXIT.ok);
  return r.json<{ source: string; total: number; jobs: Array<{ vm: string; host?: string; status: string; kind: string; requestedAt: string }> }>();
};

describe('vmsave jobs over the read model', () => {
  it('filters by state and host, newest first, with the number of matches', async () => {
    // Failed: i = 1, 3, 5, 7, 9; on h-0: i = 3, 9.
    const r = await run(['--state', 'failed', '--host', 'h-0']);
    expect(r.source).toBe('redis');
    expect(r.total).toBe(2);
    expect(r.jobs.map((j) => [j.requestedAt, j.status, j.host])).toEqual([
      [new Date(T0 + 9000).toISOString(), 'failed', 'h-0'],
      [new Date(T0 + 3000).toISOString(), 'failed', 'h-0'],
    ]);
  });

  it('filters by kind and VM, and --limit cuts the page but not the total', async () => {
    const restores = await run(['--kind', 'restore']);
    expect(restores.jobs.map((j) => [j.kind, j.vm])).toEqual([['restore', 'vm-0']]);
    const page = await run(['--vm', 'vm-0', '--kind', 'save', '--limit', '2']);
    expect(page.total).toBe(5);
    expect(page.jobs.map((j) => j.requestedAt)).toEqual([new Date(T0 + 8000).toISOString(), new Date(T0 + 6000).toISOString()]);
  });

  it('refuses an unknown kind naming the flag', async () => {
    const r = await vmsave(['jobs', '--kind', 'backup'], env, { timeoutMs: 30_000 });
    expect(r.code).toBe(EXIT.usage);
    expect(r.stderr).toMatch(/--kind must be among save, restore, drain/);
  });
});
