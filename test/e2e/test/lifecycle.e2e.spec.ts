/**
 * Image lifecycle on the real stack (private NATS, since it runs a scheduler; real Redis and
 * QEMU; a 64 MiB VM): five saves, a dry run that deletes nothing, `vmsave images prune
 * --keep-last 2` that leaves two images and three `ImageDeleted` events, a history that says
 * so (`vmsave job`, `vmsave images`, `--unknown`, the read model's latest image), an image a
 * queued restore needs kept by the next prune, and an image-directory quota refusing a save
 * (rule `quota`). Legacy saves: the test is about files and events, not the format.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { access, mkdtemp, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { readHosts, readLog } from '@vmsave/bus';
import type { JobEvent } from '@vmsave/contracts';
import { connectRedis, Projection } from '@vmsave/store';
import { patternVm, testUrls, uniq, waitFor } from '@vmsave/testkit';
import { NatsCluster, Stack } from '../src/index.ts';
import { EXIT, vmsave } from '../src/vmsave-bin.ts';

let dir: string;
let nats: NatsCluster;
let stack: Stack;
let redis: Redis;
let host: string;
let env: Record<string, string>;
/** Hold files of saves the test lets through at once (every save stops at `before-migrate`). */
let holding = false;
let releasing: ReturnType<typeof setInterval> | undefined;
const vm = uniq('life').replace(/[^A-Za-z0-9_-]/g, '');
const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

async function events(): Promise<JobEvent[]> {
  const out: JobEvent[] = [];
  for await (const { event } of readLog(stack.bus)) out.push(event);
  return out;
}

async function saveOnce(): Promise<{ jobId: string; imagePath: string }> {
  const { jobId, admission } = await stack.client.save({ requestId: uniq('save'), vm, format: 'legacy', after: 'running' });
  expect(admission).toMatchObject({ outcome: 'accepted' });
  const s = await stack.client.waitForJob(jobId, { timeoutMs: 180_000 });
  expect(s.status, JSON.stringify(s.rejection ?? s.lastFailure)).toBe('verified');
  return { jobId, imagePath: s.imagePath! };
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-lifecycle-'));
  nats = await NatsCluster.start(dir, 1);
  stack = await Stack.start({ hosts: ['a'], natsUrl: nats.url, env: { VMSAVE_FAILPOINTS: 'before-migrate' } });
  host = stack.host('a');
  const jobsDir = path.join(stack.dirs(host).stateDir, 'jobs');
  releasing = setInterval(() => {
    if (holding) return;
    void readdir(jobsDir)
      .then((fs) => Promise.all(fs.filter((f) => f.includes('.hold.')).map((f) => unlink(path.join(jobsDir, f)).catch(() => undefined))))
      .catch(() => undefined);
  }, 100);
  redis = await connectRedis((await testUrls()).redisUrl);
  await stack.startVm('a', await patternVm(stack.dir, vm, 64));
  await stack.waitForHost('a', [vm]);
  env = { ...stack.env, VMSAVE_LOG_LEVEL: 'warn' };
}, 240_000);

afterAll(async () => {
  if (releasing) clearInterval(releasing);
  redis?.disconnect();
  await stack?.stop();
  await nats?.stop();
  await rm(dir, { recursive: true, force: true }).catch(() => undefined);
});

describe('image lifecycle on the real stack', { timeout: 900_000 }, () => {
  const saves: { jobId: string; imagePath: string }[] = [];

  it('keep-last 2: a dry run deletes nothing; then five saves leave two images, three ImageDeleted events and a consistent history', async () => {
    for (let i = 0; i < 5; i++) saves.push(await saveOnce());
    for (const s of saves) expect(await exists(s.imagePath)).toBe(true);

    const dry = await vmsave(['images', 'prune', '--host', host, '--keep-last', '2', '--dry-run', '--json'], env);
    expect(dry.code, dry.stderr).toBe(EXIT.ok);
    const plan = JSON.parse(dry.stdout) as { plan: { jobId: string; action: string; rule?: string }[]; message: string };
    expect(plan.message).toMatch(/dry run/);
    expect(
      plan.plan
        .filter((p) => p.action === 'delete')
        .map((p) => p.jobId)
        .sort(),
    ).toEqual(
      saves
        .slice(0, 3)
        .map((s) => s.jobId)
        .sort(),
    );
    expect(plan.plan.filter((p) => p.action === 'delete').every((p) => p.rule === 'keep-last')).toBe(true);
    for (const s of saves) expect(await exists(s.imagePath)).toBe(true);
    expect((await events()).filter((e) => e.type === 'ImageDeleted')).toEqual([]);

    const real = await vmsave(['images', 'prune', '--host', host, '--keep-last', '2', '--json'], env);
    expect(real.code, real.stderr).toBe(EXIT.ok);
    expect(JSON.parse(real.stdout).message).toMatch(/deleted 3 image/);
    for (const s of saves.slice(0, 3)) expect(await exists(s.imagePath)).toBe(false);
    for (const s of saves.slice(3)) expect(await exists(s.imagePath)).toBe(true);
    const onDisk = (await readdir(stack.dirs(host).imageDir)).filter((f) => f.endsWith('.vmsave'));
    expect(onDisk.sort()).toEqual(
      saves
        .slice(3)
        .map((s) => path.basename(s.imagePath))
        .sort(),
    );

    const deleted = (await events()).filter((e) => e.type === 'ImageDeleted');
    expect(deleted.map((e) => e.jobId).sort()).toEqual(
      saves
        .slice(0, 3)
        .map((s) => s.jobId)
        .sort(),
    );
    for (const e of deleted) {
      expect(e.source).toBe(`executor@${host}`);
      expect(e.data).toMatchObject({ host, rule: 'keep-last', imagePath: saves.find((s) => s.jobId === e.jobId)!.imagePath });
      expect((e.data as { bytes: number }).bytes).toBeGreaterThan(0);
    }
    // A second prune finds nothing more to delete, and appends nothing.
    const again = await vmsave(['images', 'prune', '--host', host, '--keep-last', '2', '--json'], env);
    expect(JSON.parse(again.stdout).message).toMatch(/deleted 0 image/);
    expect((await events()).filter((e) => e.type === 'ImageDeleted')).toHaveLength(3);

    // The history says so: the job is still verified, with its image deleted.
    const job = await vmsave(['job', saves[0]!.jobId], env);
    expect(job.code, job.stderr).toBe(EXIT.ok);
    expect(job.stdout).toMatch(/ImageDeleted/);
    expect(job.stdout).toMatch(/image deleted .* by retention \(keep-last\)/);
    const listed = await vmsave(['images', '--vm', vm, '--json'], env);
    expect((JSON.parse(listed.stdout) as { images: { jobId: string }[] }).images.map((i) => i.jobId).sort()).toEqual(
      saves
        .slice(3)
        .map((s) => s.jobId)
        .sort(),
    );
    const table = await vmsave(['images', '--vm', vm, '--deleted'], env);
    expect(table.stdout.match(/deleted \(keep-last\)/g)).toHaveLength(3);

    // A file no save wrote (left by hand) is unknown; the images the log knows are not.
    const stray = path.join(stack.dirs(host).imageDir, 'left-by-hand.vmsave');
    await writeFile(stray, 'not an image');
    const local = { ...env, VMSAVE_HOST: host, VMSAVE_STATE_DIR: stack.dirs(host).stateDir };
    const unknown = await vmsave(['images', '--unknown', '--json'], local);
    expect(unknown.code, unknown.stderr).toBe(EXIT.ok);
    expect((JSON.parse(unknown.stdout) as { unknown: { imagePath: string; bytes: number }[] }).unknown).toEqual([{ imagePath: stray, bytes: 12, modifiedAt: expect.any(String) }]);
    await unlink(stray);

    // The read model, rebuilt from this log: the latest image is the newest save, and a deleted one is not among the verified.
    const projection = new Projection(redis, `${stack.env.VMSAVE_REDIS_PREFIX}-life`);
    try {
      await projection.rebuild(stack.bus);
      expect((await projection.latestImage(vm))?.jobId).toBe(saves[4]!.jobId);
      expect((await projection.job(saves[0]!.jobId))?.imageDeleted).toMatchObject({ rule: 'keep-last', host });
    } finally {
      await projection.clear();
    }
  });

  it('never deletes an image a queued restore needs', async () => {
    const [older, newer] = [saves[3]!, saves[4]!];
    // A save held at its failpoint holds the VM's lease, so a restore of the VM waits queued.
    holding = true;
    const held = await stack.client.save({ requestId: uniq('held'), vm, format: 'legacy', after: 'running' });
    const holdFile = path.join(stack.dirs(host).stateDir, 'jobs', `${held.jobId}.hold.before-migrate`);
    await waitFor('the save to hold at its failpoint', () => exists(holdFile), 120_000, 100);
    const restore = await stack.client.restore({ requestId: uniq('restore'), image: older.imagePath, host });
    expect(restore.admission).toMatchObject({ outcome: 'accepted' });
    const queued = (await stack.client.history(restore.jobId)).map((e) => e.type);
    expect(queued).toContain('RestoreRequested');
    expect(queued).not.toContain('RestoreScheduled');

    // keep-last 1 would delete the older image; the queued restore keeps it.
    const r = await vmsave(['images', 'prune', '--host', host, '--keep-last', '1', '--json'], env);
    expect(r.code, r.stderr).toBe(EXIT.ok);
    const plan = JSON.parse(r.stdout) as { plan: { jobId: string; action: string; reason: string }[] };
    expect(plan.plan.find((p) => p.jobId === older.jobId)).toMatchObject({ action: 'keep', reason: expect.stringMatching(/restore needs it/) });
    expect(plan.plan.find((p) => p.jobId === newer.jobId)).toMatchObject({ action: 'keep' });
    expect(await exists(older.imagePath)).toBe(true);
    expect((await events()).filter((e) => e.type === 'ImageDeleted')).toHaveLength(3);

    // Let everything end: the restore cancelled while queued, then the save through.
    await stack.client.cancel({ requestId: uniq('cancel'), jobId: restore.jobId, reason: 'test over' });
    expect((await stack.client.waitForJob(restore.jobId, { timeoutMs: 60_000 })).status).toBe('cancelled');
    holding = false;
    expect((await stack.client.waitForJob(held.jobId, { timeoutMs: 180_000 })).status).toBe('verified');
  });

  it('a quota on the image directory refuses the save that would pass it (rule quota), naming the quota and the current use', async () => {
    await stack.kill(`executor:${host}`, 'SIGTERM');
    await stack.startService(`executor:${host}`, { VMSAVE_IMAGE_QUOTA: '1M' });
    const a = await waitFor(
      'the executor to announce its quota',
      async () => {
        for await (const h of readHosts(stack.bus))
          if (h.host === host && h.imageQuotaBytes === 1024 * 1024 && h.vms.some((x) => x.name === vm && x.status !== 'stopped')) return h;
        return undefined;
      },
      120_000,
      300,
    );
    expect(a.imageUsedBytes).toBeGreaterThan(0);
    const r = await stack.client.save({ requestId: uniq('over'), vm, format: 'legacy', after: 'running' });
    expect(r.admission).toMatchObject({ outcome: 'rejected', rule: 'quota', field: 'vm' });
    const message = (r.admission as { message: string }).message;
    expect(message, message).toMatch(/quota of 1\.0 MiB and uses \d[^;]*B; a legacy save of .* needs up to \d/);
  });
});
