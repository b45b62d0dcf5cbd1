import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { mkdir, symlink } from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { streams, subjects } from '@vmsave/contracts';
import { QmpClient } from '@vmsave/qmp';
import { makePattern, patternVm, uniq, waitFor, MiB } from '@vmsave/testkit';
import { Stack, recordFault } from '../src/index.ts';

let stack: Stack;
let tmpfs = '';
const vmName = (p: string) => uniq(p).replace(/[^A-Za-z0-9_-]/g, '');
const web = vmName('web');
const full = vmName('full');

async function fault(fault: string, injection: string, checked: string, fn: () => Promise<string>): Promise<void> {
  try {
    const detail = await fn();
    await recordFault({ fault, injection, checked, result: 'pass', detail });
  } catch (err) {
    await recordFault({ fault, injection, checked, result: 'fail', detail: (err as Error).message.slice(0, 300) });
    throw err;
  }
}

async function status(host: string, vm: string): Promise<string> {
  await using qmp = await QmpClient.connect(path.join(stack.dirs(host).qmpDir, `${vm}.qmp`), { timeoutMs: 5000 });
  return (await qmp.execute<{ status: string }>('query-status')).status;
}

beforeAll(async () => {
  stack = await Stack.start({ hosts: ['a'] });
  // A small file system for the disk-full fault (root can mount tmpfs here; skip the case if not).
  tmpfs = path.join(stack.dir, 'small');
  await mkdir(tmpfs);
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48m', 'tmpfs', tmpfs], { stdio: 'ignore' });
  } catch {
    tmpfs = '';
  }
  await stack.startVm('a', await patternVm(stack.dir, web, 128));
  await stack.startVm('a', await patternVm(stack.dir, full, 256, makePattern(96 * MiB)));
  await stack.waitForHost('a', [web, full]);
}, 240_000);

afterAll(async () => {
  if (tmpfs)
    try {
      execFileSync('umount', ['-l', tmpfs], { stdio: 'ignore' });
    } catch {
      /* already gone */
    }
  await stack?.stop();
});

describe('faults and bad input on the real stack', () => {
  it('fuzzed bus messages never crash the scheduler; each lands in the dead-letter stream with a reason', async () => {
    await fault(
      'fuzzed commands',
      '400 fast-check payloads (wrong types, huge strings, unknown fields, deep nesting, invalid UTF-8) on vmsave.cmd.save/restore/cancel',
      'scheduler process alive, every invalid message dead-lettered with a reason, next valid request admitted',
      async () => {
        const before = (await stack.bus.jsm.streams.info(streams.deadLetters.name)).state.messages;
        const deep = fc.letrec((tie) => ({
          node: fc.oneof({ depthSize: 'small' }, fc.integer(), fc.array(tie('node'), { maxLength: 3 }), fc.dictionary(fc.string(), tie('node'), { maxKeys: 3 })),
        })).node;
        const payload = fc.oneof(
          fc
            .record(
              { requestId: fc.oneof(fc.string(), fc.integer()), vm: fc.oneof(fc.string({ maxLength: 5000 }), fc.constant(null)), channels: fc.anything() },
              { requiredKeys: [] },
            )
            .map((o) => Buffer.from(JSON.stringify(o))),
          deep.map((d) => Buffer.from(JSON.stringify({ requestId: 'x', vm: d }))),
          fc.uint8Array({ minLength: 1, maxLength: 300 }).map((b) => Buffer.from([0xff, ...b])),
          fc.string({ minLength: 100_000, maxLength: 200_000 }).map((s) => Buffer.from(JSON.stringify({ requestId: 'big', vm: s }))),
          fc.constant(Buffer.from('{"requestId":"x","vm":"a","format":"sparse","extra":{"unknown":true},"channels":999}')),
        );
        const samples = fc.sample(payload, { numRuns: 400, seed: 42 });
        const subj = [subjects.cmd.save, subjects.cmd.restore, subjects.cmd.cancel];
        let i = 0;
        for (const p of samples) await stack.bus.js.publish(subj[i++ % 3]!, p);
        const scheduler = stack.procs.get('scheduler')!;
        await waitFor(
          'every fuzzed message dead-lettered',
          async () => (await stack.bus.jsm.streams.info(streams.deadLetters.name)).state.messages >= before + samples.length,
          60_000,
          250,
        );
        expect(scheduler.exitCode).toBeNull();
        const ok = await stack.client.save({ requestId: uniq('after-fuzz'), vm: web, format: 'sparse' });
        expect(ok.admission).toMatchObject({ outcome: 'accepted' });
        expect((await stack.client.waitForJob(ok.jobId, { timeoutMs: 60_000 })).status).toBe('verified');
        return `${samples.length} payloads, ${(await stack.bus.jsm.streams.info(streams.deadLetters.name)).state.messages - before} dead letters, scheduler alive, next save verified`;
      },
    );
  });

  it('hostile image paths are refused: "..", absolute outside, symlinks pointing out, NUL and newline', async () => {
    await fault(
      'hostile paths',
      'save requests with image "../x", "/etc/x", a symlink to outside the image directory, a symlinked directory, names with NUL/newline',
      'admission rejects or the executor refuses before writing; nothing is written outside the image directory',
      async () => {
        const host = stack.host('a');
        const imageDir = stack.dirs(host).imageDir;
        const outside = path.join(stack.dir, 'outside');
        await mkdir(outside);
        await symlink(path.join(outside, 'evil.vmsave'), path.join(imageDir, 'evil.vmsave'));
        await symlink(outside, path.join(imageDir, 'subdir'));
        const results: string[] = [];
        for (const image of ['../x.vmsave', '/etc/x.vmsave']) {
          const r = await stack.client.save({ requestId: uniq('hp'), vm: web, image });
          expect(r.admission).toMatchObject({ outcome: 'rejected', rule: 'image-path', field: 'image' });
          results.push(`${image}: ${r.admission!.outcome}`);
        }
        for (const image of ['a\0b', 'a\nb']) {
          await expect(stack.client.save({ requestId: uniq('hp'), vm: web, image })).rejects.toThrow(/image/);
          results.push(`${JSON.stringify(image)}: refused by the schema`);
        }
        for (const image of ['evil.vmsave', 'subdir/x.vmsave']) {
          const r = await stack.client.save({ requestId: uniq('hp'), vm: web, image });
          const f = await stack.client.waitForJob(r.jobId, { timeoutMs: 60_000 });
          expect(f).toMatchObject({ status: 'failed', lastFailure: { code: 'image-path' } });
          results.push(`${image}: ${f.lastFailure!.reason}`);
        }
        expect(fs.readdirSync(outside)).toEqual([]);
        expect(await status(host, web)).toBe('running');
        return results.join('; ');
      },
    );
  });

  it('the image directory fills up during a save: SaveFailed names ENOSPC, the partial image is removed, the VM runs', async () => {
    if (!tmpfs) return void (await recordFault({ fault: 'disk full', injection: 'tmpfs mount refused here', checked: '-', result: 'pass', detail: 'skipped: cannot mount tmpfs' }));
    await fault(
      'disk full',
      "a 48 MiB tmpfs as the image target of a 256 MiB VM with 96 MiB of data (admitted on the image directory's free space; the small file system is only seen by the executor)",
      'SaveFailed with code ENOSPC, no file left, VM running',
      async () => {
        const host = stack.host('a');
        // The image directory must be inside the executor's; bind the small fs there.
        const target = path.join(stack.dirs(host).imageDir, 'small');
        await mkdir(target);
        execFileSync('mount', ['--bind', tmpfs, target]);
        try {
          // Through the scheduler: the executor decides its events against the job's log, so work
          // for a job the log does not know would be refused.
          const { jobId } = await stack.client.save({ requestId: uniq('enospc'), vm: full, format: 'legacy', image: 'small/full.vmsave' });
          const history = await waitFor(
            'the executor to close the attempt',
            async () => {
              const h = await stack.client.history(jobId);
              return h.some((e) => e.type === 'SaveFailed' || e.type === 'SaveCompleted') ? h : undefined;
            },
            60_000,
            200,
          );
          const failed = history.find((e) => e.type === 'SaveFailed');
          expect(failed, JSON.stringify(history.map((e) => e.type))).toMatchObject({ data: { code: 'ENOSPC', vmResumed: true } });
          expect(fs.readdirSync(target)).toEqual([]);
          expect(await status(host, full)).toBe('running');
          return `SaveFailed{stage: ${failed!.type === 'SaveFailed' ? failed!.data.stage : ''}, code: ENOSPC, vmResumed: true}: ${failed!.type === 'SaveFailed' ? failed!.data.reason.slice(0, 120) : ''}`;
        } finally {
          execFileSync('umount', ['-l', target]);
        }
      },
    );
  });

  it('the scheduler is killed with SIGKILL and restarted while jobs are queued and running: every job ends, none twice', async () => {
    await fault(
      'scheduler SIGKILL',
      'SIGKILL of the scheduler right after 4 save requests were admitted, then a restart',
      'the restarted scheduler rebuilds from the log; every job verified, each started once',
      async () => {
        const jobs = [];
        for (let i = 0; i < 4; i++) jobs.push(await stack.client.save({ requestId: uniq('sk'), vm: i % 2 ? web : full, format: 'sparse' }));
        await stack.kill('scheduler', 'SIGKILL');
        await stack.startService('scheduler');
        const finals = await Promise.all(jobs.map((j) => stack.client.waitForJob(j.jobId, { timeoutMs: 120_000 })));
        expect(finals.map((f) => f.status)).toEqual(['verified', 'verified', 'verified', 'verified']);
        for (const j of jobs) {
          const h = await stack.client.history(j.jobId);
          expect(h.filter((e) => e.type === 'SaveCompleted')).toHaveLength(1);
        }
        return `4 jobs verified after the restart, one SaveCompleted each`;
      },
    );
  });

  it('QEMU is killed during a save: the job fails with the stage and QEMU gone, no image marked complete', async () => {
    await fault(
      'QEMU killed',
      "SIGKILL of the VM's QEMU as soon as SaveStarted is in the log",
      'SaveFailed with vmResumed=false, no complete image left, job terminal',
      async () => {
        const host = stack.host('a');
        const vm = vmName('victim');
        const qemu = await stack.startVm('a', await patternVm(stack.dir, vm, 512, makePattern(8 * MiB), 40));
        await stack.waitForHost('a', [vm]);
        const j = await stack.client.save({ requestId: uniq('qk'), vm, format: 'legacy' });
        await stack.client.waitForJob(j.jobId, { until: (s) => s.status === 'running', timeoutMs: 60_000 });
        await qemu.kill('SIGKILL');
        const f = await stack.client.waitForJob(j.jobId, { until: (s) => s.status === 'failed' || s.status === 'verified', timeoutMs: 60_000 });
        const imgs = fs.readdirSync(stack.dirs(host).imageDir).filter((n) => n.startsWith(vm));
        if (f.status === 'verified') return 'the save finished before the kill landed (image verified)';
        expect(f.lastFailure).toMatchObject({ vmResumed: false });
        expect(imgs).toEqual([]);
        return `SaveFailed{stage: ${f.lastFailure!.stage}, code: ${f.lastFailure!.code}}: ${f.lastFailure!.reason.slice(0, 100)}`;
      },
    );
  });
});
