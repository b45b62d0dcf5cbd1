/**
 * Images the log does not know, on a private nats-server (the test plays the scheduler, so it
 * must be alone on the event log) with the executor and the verifier spawned as their `main.ts`
 * run them, and a 64 MiB QEMU VM: a real image copied into the image directory by hand is listed
 * by `vmsave images --unknown`, adopted by `vmsave images adopt` (a new save job that the
 * verifier verifies; then the image is listed known); another file is removed by `vmsave images
 * remove` (a dry run first, which removes nothing); a file the log knows (a verified save's
 * image), one a queued restore needs and one that is not an image are refused, and stay; and a
 * VM definition's own retention replaces the host's policy in a prune.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { copyFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RestoreRequest, SaveRequest, jobIdFor, makeEvent, messages, subjects, type WorkItem } from '@vmsave/contracts';
import { Bus, eventsOfJob, publishEvent, publishValidated } from '@vmsave/bus';
import { detectAccel, launchVm, type VmProcess } from '@vmsave/qemu';
import { fold } from '@vmsave/jobs';
import { answers, freePort, lines, patternVm, runNode, uniq, waitFor, type RunResult } from '@vmsave/testkit';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPO = path.resolve(PKG, '../..');
const TSX = path.join(REPO, 'node_modules', 'tsx', 'dist', 'loader.mjs');
const CLI = path.join(REPO, 'packages', 'cli', 'bin', 'vmsave.js');

let dir: string;
let host: string;
let natsUrl: string;
let nats: ChildProcess | undefined;
let executor: ChildProcess | undefined;
let verifier: ChildProcess | undefined;
let vm: VmProcess | undefined;
let bus: Bus;
const stateDir = () => path.join(dir, 'state');
const imageDir = () => path.join(stateDir(), 'images');
const img = (name: string) => path.join(imageDir(), name);
const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );
const stopped = (c: ChildProcess | undefined) =>
  c && c.exitCode === null && c.signalCode === null
    ? new Promise<void>((resolve) => {
        const t = setTimeout(() => c.kill('SIGKILL'), 10_000);
        c.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
        c.kill('SIGTERM');
      })
    : Promise.resolve();

/** The executor's answer as the CLI printed it (before the error document a refusal adds). */
const replyOf = (r: RunResult): Record<string, unknown> | undefined =>
  lines(r.stdout)
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((o) => 'ok' in o);

function cli(args: string[]) {
  return runNode(CLI, [...args, '--json'], {
    env: {
      VMSAVE_CLI_FROM_SOURCE: '1',
      NATS_URL: natsUrl,
      VMSAVE_HOST: host,
      VMSAVE_STATE_DIR: stateDir(),
      VMSAVE_REDIS_PREFIX: uniq('vmsaveunknown'),
      VMSAVE_LOG_LEVEL: 'warn',
    },
    timeoutMs: 120_000,
  });
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-unknown-int-'));
  host = uniq('unk').replace(/[^A-Za-z0-9_-]/g, '-');
  for (const d of ['vms', 'qmp', 'images']) await mkdir(path.join(stateDir(), d), { recursive: true });

  const port = await freePort();
  const bin = execFileSync('sh', ['-c', 'command -v nats-server'], { encoding: 'utf8' }).trim();
  nats = spawn(bin, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', path.join(dir, 'nats')], { stdio: 'ignore' });
  natsUrl = `nats://127.0.0.1:${port}`;
  await waitFor('private nats-server', () => answers(port), 15_000, 100);
  bus = await Bus.connect({ servers: natsUrl, name: 'lifecycle-unknown-int' });
  await bus.ensureStreams();

  // The log: a verified save whose image is known.vmsave, and a queued restore of needed.vmsave.
  const s = { source: 'scheduler' };
  const ex = { source: `executor@${host}` };
  const save = SaveRequest.parse({ requestId: uniq('r'), vm: 'vm1' });
  const saveId = jobIdFor('save', save.requestId);
  const att = { host, attempt: 1, fencingToken: 1 };
  await writeFile(img('known.vmsave'), Buffer.alloc(4096, 1));
  await publishEvent(bus, makeEvent('SaveRequested', saveId, { request: save }, s));
  await publishEvent(bus, makeEvent('SaveScheduled', saveId, { ...att, deadlineAt: new Date(Date.now() + 60_000).toISOString() }, s));
  await publishEvent(
    bus,
    makeEvent('SaveStarted', saveId, { ...att, imagePath: img('known.vmsave'), format: 'legacy', channels: 1, directIo: false, wasRunning: true, ramBytes: 64 << 20 }, ex),
  );
  await publishEvent(
    bus,
    makeEvent(
      'SaveCompleted',
      saveId,
      { ...att, imagePath: img('known.vmsave'), format: 'legacy', bytes: 4096, blocks: 8, durationMs: 1, throughputBytesPerSec: 1, vmState: 'running', qemu: {} },
      ex,
    ),
  );
  await publishEvent(bus, makeEvent('ImageVerified', saveId, { imagePath: img('known.vmsave'), host, checks: [] }, { source: 'verifier' }));
  // The log says what the test means: a verified save of this host.
  const logged = (await eventsOfJob(bus, saveId)).map((l) => l.event);
  expect(logged.map((e) => e.type)).toEqual(['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted', 'ImageVerified']);
  expect(fold(logged)).toMatchObject({ status: 'verified', host, imagePath: img('known.vmsave') });
  const restore = RestoreRequest.parse({ requestId: uniq('r'), image: 'needed.vmsave', host });
  await publishEvent(bus, makeEvent('RestoreRequested', jobIdFor('restore', restore.requestId), { request: restore }, s));
  await writeFile(img('needed.vmsave'), Buffer.alloc(4096, 2));

  const def = await patternVm(dir, 'adopt-vm', 64);
  await writeFile(path.join(stateDir(), 'vms', 'adopt-vm.json'), JSON.stringify(def));
  vm = await launchVm(def, { qmpSocketPath: path.join(stateDir(), 'qmp', 'adopt-vm.qmp'), accel: await detectAccel(), killWithParent: true });

  const out = createWriteStream(path.join(dir, 'executor.log'));
  executor = spawn('setpriv', ['--pdeathsig', 'KILL', '--', process.execPath, '--conditions=development', '--import', TSX, path.join(PKG, 'src', 'main.ts')], {
    cwd: dir,
    env: { ...process.env, NATS_URL: natsUrl, VMSAVE_HOST: host, VMSAVE_STATE_DIR: stateDir(), VMSAVE_LOG_LEVEL: 'info', VMSAVE_ANNOUNCE_MS: '1000', VMSAVE_METRICS_PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  executor.stdout!.pipe(out);
  executor.stderr!.pipe(out);
  await waitFor('executor running', async () => /"msg":"executor running"/.test(await readFile(path.join(dir, 'executor.log'), 'utf8').catch(() => '')), 60_000, 200);
}, 120_000);

afterAll(async () => {
  await stopped(verifier);
  await stopped(executor);
  await vm?.kill().catch(() => undefined);
  await bus?.close();
  await stopped(nats);
  await rm(dir, { recursive: true, force: true }).catch(() => undefined);
});

describe('images the log does not know', { timeout: 300_000 }, () => {
  it('a file copied in by hand is listed unknown, a dry run keeps it, remove deletes it; it is then no longer listed', async () => {
    await writeFile(img('stray.vmsave'), Buffer.alloc(8192, 3));
    const listed = await cli(['images', '--unknown']);
    expect(listed.code, listed.stderr).toBe(0);
    const unknown = listed.json<{ unknown: { imagePath: string; bytes: number }[] }>().unknown.map((u) => path.basename(u.imagePath));
    expect(unknown).toContain('stray.vmsave');
    expect(unknown).not.toContain('known.vmsave');

    const dry = await cli(['images', 'remove', 'stray.vmsave', '--host', host, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(replyOf(dry)).toMatchObject({ ok: true, removed: { bytes: 8192, dryRun: true } });
    expect(await exists(img('stray.vmsave'))).toBe(true);

    const removed = await cli(['images', 'remove', img('stray.vmsave'), '--host', host]);
    expect(removed.code, removed.stderr).toBe(0);
    expect(replyOf(removed)).toMatchObject({ ok: true, removed: { bytes: 8192, dryRun: false } });
    expect(await exists(img('stray.vmsave'))).toBe(false);
    const after = await cli(['images', '--unknown']);
    expect(after.json<{ unknown: { imagePath: string }[] }>().unknown.map((u) => path.basename(u.imagePath))).not.toContain('stray.vmsave');
  });

  it("a VM definition's own retention replaces the host's policy in a prune (dry run)", async () => {
    // vm1 (stopped) gets a second, newer verified save, and a definition keeping its newest image only.
    await writeFile(
      path.join(stateDir(), 'vms', 'vm1.json'),
      JSON.stringify({ name: 'vm1', uuid: '6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b', machine: 'q35', memoryMiB: 64, vcpus: 1, args: [], retention: { keepLast: 1 } }),
    );
    const save = SaveRequest.parse({ requestId: uniq('r'), vm: 'vm1' });
    const id = jobIdFor('save', save.requestId);
    const att = { host, attempt: 1, fencingToken: 2 };
    await writeFile(img('known2.vmsave'), Buffer.alloc(4096, 4));
    await publishEvent(bus, makeEvent('SaveRequested', id, { request: save }, { source: 'scheduler' }));
    await publishEvent(bus, makeEvent('SaveScheduled', id, { ...att, deadlineAt: new Date(Date.now() + 60_000).toISOString() }, { source: 'scheduler' }));
    const ex = { source: `executor@${host}` };
    await publishEvent(
      bus,
      makeEvent('SaveStarted', id, { ...att, imagePath: img('known2.vmsave'), format: 'legacy', channels: 1, directIo: false, wasRunning: true, ramBytes: 64 << 20 }, ex),
    );
    await publishEvent(
      bus,
      makeEvent(
        'SaveCompleted',
        id,
        { ...att, imagePath: img('known2.vmsave'), format: 'legacy', bytes: 4096, blocks: 8, durationMs: 1, throughputBytesPerSec: 1, vmState: 'running', qemu: {} },
        ex,
      ),
    );
    await publishEvent(bus, makeEvent('ImageVerified', id, { imagePath: img('known2.vmsave'), host, checks: [] }, { source: 'verifier' }));
    const r = await cli(['images', 'prune', '--host', host, '--keep-last', '5', '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    const plan = (replyOf(r) as { plan: { imagePath: string; action: string; rule?: string }[] }).plan;
    const of = (name: string) => plan.find((p) => path.basename(p.imagePath) === name);
    // keep-last 5 alone would keep both; vm1's own keep-last 1 lets the older go.
    expect(of('known.vmsave')).toMatchObject({ action: 'delete', rule: 'keep-last' });
    expect(of('known2.vmsave')).toMatchObject({ action: 'keep' });
    expect(await exists(img('known.vmsave'))).toBe(true);
  });

  it('refuses a file the log knows, one a queued restore needs, and one outside the image directory; each stays', async () => {
    const known = await cli(['images', 'remove', 'known.vmsave', '--host', host]);
    expect(known.code).not.toBe(0);
    expect(replyOf(known), known.stdout + known.stderr).toMatchObject({ ok: false, rule: 'image-known' });
    expect(await exists(img('known.vmsave'))).toBe(true);

    const needed = await cli(['images', 'remove', 'needed.vmsave', '--host', host]);
    expect(needed.code).not.toBe(0);
    expect(replyOf(needed), needed.stdout + needed.stderr).toMatchObject({ ok: false, rule: 'image-needed' });
    expect(await exists(img('needed.vmsave'))).toBe(true);

    await writeFile(path.join(dir, 'outside.vmsave'), 'x');
    const outside = await cli(['images', 'remove', '../../outside.vmsave', '--host', host]);
    expect(outside.code).not.toBe(0);
    expect(replyOf(outside), outside.stdout + outside.stderr).toMatchObject({ ok: false, rule: 'image-path' });
    expect(await exists(path.join(dir, 'outside.vmsave'))).toBe(true);
  });

  it('a real image copied in by hand is listed unknown, adopted as a save job, verified by the verifier, then listed known; a file that is not an image is refused', async () => {
    // A real save through the executor (the test plays the scheduler), then its image copied by hand.
    const request = SaveRequest.parse({ requestId: uniq('r'), vm: 'adopt-vm', format: 'sparse', after: 'running' });
    const jobId = jobIdFor('save', request.requestId);
    const deadlineAt = new Date(Date.now() + 120_000).toISOString();
    await publishEvent(bus, makeEvent('SaveRequested', jobId, { request }, { source: 'scheduler' }));
    await publishEvent(bus, makeEvent('SaveScheduled', jobId, { host, attempt: 1, fencingToken: 5, deadlineAt }, { source: 'scheduler' }));
    const w: WorkItem = { kind: 'save', jobId, attempt: 1, fencingToken: 5, host, deadlineAt, format: 'sparse', request };
    await publishValidated(bus, messages.work, subjects.work(host), w, { msgId: `${jobId}.1.5` });
    const completed = await waitFor(
      'SaveCompleted',
      async () => (await eventsOfJob(bus, jobId)).map((l) => l.event).find((e) => e.type === 'SaveCompleted' || e.type === 'SaveFailed'),
      150_000,
      200,
    );
    expect(completed.type, JSON.stringify(completed.data)).toBe('SaveCompleted');
    const original = completed.type === 'SaveCompleted' ? completed.data.imagePath : '';
    await copyFile(original, img('byhand.vmsave'));

    const listed = await cli(['images', '--unknown']);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.json<{ unknown: { imagePath: string }[] }>().unknown.map((u) => path.basename(u.imagePath))).toContain('byhand.vmsave');

    const adopted = await cli(['images', 'adopt', 'byhand.vmsave', '--host', host]);
    expect(adopted.code, adopted.stdout + adopted.stderr).toBe(0);
    const reply = replyOf(adopted) as { ok: boolean; adopted: { jobId: string; vm: string; imagePath: string; duplicate: boolean } };
    expect(reply).toMatchObject({ ok: true, adopted: { vm: 'adopt-vm', imagePath: img('byhand.vmsave'), duplicate: false } });
    const adoptedId = reply.adopted.jobId;
    expect((await eventsOfJob(bus, adoptedId)).map((l) => l.event.type)).toEqual(['ImageAdopted', 'SaveCompleted']);
    // Adopting it again answers the same job and records nothing more.
    const again = await cli(['images', 'adopt', img('byhand.vmsave'), '--host', host]);
    expect(replyOf(again)).toMatchObject({ ok: true, adopted: { jobId: adoptedId, duplicate: true } });

    // The verifier verifies it as it does every save.
    const vlog = createWriteStream(path.join(dir, 'verifier.log'));
    verifier = spawn(
      'setpriv',
      ['--pdeathsig', 'KILL', '--', process.execPath, '--conditions=development', '--import', TSX, path.join(REPO, 'services', 'verifier', 'src', 'main.ts')],
      {
        cwd: dir,
        env: {
          ...process.env,
          NATS_URL: natsUrl,
          VMSAVE_VERIFY_HOSTS: host,
          VMSAVE_VERIFIER_NAME: uniq('ver').replace(/[^A-Za-z0-9_-]/g, '-'),
          VMSAVE_METRICS_PORT: '0',
          VMSAVE_SCRUB_BYTES_PER_SEC: '0',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    verifier.stdout!.pipe(vlog);
    verifier.stderr!.pipe(vlog);
    const verdict = await waitFor(
      'the adopted image verified',
      async () => {
        const s = fold((await eventsOfJob(bus, adoptedId)).map((l) => l.event));
        return s.status === 'verified' || s.status === 'rejected' ? s : undefined;
      },
      120_000,
      250,
    );
    expect(verdict, JSON.stringify(verdict.checks)).toMatchObject({ kind: 'save', status: 'verified', vm: 'adopt-vm', host, imagePath: img('byhand.vmsave') });

    const after = await cli(['images', '--unknown']);
    expect(after.json<{ unknown: { imagePath: string }[] }>().unknown.map((u) => path.basename(u.imagePath))).not.toContain('byhand.vmsave');
    const known = await cli(['images', '--host', host]);
    expect(known.code, known.stderr).toBe(0);
    expect(known.stdout).toContain(adoptedId);

    await writeFile(img('notes.txt'), 'not an image');
    const bad = await cli(['images', 'adopt', 'notes.txt', '--host', host]);
    expect(bad.code).not.toBe(0);
    expect(replyOf(bad)).toMatchObject({ ok: false, rule: 'not-an-image' });
  });
});
