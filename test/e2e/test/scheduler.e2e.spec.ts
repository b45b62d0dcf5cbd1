import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import type { JobEvent } from '@vmsave/contracts';
import { QmpClient } from '@vmsave/qmp';
import { makePattern, patternVm, testUrls, uniq, waitFor, MiB } from '@vmsave/testkit';
import { Stack, recordFault } from '../src/index.ts';

let stack: Stack;
const name = (p: string) => uniq(p).replace(/[^A-Za-z0-9_-]/g, '');
const a3 = [name('a1'), name('a2'), name('a3')];
const [b1, b2] = [name('b1'), name('b2')];
const big = name('big');

/** A VM of `ramMiB` whose first `dirtyMiB` after 16 MiB hold non-zero data, so a save takes a while. */
async function bigVm(vm: string, ramMiB: number, dirtyMiB: number) {
  const file = path.join(stack.dir, `${vm}.bulk`);
  const chunk = makePattern(8 * MiB, 7);
  const out = createWriteStream(file);
  for (let i = 0; i < dirtyMiB / 8; i++) if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
  await new Promise<void>((r) => out.end(() => r()));
  const def = await patternVm(stack.dir, vm, ramMiB);
  def.args = ['-device', `loader,file=${file},addr=${16 * MiB},force-raw=on`];
  return def;
}

beforeAll(async () => {
  stack = await Stack.start({ hosts: ['a', 'b'], env: { VMSAVE_HOST_LIMIT: '2' }, hostEnv: { b: { VMSAVE_MAX_CONCURRENT: '1' } } });
  for (const vm of a3) await stack.startVm('a', await patternVm(stack.dir, vm, 256, makePattern(32 * MiB)));
  await stack.startVm('a', await bigVm(big, 2048, 1536));
  for (const vm of [b1, b2]) await stack.startVm('b', await patternVm(stack.dir, vm, 128));
  await stack.waitForHost('a', [...a3, big]);
  await stack.waitForHost('b', [b1, b2]);
}, 240_000);
afterAll(async () => {
  await stack?.stop();
});

/** [scheduled, closed] windows of save jobs, from their events. */
function windows(histories: JobEvent[][]) {
  return histories.map((h) => ({
    host: h.find((e) => e.type === 'SaveScheduled')?.data && (h.find((e) => e.type === 'SaveScheduled') as Extract<JobEvent, { type: 'SaveScheduled' }>).data.host,
    from: Date.parse(h.find((e) => e.type === 'SaveScheduled')!.at),
    to: Date.parse(h.find((e) => e.type === 'SaveCompleted' || e.type === 'SaveFailed' || e.type === 'SaveCancelled')!.at),
  }));
}
const maxOverlap = (ws: { from: number; to: number }[]) => Math.max(...ws.map((w) => ws.filter((o) => o.from <= w.from && w.from < o.to).length));

describe('scheduler with two real executors', () => {
  it("three saves on one host with limit 2: never more than two at once, all verified, on the VMs' host", async () => {
    const jobs = await Promise.all(a3.map((vm) => stack.client.save({ requestId: uniq('lim'), vm, format: 'legacy' })));
    const finals = await Promise.all(jobs.map((j) => stack.client.waitForJob(j.jobId, { timeoutMs: 180_000 })));
    expect(finals.map((f) => f.status)).toEqual(['verified', 'verified', 'verified']);
    expect(new Set(finals.map((f) => f.host))).toEqual(new Set([stack.host('a')]));
    const hs = await Promise.all(jobs.map((j) => stack.client.history(j.jobId)));
    const ws = windows(hs);
    expect(maxOverlap(ws), JSON.stringify(hs.map((h) => h.map((e) => `${e.type}@${e.at}`)))).toBeLessThanOrEqual(2);
  });

  it('two requests for one VM run one after the other', async () => {
    const jobs = await Promise.all([1, 2].map(() => stack.client.save({ requestId: uniq('ser'), vm: a3[0]!, format: 'sparse' })));
    const finals = await Promise.all(jobs.map((j) => stack.client.waitForJob(j.jobId, { timeoutMs: 180_000 })));
    expect(finals.map((f) => f.status)).toEqual(['verified', 'verified']);
    const ws = windows(await Promise.all(jobs.map((j) => stack.client.history(j.jobId))));
    expect(maxOverlap(ws)).toBe(1);
  });

  it('a queued job is cancelled before it runs', async () => {
    // Hold b1's QMP socket (QEMU serves one client): b1's save occupies host b's only slot.
    const hold = await QmpClient.connect(path.join(stack.dirs(stack.host('b')).qmpDir, `${b1}.qmp`));
    const first = await stack.client.save({ requestId: uniq('hold'), vm: b1, format: 'sparse' });
    await stack.client.waitForJob(first.jobId, { until: (s) => s.status === 'scheduled', timeoutMs: 20_000 });
    const queued = await stack.client.save({ requestId: uniq('queued'), vm: b2, format: 'sparse' });
    expect((await stack.client.job(queued.jobId)).status).toBe('requested');
    const answer = await stack.client.cancel({ requestId: uniq('cancel'), jobId: queued.jobId, reason: 'test' });
    expect(answer).toMatchObject({ outcome: 'accepted' });
    const c = await stack.client.waitForJob(queued.jobId, { timeoutMs: 20_000 });
    expect(c.status).toBe('cancelled');
    expect((await stack.client.history(queued.jobId)).map((e) => e.type)).toEqual(['SaveRequested', 'SaveCancelled']);
    await hold.close();
    const f = await stack.client.waitForJob(first.jobId, { timeoutMs: 120_000 });
    expect(f.status).toBe('verified');
  });

  it('a running save is cancelled: the VM runs again and no image is left marked complete', async () => {
    const j = await stack.client.save({ requestId: uniq('cxl'), vm: big, format: 'legacy' });
    await stack.client.waitForJob(j.jobId, { until: (s) => s.status === 'running', timeoutMs: 60_000 });
    await stack.client.cancel({ requestId: uniq('cxl-r'), jobId: j.jobId, reason: 'operator changed their mind' });
    const f = await stack.client.waitForJob(j.jobId, { timeoutMs: 60_000 });
    const h = await stack.client.history(j.jobId);
    expect(f.status, h.map((e) => e.type).join(',')).toBe('cancelled');
    expect(h.find((e) => e.type === 'SaveCancelled')).toMatchObject({ data: { vmResumed: true } });
    await using qmp = await QmpClient.connect(path.join(stack.dirs(stack.host('a')).qmpDir, `${big}.qmp`));
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
  });

  it('the executor is killed with SIGKILL during a save and restarted: the job closes, the VM is not left paused, the lease is released', async () => {
    const host = stack.host('a');
    const j = await stack.client.save({ requestId: uniq('kill'), vm: big, format: 'legacy' });
    await stack.client.waitForJob(j.jobId, { until: (s) => s.status === 'running', timeoutMs: 60_000 });
    await stack.kill(`executor:${host}`, 'SIGKILL');
    await stack.startService(`executor:${host}`);
    const f = await stack.client.waitForJob(j.jobId, {
      until: (s) => s.status === 'verified' || s.status === 'rejected' || (s.status === 'failed' && !s.lastFailure?.retryable),
      timeoutMs: 180_000,
    });
    const types = (await stack.client.history(j.jobId)).map((e) => e.type);
    expect(types).toContain('SaveFailed');
    expect(['verified', 'failed']).toContain(f.status);
    await using qmp = await QmpClient.connect(path.join(stack.dirs(host).qmpDir, `${big}.qmp`));
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
    await qmp.close();
    const { redisUrl } = await testUrls();
    const redis = new Redis(redisUrl);
    await waitFor('the VM lease to be released', async () => (await redis.exists(`${stack.env.VMSAVE_REDIS_PREFIX}:lease:${big}`)) === 0, 30_000);
    redis.disconnect();
    await recordFault({
      fault: 'executor SIGKILL',
      injection: 'SIGKILL of the executor while its save is running (migrate under way), then a restart',
      checked: 'the restarted executor closes the attempt (SaveFailed executor-restarted, VM resumed); the retry ends the job; VM running; lease released',
      result: 'pass',
      detail: `${types.join(' → ')}; final ${f.status}`,
    });
  });
});
