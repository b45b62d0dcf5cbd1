/**
 * Host drains with real parts: a private nats-server (the drain's scheduler must be alone on its
 * log and command queue), the real scheduler (host limit 1), executor and verifier spawned from
 * their `main.ts`, and three small real QEMU VMs on one host. A drain to the same host saves them
 * one at a time (checked from the log's SaveStarted/SaveCompleted intervals), restores each once
 * verified, and names each in DrainCompleted; a VM whose save fails is named and left running;
 * a cancel of the drain cancels its children.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { latestAnnouncement } from '../src/drain.ts';
import { awaitAnswer, Bus, publishValidated, readLog } from '@vmsave/bus';
import { type AdmissionReply, drainIdFor, messages, subjects, type DrainRequestInput, type EventOf, type JobEvent } from '@vmsave/contracts';
import { childOf } from '@vmsave/jobs';
import { detectAccel, launchVm, type VmProcess } from '@vmsave/qemu';
import { QmpClient } from '@vmsave/qmp';
import { answers, freePort, guestMemory, makePattern, patternVm, testUrls, uniq, waitFor, stopChild } from '@vmsave/testkit';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPO = path.resolve(PKG, '../..');
const TSX = path.join(REPO, 'node_modules', 'tsx', 'dist', 'loader.mjs');

let dir: string;
let natsUrl: string;
let nats: ChildProcess;
const procs: ChildProcess[] = [];
const vms: VmProcess[] = [];
let bus: Bus;
let scheduler: ChildProcess;
let redisUrl: string;
const host = uniq('dr').replace(/[^A-Za-z0-9_-]/g, '-');
const names = ['dr-a', 'dr-b', 'dr-c'];
const patterns = names.map((_, i) => makePattern(undefined, 11 + i));
const state = () => path.join(dir, 'state');
const qmpOf = (vm: string) => path.join(state(), 'qmp', `${vm}.qmp`);
const logFile = (name: string) => path.join(dir, `${name}.log`);
const readLogFile = (name: string) => readFile(logFile(name), 'utf8').catch(() => '');

function node(name: string, script: string, env: Record<string, string>): ChildProcess {
  const out = createWriteStream(logFile(name), { flags: 'a' });
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', process.execPath, '--conditions=development', '--import', TSX, script], {
    cwd: dir,
    env: { ...process.env, NATS_URL: natsUrl, VMSAVE_METRICS_PORT: '0', VMSAVE_LOG_LEVEL: 'debug', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);
  procs.push(child);
  return child;
}

async function running(child: ChildProcess, name: string, msg: string): Promise<void> {
  await waitFor(
    `the ${name} to run`,
    async () => {
      if (child.exitCode !== null) throw new Error(`${name} exited ${child.exitCode}: ${await readLogFile(name)}`);
      return (await readLogFile(name)).includes(`"msg":"${msg}"`);
    },
    120_000,
    200,
  );
}

function startScheduler(): ChildProcess {
  scheduler = node('scheduler', path.join(PKG, 'src', 'main.ts'), {
    REDIS_URL: redisUrl,
    VMSAVE_REDIS_PREFIX: host,
    VMSAVE_HOST_LIMIT: '1',
    VMSAVE_MAX_ATTEMPTS: '1',
    // A killed scheduler's lease runs out soon: the next one takes over within the test.
    VMSAVE_LEASE_TTL_MS: '3000',
  });
  return scheduler;
}

/** The `vmsave` command from its sources, on the private NATS; its exit code, stdout and stderr. */
async function vmsave(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--conditions=development', '--import', TSX, path.join(REPO, 'packages', 'cli', 'src', 'main.ts'), ...args], {
    cwd: dir,
    env: { ...process.env, NATS_URL: natsUrl, REDIS_URL: redisUrl, VMSAVE_REDIS_PREFIX: host },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b) => (stdout += b));
  child.stderr!.on('data', (b) => (stderr += b));
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  return { code, stdout, stderr };
}

async function events(): Promise<JobEvent[]> {
  const out: JobEvent[] = [];
  for await (const e of readLog(bus, {})) out.push(e.event);
  return out;
}

async function vmStatus(vm: string): Promise<string> {
  await using q = await QmpClient.connect(qmpOf(vm), { timeoutMs: 5000 });
  return (await q.execute<{ status: string }>('query-status')).status;
}

/** Publish a drain request and wait for the scheduler's answer. */
async function drain(req: DrainRequestInput, msgId = req.requestId): Promise<AdmissionReply | undefined> {
  const answer = awaitAnswer(bus, messages.admissionReply, { timeoutMs: 30_000 });
  await publishValidated(bus, messages.drainRequest, subjects.cmd.drain, req, { msgId, replyTo: answer.inbox });
  return answer.value;
}

/** Publish a cancel request and wait for the scheduler's answer. */
async function cancel(requestId: string, jobId: string): Promise<AdmissionReply | undefined> {
  const answer = awaitAnswer(bus, messages.admissionReply, { timeoutMs: 30_000 });
  await publishValidated(bus, messages.cancelRequest, subjects.cmd.cancel, { requestId, jobId, reason: 'test cancel' }, { msgId: requestId, replyTo: answer.inbox });
  return answer.value;
}

/** The drain's final event, once there. */
async function drainEnd(drainId: string): Promise<Extract<JobEvent, { type: 'DrainCompleted' | 'DrainFailed' | 'DrainCancelled' }>> {
  return waitFor(
    `drain ${drainId} to end`,
    async () =>
      (await events()).find(
        (e): e is EventOf<'DrainCompleted'> | EventOf<'DrainFailed'> | EventOf<'DrainCancelled'> =>
          e.jobId === drainId && (e.type === 'DrainCompleted' || e.type === 'DrainFailed' || e.type === 'DrainCancelled'),
      ),
    240_000,
    500,
  );
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-drain-'));
  const port = await freePort();
  await mkdir(path.join(dir, 'nats'));
  nats = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', path.join(dir, 'nats')], { stdio: 'ignore' });
  natsUrl = `nats://127.0.0.1:${port}`;
  await waitFor('the private nats-server', () => answers(port), 20_000, 100);
  bus = await Bus.connect({ servers: natsUrl, name: 'drain-int' });
  await bus.ensureStreams();

  for (const d of ['vms', 'qmp', 'images']) await mkdir(path.join(state(), d), { recursive: true });
  const accel = await detectAccel();
  for (const [i, name] of names.entries()) {
    const def = await patternVm(dir, name, 64, patterns[i]);
    await writeFile(path.join(state(), 'vms', `${name}.json`), JSON.stringify(def));
    vms.push(await launchVm(def, { qmpSocketPath: qmpOf(name), accel, killWithParent: true }));
  }
  redisUrl = (await testUrls()).redisUrl;
  startScheduler();
  node('verifier', path.join(REPO, 'services', 'verifier', 'src', 'main.ts'), { VMSAVE_SCRUB_BYTES_PER_SEC: '0' });
  const executor = node('executor', path.join(REPO, 'services', 'executor', 'src', 'main.ts'), {
    VMSAVE_HOST: host,
    VMSAVE_STATE_DIR: state(),
    VMSAVE_HEARTBEAT_MS: '500',
    VMSAVE_ANNOUNCE_MS: '1000',
    // The host's limit as it announces it (the scheduler's VMSAVE_HOST_LIMIT is the default for hosts that announce none).
    VMSAVE_MAX_CONCURRENT: '1',
  });
  await running(scheduler, 'scheduler', 'scheduler running');
  await running(executor, 'executor', 'executor running');
  await waitFor('the verifier to log', async () => (await readLogFile('verifier')).length > 0, 120_000, 200);
  // The drain reads the host's VMs from its announcement: let the executor announce all three running.
  await new Promise((r) => setTimeout(r, 3000));
});

// A drain takes the host's VMs from its latest announcement: after a test's restores, wait until it lists all three running again.
beforeEach(async () => {
  await waitFor(
    'the host to announce its VMs running',
    async () => {
      const a = await latestAnnouncement(bus, host);
      return a && names.every((n) => a.vms.find((v) => v.name === n)?.status === 'running') ? true : undefined;
    },
    60_000,
    200,
  );
});

afterAll(async () => {
  for (const p of [...procs].reverse()) await stopChild(p);
  for (const v of vms) await v.kill().catch(() => undefined);
  // Restored QEMUs are detached from the executor: quit them over QMP.
  for (const name of names) {
    try {
      await using q = await QmpClient.connect(qmpOf(name), { timeoutMs: 2000 });
      await q.execute('quit').catch(() => undefined);
    } catch {}
  }
  await bus?.close();
  await stopChild(nats);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('vmsave drain', () => {
  it('refuses a drain of a host, or to a target, no executor ever announced, before any VM moves (exit 3 naming the rule and field)', async () => {
    const r = await vmsave('drain', '--host', host, '--to', 'nowhere-host', '--request-id', uniq('drain-nowhere').replace(/[^A-Za-z0-9_.-]/g, ''));
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/drain rejected \(host-known, to\): to: "nowhere-host" has no announcement/);
    const requestId = uniq('drain-unknown').replace(/[^A-Za-z0-9_.-]/g, '');
    expect(await drain({ requestId, host: 'nowhere-host' })).toMatchObject({ outcome: 'rejected', rule: 'host-known', field: 'host', jobId: drainIdFor(requestId) });
    // The refused drain is a job that says why; no save was asked.
    const all = await events();
    expect(all.find((e) => e.jobId === drainIdFor(requestId) && e.type === 'DrainFailed')).toMatchObject({
      data: { reason: expect.stringContaining('nowhere-host'), outcome: [] },
    });
    expect(all.some((e) => e.type === 'SaveRequested')).toBe(false);
    // A bad flag is a usage error naming it.
    const bad = await vmsave('drain', '--host', host, '--after', 'running');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--after: after: quit');
  });

  it('drains three VMs with host limit 1: one save at a time, each restored on the target, DrainCompleted names each', async () => {
    const requestId = uniq('drain-all').replace(/[^A-Za-z0-9_.-]/g, '');
    const drainId = drainIdFor(requestId);
    expect(await drain({ requestId, host, to: host, format: 'legacy' })).toMatchObject({ outcome: 'accepted', jobId: drainId, duplicate: false });
    // The same request again (past JetStream's own deduplication: another message id) is a duplicate of the same drain.
    expect(await drain({ requestId, host, to: host }, `${requestId}-again`)).toMatchObject({ outcome: 'accepted', jobId: drainId, duplicate: true });
    const end = await drainEnd(drainId);
    if (end.type !== 'DrainCompleted') console.error(await readLogFile('scheduler'));
    expect(end.type).toBe('DrainCompleted');
    expect(end.data.outcome.map((v) => [v.vm, v.phase, v.restoredOn])).toEqual(names.map((n) => [n, 'restored', host]));

    const all = await events();
    const saveIds = names.map((n) => childOf(drainId, 'save', n).jobId);
    for (const id of saveIds) {
      const req = all.find((e) => e.jobId === id && e.type === 'SaveRequested');
      expect(req?.type === 'SaveRequested' && req.data.request).toMatchObject({ drainId, after: 'quit' });
    }
    // Never more than one save running at once on the host (limit 1): the intervals do not overlap.
    const intervals = saveIds
      .map((id) => {
        const start = all.find((e) => e.jobId === id && e.type === 'SaveStarted')!;
        const done = all.find((e) => e.jobId === id && (e.type === 'SaveCompleted' || e.type === 'SaveFailed'))!;
        return [Date.parse(start.at), Date.parse(done.at)] as const;
      })
      .sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < intervals.length; i++) expect(intervals[i]![0]).toBeGreaterThanOrEqual(intervals[i - 1]![1]);
    // Each VM runs again on the host, with its memory as saved.
    for (const [i, name] of names.entries()) {
      expect(await vmStatus(name)).toBe('running');
      await using q = await QmpClient.connect(qmpOf(name), { timeoutMs: 5000 });
      expect((await guestMemory(q, dir)).equals(patterns[i]!)).toBe(true);
    }
    const phases = all.filter((e): e is EventOf<'DrainVmUpdated'> => e.jobId === drainId && e.type === 'DrainVmUpdated' && e.data.vm === names[0]).map((e) => e.data.phase);
    expect(phases).toEqual(['queued', 'saving', 'saved', 'restoring', 'restored']);
  });

  it('a VM whose save fails is named in the outcome and left running; the others are drained', async () => {
    const requestId = uniq('drain-fail').replace(/[^A-Za-z0-9_.-]/g, '');
    const drainId = drainIdFor(requestId);
    // The executor creates `<vm>-<jobId>-<attempt>.vmsave` exclusively: a file there already makes that save fail before the VM is paused.
    const failing = names[1]!;
    const failJob = childOf(drainId, 'save', failing).jobId;
    for (let attempt = 1; attempt <= 3; attempt++) await writeFile(path.join(state(), 'images', `${failing}-${failJob}-${attempt}.vmsave`), 'in the way');
    expect(await drain({ requestId, host, to: host, format: 'legacy' })).toMatchObject({ outcome: 'accepted', jobId: drainId });
    const end = await drainEnd(drainId);
    expect(end.type).toBe('DrainFailed');
    if (end.type !== 'DrainFailed') return;
    expect(end.data.reason).toContain(failing);
    const byVm = new Map(end.data.outcome.map((v) => [v.vm, v]));
    expect(byVm.get(failing)).toMatchObject({ phase: 'failed', saveJobId: failJob, error: expect.stringContaining(failJob) });
    expect(byVm.get(failing)!.error).toContain(`the VM stays on ${host}`);
    expect(byVm.get(failing)!.restoreJobId).toBeUndefined();
    for (const n of names.filter((n) => n !== failing)) expect(byVm.get(n)).toMatchObject({ phase: 'restored' });
    // Left running where it was, never quit.
    expect(await vmStatus(failing)).toBe('running');
    const all = await events();
    expect(all.some((e) => e.jobId === childOf(drainId, 'restore', failing).jobId)).toBe(false);
  });

  it('a drain survives a scheduler restart: `vmsave drain --wait` ends with every VM restored, `vmsave job` shows its history', async () => {
    const requestId = uniq('drain-restart').replace(/[^A-Za-z0-9_.-]/g, '');
    const drainId = drainIdFor(requestId);
    const cli = vmsave('drain', '--host', host, '--to', host, '--format', 'legacy', '--request-id', requestId, '--wait', '--json');
    // Kill the scheduler once the drain is under way, start another: it resumes the drain from the log.
    await waitFor(
      'the drain to start saving',
      async () => (await events()).some((e) => e.jobId === drainId && e.type === 'DrainVmUpdated' && e.data.phase === 'saving'),
      120_000,
      200,
    );
    const killed = new Promise((r) => scheduler.once('exit', r));
    scheduler.kill('SIGKILL');
    await killed;
    const next = startScheduler();
    await running(next, 'scheduler', 'drains resumed from the log');
    const r = await cli;
    if (r.code !== 0) console.error(r.stderr, await readLogFile('scheduler'));
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as {
      jobId: string;
      job: { kind: string; status: string; drain: { vmCount: number; vms: Array<{ vm: string; phase: string }> } };
    };
    expect(doc).toMatchObject({ jobId: drainId, job: { kind: 'drain', status: 'completed', drain: { vmCount: 3 } } });
    expect(doc.job.drain.vms.map((v) => [v.vm, v.phase])).toEqual(names.map((n) => [n, 'restored']));
    // Each VM saved once and restored once, across the restart.
    const all = await events();
    for (const n of names) {
      expect(all.filter((e) => e.type === 'SaveRequested' && e.jobId === childOf(drainId, 'save', n).jobId)).toHaveLength(1);
      expect(all.filter((e) => e.type === 'RestoreCompleted' && e.jobId === childOf(drainId, 'restore', n).jobId)).toHaveLength(1);
      expect(await vmStatus(n)).toBe('running');
    }
    const job = await vmsave('job', drainId);
    expect(job.code).toBe(0);
    expect(job.stdout).toContain('DrainRequested');
    expect(job.stdout).toMatch(new RegExp(`drain ${drainId} of ${host} to ${host} completed: 3 VM\\(s\\) \\(3 restored\\)`));
  });

  it('a cancel of the drain cancels its children; cancelled VMs stay running', async () => {
    const requestId = uniq('drain-cancel').replace(/[^A-Za-z0-9_.-]/g, '');
    const drainId = drainIdFor(requestId);
    expect(await drain({ requestId, host, format: 'legacy' })).toMatchObject({ outcome: 'accepted', jobId: drainId });
    // Host limit 1: at least two saves are still queued when the cancel comes.
    const cancelId = `${requestId}-cancel`;
    expect(await cancel(cancelId, drainId)).toMatchObject({ outcome: 'accepted', jobId: drainId });
    const end = await drainEnd(drainId);
    expect(end.type).toBe('DrainCancelled');
    const cancelled = end.data.outcome.filter((v) => v.phase === 'cancelled');
    expect(cancelled.length).toBeGreaterThanOrEqual(1);
    for (const v of end.data.outcome) expect(['cancelled', 'saved']).toContain(v.phase);
    const all = await events();
    for (const v of cancelled) {
      expect(all.some((e) => e.jobId === v.saveJobId && (e.type === 'SaveCancelled' || e.type === 'SaveCancelRequested'))).toBe(true);
      expect(await vmStatus(v.vm)).toBe('running');
    }
    // Nothing restored after a cancel (and none asked: no target).
    expect(all.some((e) => e.type === 'RestoreRequested' && e.data.request.drainId === drainId)).toBe(false);
    // A second cancel of the finished drain is refused, naming the rule.
    expect(await cancel(`${cancelId}-2`, drainId)).toMatchObject({ outcome: 'rejected', rule: 'job-final' });
    // `vmsave cancel d-…` reaches the drain too: here refused, exit 3 naming the rule.
    const c = await vmsave('cancel', drainId, '--reason', 'too late');
    expect(c.code).toBe(3);
    expect(c.stderr).toMatch(/cancel rejected \(job-final\): jobId: drain d-\w+ is cancelled already/);
  });
});
