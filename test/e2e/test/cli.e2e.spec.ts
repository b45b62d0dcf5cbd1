/**
 * The real `vmsave` binary against a real stack (scheduler, verifier, one executor as processes
 * on the real NATS and Redis) with a small real VM: --json shapes, admission and argument
 * errors with their exit codes, and the demo end to end.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patternVm } from '@vmsave/testkit';
import { Stack } from '../src/stack.ts';
import { EXIT, lines, vmsave } from '../src/vmsave-bin.ts';

let stack: Stack;
let host: string;
let env: Record<string, string>;
const VM = 'cli-vm';

beforeAll(async () => {
  stack = await Stack.start({ hosts: ['h1'] });
  host = stack.host('h1');
  const def = await patternVm(stack.dir, VM, 64);
  await stack.startVm('h1', { ...def, args: def.args });
  await stack.waitForHost('h1', [VM]);
  env = { ...stack.env, VMSAVE_HOST: host, VMSAVE_STATE_DIR: stack.dirs(host).stateDir, VMSAVE_LOG_LEVEL: 'warn' };
}, 180_000);

afterAll(async () => {
  await stack?.stop();
});

// Whole saves and the demo: minutes on a busy machine, also under a bare `npx vitest run`.
describe('vmsave against a running stack', { timeout: 300_000 }, () => {
  it('hosts --json lists the host with its VM', async () => {
    const r = await vmsave(['hosts', '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    const { hosts } = r.json<{ hosts: { host: string; qemu: { version: string; mappedRam: boolean }; vms: { name: string; status: string }[] }[] }>();
    const h = hosts.find((x) => x.host === host);
    expect(h).toMatchObject({ qemu: { version: expect.any(String), mappedRam: expect.any(Boolean) } });
    expect(h!.vms).toContainEqual(expect.objectContaining({ name: VM, status: 'running' }));
  });

  it('rejections and bad arguments: one line on stderr, distinct exit codes', async () => {
    const unknown = await vmsave(['save', '--vm', 'no-such-vm'], env);
    expect(unknown.code).toBe(EXIT.rejected);
    expect(lines(unknown.stderr)).toEqual([expect.stringMatching(/^vmsave: save rejected \(vm-exists\): vm: no announced host has a VM named "no-such-vm"/)]);

    const unknownJson = await vmsave(['save', '--vm', 'no-such-vm', '--json'], env);
    expect(unknownJson.code).toBe(EXIT.rejected);
    expect(unknownJson.json()).toEqual({ error: { kind: 'RejectedError', rule: 'vm-exists', exitCode: 3, message: expect.stringContaining('no-such-vm') } });

    const format = await vmsave(['save', '--vm', VM, '--format', 'compressed'], env);
    expect(format.code).toBe(EXIT.usage);
    expect(lines(format.stderr)).toEqual(['vmsave: --format must be one of legacy, sparse, auto, got "compressed"']);

    const channels = await vmsave(['save', '--vm', VM, '--format', 'sparse', '--channels', '100'], env);
    expect(channels.code).toBe(EXIT.usage);
    expect(lines(channels.stderr)).toEqual(['vmsave: --channels must be between 1 and 64, got 100']);

    const outside = await vmsave(['restore', '../../etc/passwd', '--host', host], env);
    expect(outside.code).toBe(EXIT.rejected);
    expect(lines(outside.stderr)).toEqual([expect.stringMatching(/^vmsave: restore rejected \(image-path\): image: /)]);

    const outsideSave = await vmsave(['save', '--vm', VM, '--image', '/etc/evil.vmsave'], env);
    expect(outsideSave.code).toBe(EXIT.rejected);
    expect(outsideSave.stderr).toMatch(/\(image-path\).*outside the host's image directory/);
  });

  it('save --wait --json, then job, jobs and watch --json', async () => {
    const save = await vmsave(['save', '--vm', VM, '--format', 'sparse', '--channels', '2', '--wait', '--json'], env);
    expect(save.code, save.stderr).toBe(0);
    const s = save.json<{ outcome: string; jobId: string; requestId: string; duplicate: boolean; job: Record<string, unknown> }>();
    expect(s).toMatchObject({
      outcome: 'accepted',
      duplicate: false,
      jobId: expect.stringMatching(/^s-/),
      requestId: expect.stringMatching(/^cli-/),
      job: {
        status: 'verified',
        kind: 'save',
        vm: VM,
        host,
        format: 'sparse',
        imagePath: expect.stringContaining(stack.dirs(host).imageDir),
        result: { bytes: expect.any(Number), blocks: expect.any(Number), durationMs: expect.any(Number) },
      },
    });

    const job = await vmsave(['job', s.jobId, '--json'], env);
    expect(job.code, job.stderr).toBe(0);
    const j = job.json<{ job: { status: string }; events: { type: string; jobId: string }[] }>();
    expect(j.job.status).toBe('verified');
    // Other stacks' schedulers may share the bus: compare the distinct types, in order.
    expect([...new Set(j.events.map((e) => e.type))]).toEqual(['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted', 'ImageVerified']);
    expect(j.events.every((e) => e.jobId === s.jobId)).toBe(true);

    const human = await vmsave(['job', s.jobId], env);
    expect(human.stdout).toMatch(/ImageVerified/);
    expect(human.stdout).toMatch(/pass +header\.magic/);

    const jobs = await vmsave(['jobs', '--vm', VM, '--state', 'verified', '--json'], env);
    expect(jobs.code, jobs.stderr).toBe(0);
    const list = jobs.json<{ source: string; jobs: { jobId: string; status: string; vm: string }[] }>();
    expect(list.jobs).toContainEqual(expect.objectContaining({ jobId: s.jobId, status: 'verified', vm: VM }));
    expect(list.jobs.every((x) => x.vm === VM && x.status === 'verified')).toBe(true);

    const watch = await vmsave(['watch', '--job', s.jobId, '--from-start', '--count', '2', '--json'], env);
    expect(watch.code, watch.stderr).toBe(0);
    const docs = watch.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { seq: number; event: { type: string } });
    expect(docs).toHaveLength(2);
    expect(docs[0]!.event.type).toBe('SaveRequested');
    expect(docs[1]!.seq).toBeGreaterThan(docs[0]!.seq);

    const unknownJob = await vmsave(['job', 's-0000', '--json'], env);
    expect(unknownJob.code).toBe(EXIT.error);
    expect(lines(unknownJob.stderr)).toEqual(['vmsave: no job s-0000 in the event log']);
  });

  it('save without --wait prints the job id; jobs prints a table', async () => {
    const r = await vmsave(['save', '--vm', VM, '--format', 'legacy', '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json()).toEqual({ outcome: 'accepted', jobId: expect.stringMatching(/^s-/), requestId: expect.any(String), duplicate: false });
    const plain = await vmsave(['jobs', '--vm', VM, '--limit', '1'], env);
    expect(plain.stdout.split('\n')[0]).toMatch(/^job +kind +vm +state/);
  });

  it('demo: both formats through the bus, verified, restored, and the table', async () => {
    const r = await vmsave(['demo', '--vm', 'demo-e2e', '--memory', '64', '--host', host], env);
    expect(r.code, r.stderr).toBe(0);
    const rows = r.stdout.split('\n').filter((l) => /^(legacy|sparse) /.test(l));
    expect(rows).toHaveLength(2);
    for (const row of rows) expect(row).toMatch(/^(legacy|sparse) +\d+\.\d\d +\d+\.\d\d +[\d.]+ (KiB|MiB|GiB) +[\d.]+ (B|KiB|MiB|GiB) +\d+ +[\d.]+ GiB\/s +yes$/);
    expect(r.stdout).toMatch(/^format +save s +restore s +size +allocated +blocks/m);
    // The demo VM runs again (restored from the sparse image).
    const list = await vmsave(['vm', 'list', '--json'], env);
    expect(list.json<{ vms: { name: string; status: string }[] }>().vms).toContainEqual(expect.objectContaining({ name: 'demo-e2e', status: 'running' }));
  });
});
