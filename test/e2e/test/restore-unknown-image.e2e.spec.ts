/**
 * A restore of an image no save in the log wrote (a copy in the image directory), on a named
 * host: it runs under a lease of that image with a real fencing token, like every other job, and
 * the lease is released when it ends (issue 14: it used to run with `fencingToken: 0` and no lease).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFile } from 'node:fs/promises';
import path from 'node:path';
import { Redis } from 'ioredis';
import type { JobEvent } from '@vmsave/contracts';
import { QmpClient } from '@vmsave/qmp';
import { guestMemory, makePattern, patternVm, testUrls, uniq, waitFor } from '@vmsave/testkit';
import { Stack } from '../src/index.ts';

let stack: Stack;
let redis: Redis;
const pattern = makePattern();
let vmName: string;

beforeAll(async () => {
  stack = await Stack.start({ hosts: ['a'] });
  redis = new Redis((await testUrls()).redisUrl);
  vmName = uniq('lost').replace(/[^A-Za-z0-9_-]/g, '');
  const def = await patternVm(stack.dir, vmName, 64, pattern);
  await stack.startVm('a', def);
  await stack.waitForHost('a', [vmName]);
});
afterAll(async () => {
  redis?.disconnect();
  await stack?.stop();
});

describe('a restore of an image the log does not know', () => {
  it('runs under a lease of the image on its host with a fencing token, restores the guest, and frees the lease', async () => {
    const host = stack.host('a');
    const save = await stack.client.save({ requestId: uniq('save'), vm: vmName, format: 'sparse', after: 'quit' });
    const saved = await stack.client.waitForJob(save.jobId, { timeoutMs: 120_000 });
    expect(saved.status, await stack.log(`executor:${host}`)).toBe('verified');
    await waitFor('the VM to stop', async () => (await stack.waitForHost('a')).vms.find((v) => v.name === vmName)?.status === 'stopped', 30_000);

    // A copy under a name no event mentions: the scheduler cannot know its VM.
    const copied = `copied-${uniq('img').replace(/[^A-Za-z0-9_-]/g, '')}.vmsave`;
    await copyFile(saved.imagePath!, path.join(stack.dirs(host).imageDir, copied));

    const withoutHost = await stack.client.restore({ requestId: uniq('restore-nohost'), image: copied });
    expect(withoutHost.admission).toMatchObject({ outcome: 'rejected', rule: 'image-known', field: 'image' });

    const leaseKey = `${stack.env.VMSAVE_REDIS_PREFIX}:lease:image:${host}:${copied}`;
    const holders: Array<Record<string, string>> = [];
    const types: JobEvent[] = [];
    const { jobId, admission } = await stack.client.restore({ requestId: uniq('restore'), image: copied, host });
    expect(admission).toMatchObject({ outcome: 'accepted', jobId });
    const final = await stack.client.waitForJob(jobId, {
      timeoutMs: 120_000,
      onEvent: (e) => {
        types.push(e);
        if (e.type === 'RestoreStarted') void redis.hgetall(leaseKey).then((h) => holders.push(h));
      },
    });
    expect(final.status, await stack.log(`executor:${host}`)).toBe('completed');

    const scheduled = types.find((e) => e.type === 'RestoreScheduled');
    const token = (scheduled?.data as { fencingToken: number } | undefined)?.fencingToken;
    expect(token).toBeGreaterThan(0);
    expect(types.find((e) => e.type === 'RestoreStarted')).toMatchObject({ data: { fencingToken: token, vm: { name: vmName } } });
    expect(types.find((e) => e.type === 'RestoreCompleted')).toMatchObject({ data: { fencingToken: token } });
    // While it ran, the image's lease was its own.
    await waitFor('the lease read during the restore', () => holders[0], 10_000, 50);
    expect(holders[0]).toMatchObject({ owner: jobId, token: String(token) });
    await waitFor('the image lease to be released', async () => (await redis.exists(leaseKey)) === 0, 30_000, 100);

    await using qmp = await QmpClient.connect(path.join(stack.dirs(host).qmpDir, `${vmName}.qmp`));
    expect((await guestMemory(qmp, stack.dir)).equals(pattern)).toBe(true);
  });
});
