import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { DeadLetter, streams, subjects, type ProgressSample } from '@vmsave/contracts';
import { QmpClient } from '@vmsave/qmp';
import { guestMemory, makePattern, patternVm, uniq, waitFor } from '@vmsave/testkit';
import { Stack } from '../src/index.ts';

let stack: Stack;
const pattern = makePattern();
let vmName: string;

beforeAll(async () => {
  stack = await Stack.start({ hosts: ['a'] });
  vmName = uniq('web').replace(/[^A-Za-z0-9_-]/g, '');
  const def = await patternVm(stack.dir, vmName, 128, pattern);
  await stack.startVm('a', def);
  await stack.waitForHost('a', [vmName]);
});
afterAll(async () => {
  await stack?.stop();
});

describe('a save request through the bus, on the real stack', () => {
  let imagePath = '';

  it('sparse: admitted, saved with progress, verified; the VM keeps running', async () => {
    const requestId = uniq('save');
    const { jobId, admission } = await stack.client.save({ requestId, vm: vmName, format: 'sparse', channels: 2 });
    expect(admission).toMatchObject({ outcome: 'accepted', jobId, duplicate: false });
    const samples: ProgressSample[] = [];
    const types: string[] = [];
    const final = await stack.client.waitForJob(jobId, { onEvent: (e) => types.push(e.type), onProgress: (p) => samples.push(p), timeoutMs: 120_000 });
    expect(final.status, await stack.log(`executor:${stack.host('a')}`)).toBe('verified');
    expect(types).toEqual(['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted', 'ImageVerified']);
    expect(final.checks?.filter((c) => c.status === 'fail')).toEqual([]);
    expect(final.checks?.map((c) => c.name)).toEqual(expect.arrayContaining(['header.magic', 'format.matches-stream', 'mapped-ram.bitmap-vs-extents', 'sparseness']));
    imagePath = final.imagePath!;
    expect(path.dirname(imagePath)).toBe(stack.dirs(stack.host('a')).imageDir);
    expect(final.result?.blocks ?? Infinity * 512).toBeLessThan(64 * 1024 * 1024);
    expect(samples.length).toBeGreaterThan(0);
    await using qmp = await QmpClient.connect(path.join(stack.dirs(stack.host('a')).qmpDir, `${vmName}.qmp`));
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
  });

  it('the same request published again is the same job (no second save)', async () => {
    const requestId = uniq('dup');
    const a = await stack.client.save({ requestId, vm: vmName, format: 'legacy' });
    const b = await stack.client.save({ requestId, vm: vmName, format: 'legacy' });
    expect(b.jobId).toBe(a.jobId);
    expect(b.duplicate).toBe(true);
    const final = await stack.client.waitForJob(a.jobId, { timeoutMs: 120_000 });
    expect(final.status, JSON.stringify(final.checks?.filter((c) => c.status !== 'pass'))).toBe('verified');
    const history = await stack.client.history(a.jobId);
    expect(history.filter((e) => e.type === 'SaveRequested')).toHaveLength(1);
    expect(history.filter((e) => e.type === 'SaveStarted')).toHaveLength(1);
  });

  it('a request for an unknown VM is rejected with the rule, and the admission answer says so', async () => {
    const { jobId, admission } = await stack.client.save({ requestId: uniq('nope'), vm: 'no-such-vm' });
    expect(admission).toMatchObject({ outcome: 'rejected', rule: 'vm-exists', field: 'vm' });
    expect((await stack.client.job(jobId)).status).toBe('rejected');
  });

  it('an invalid payload is dead-lettered with the field named, a SaveRejected says why, and the next request is served', async () => {
    const requestId = uniq('bad');
    const seq = (await stack.bus.jsm.streams.info(streams.deadLetters.name)).state.last_seq;
    await stack.bus.js.publish(subjects.cmd.save, JSON.stringify({ requestId, vm: vmName, channels: 'lots' }));
    const letter = await waitFor(
      'a dead letter for the bad request',
      async () => {
        const c = await stack.bus.js.consumers.get(streams.deadLetters.name, {
          filter_subjects: subjects.dlq('scheduler'),
          opt_start_seq: seq + 1,
          deliver_policy: 'by_start_sequence' as never,
        });
        const m = await c.next({ expires: 1000 });
        const d = m ? DeadLetter.parse(m.json()) : undefined;
        return d?.payload.includes(requestId) ? d : undefined;
      },
      20_000,
      200,
    );
    expect(letter.reason).toMatch(/channels/);
    const { jobIdFor } = await import('@vmsave/contracts');
    const rejected = await stack.client.waitForJob(jobIdFor('save', requestId), { timeoutMs: 10_000 });
    expect(rejected).toMatchObject({ status: 'rejected', rejection: { rule: 'schema', field: 'channels' } });
    const next = await stack.client.save({ requestId: uniq('after-bad'), vm: 'still-no-such-vm' });
    expect(next.admission).toMatchObject({ outcome: 'rejected', rule: 'vm-exists' });
  });

  it('restore: the image comes back as a new QEMU with the same guest memory', async () => {
    // The source VM must be gone before its name can be restored.
    await using q = await QmpClient.connect(path.join(stack.dirs(stack.host('a')).qmpDir, `${vmName}.qmp`));
    await q.execute('quit').catch(() => undefined);
    await q.close();
    await waitFor('the source VM to stop', async () => (await stack.waitForHost('a')).vms.find((v) => v.name === vmName)?.status === 'stopped', 20_000);

    const { jobId, admission } = await stack.client.restore({ requestId: uniq('restore'), image: path.basename(imagePath) });
    expect(admission).toMatchObject({ outcome: 'accepted' });
    const final = await stack.client.waitForJob(jobId, { timeoutMs: 120_000 });
    expect(final.status, await stack.log(`executor:${stack.host('a')}`)).toBe('completed');
    await using qmp = await QmpClient.connect(path.join(stack.dirs(stack.host('a')).qmpDir, `${vmName}.qmp`));
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
    expect((await guestMemory(qmp, stack.dir)).equals(pattern)).toBe(true);
  });
});
