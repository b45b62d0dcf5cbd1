/**
 * The executor as `main.ts` wires it (spawned with env, like a deployment), against real NATS
 * (NATS_URL) and a small real QEMU VM. The test plays the scheduler: it writes the events the
 * scheduler would have written, then hands a work item to `vmsave.work.<host>`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, existsSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeEvent, messages, subjects, type JobEvent, type SaveRequest, type WorkItem } from '@vmsave/contracts';
import { Bus, eventsOfJob, publishEvent, publishValidated } from '@vmsave/bus';
import { readImageHeader } from '@vmsave/image/node';
import { detectAccel, launchVm, type VmProcess } from '@vmsave/qemu';
import { QmpClient } from '@vmsave/qmp';
import { patternVm, testUrls, uniq, waitFor } from '@vmsave/testkit';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPO = path.resolve(PKG, '../..');
const TSX = path.join(REPO, 'node_modules', 'tsx', 'dist', 'loader.mjs');

let dir: string;
let host: string;
let bus: Bus;
let executor: ChildProcess;
let vm: VmProcess;
const logFile = () => path.join(dir, 'executor.log');
const executorLog = () => readFile(logFile(), 'utf8').catch(() => '');

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-executor-int-'));
  host = uniq('exec').replace(/[^A-Za-z0-9_-]/g, '-');
  bus = await Bus.connect({ servers: (await testUrls()).natsUrl, name: 'executor-int' });
  await bus.ensureStreams();

  const state = stateDir();
  for (const d of ['vms', 'qmp', 'images']) await mkdir(path.join(state, d), { recursive: true });
  const def = await patternVm(dir, 'int-vm', 64);
  await writeFile(path.join(state, 'vms', 'int-vm.json'), JSON.stringify(def));
  vm = await launchVm(def, { qmpSocketPath: path.join(state, 'qmp', 'int-vm.qmp'), accel: await detectAccel(), killWithParent: true });

  await startExecutor();
});

let natsUrlUsed = '';
const stateDir = () => path.join(dir, 'state');

/** Spawn `src/main.ts` with this host's env, as a deployment runs it; resolves once it runs. */
async function startExecutor(): Promise<void> {
  natsUrlUsed ||= (await testUrls()).natsUrl;
  const out = createWriteStream(logFile(), { flags: 'a' });
  const mark = (await executorLog()).length;
  executor = spawn('setpriv', ['--pdeathsig', 'KILL', '--', process.execPath, '--conditions=development', '--import', TSX, path.join(PKG, 'src', 'main.ts')], {
    cwd: dir,
    env: {
      ...process.env,
      NATS_URL: natsUrlUsed,
      VMSAVE_HOST: host,
      VMSAVE_STATE_DIR: stateDir(),
      VMSAVE_LOG_LEVEL: 'debug',
      VMSAVE_HEARTBEAT_MS: '500',
      VMSAVE_ANNOUNCE_MS: '1000',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  executor.stdout!.pipe(out);
  executor.stderr!.pipe(out);
  await waitFor(
    'the executor to run',
    async () => {
      if (executor.exitCode !== null) throw new Error(`executor exited ${executor.exitCode}: ${await executorLog()}`);
      return /"msg":"executor running"/.test((await executorLog()).slice(mark));
    },
    120_000,
    200,
  );
}

async function stopExecutor(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!executor || executor.exitCode !== null || executor.signalCode !== null) return;
  const gone = new Promise((r) => executor.once('exit', r));
  executor.kill(signal);
  const t = setTimeout(() => executor.kill('SIGKILL'), 15_000);
  await gone;
  clearTimeout(t);
}

afterAll(async () => {
  await stopExecutor();
  await vm?.kill().catch(() => undefined);
  await bus?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const source = { source: 'scheduler' };
const request = (jobId: string): SaveRequest => ({
  schemaVersion: 1,
  requestId: `r-${jobId}`,
  vm: 'int-vm',
  format: 'sparse',
  channels: 1,
  directIo: false,
  after: 'running',
  priority: 'normal',
});

/** What the scheduler writes before it hands out work: the request and the attempt's schedule. */
async function scheduled(jobId: string, attempt: number, fencingToken: number, extra: JobEvent[] = []): Promise<void> {
  const deadlineAt = new Date(Date.now() + 120_000).toISOString();
  await publishEvent(bus, makeEvent('SaveRequested', jobId, { request: request(jobId) }, source));
  await publishEvent(bus, makeEvent('SaveScheduled', jobId, { host, attempt, fencingToken, deadlineAt }, source));
  for (const e of extra) await publishEvent(bus, e);
}

async function work(jobId: string, attempt: number, fencingToken: number): Promise<void> {
  const w: WorkItem = { kind: 'save', jobId, attempt, fencingToken, host, deadlineAt: new Date(Date.now() + 120_000).toISOString(), format: 'sparse', request: request(jobId) };
  await publishValidated(bus, messages.work, subjects.work(host), w, { msgId: `${jobId}.${attempt}.${fencingToken}` });
}

const types = async (jobId: string) => (await eventsOfJob(bus, jobId)).map((l) => l.event);

/** The executor logged a line about `jobId` matching `re` (pino JSON, jobId on job lines). */
const logged = async (jobId: string, re: RegExp) => (await executorLog()).split('\n').some((l) => l.includes(`"jobId":"${jobId}"`) && re.test(l));

describe('executor wiring: work in, decided events out', () => {
  it('a save work item: SaveStarted then SaveCompleted for that attempt, and the image is complete', async () => {
    const jobId = uniq('s');
    await scheduled(jobId, 1, 7);
    await work(jobId, 1, 7);
    const events = await waitFor(
      'SaveCompleted',
      async () => {
        const h = await types(jobId);
        return h.some((e) => e.type === 'SaveCompleted' || e.type === 'SaveFailed') ? h : undefined;
      },
      120_000,
      200,
    );
    expect(events.map((e) => e.type)).toEqual(['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted']);
    const [startedEv, completed] = [events[2]!, events[3]!];
    expect(startedEv).toMatchObject({ source: `executor@${host}`, eventId: `${jobId}.1.SaveStarted`, data: { attempt: 1, fencingToken: 7, host, wasRunning: true } });
    expect(completed).toMatchObject({ eventId: `${jobId}.1.SaveCompleted`, data: { attempt: 1, fencingToken: 7, vmState: 'running' } });
    // The image was sealed before its magic flipped, and SaveCompleted says with which seal.
    expect(completed.type === 'SaveCompleted' && completed.data.seal).toMatchObject({ algorithm: 'crc32', stateDigest: expect.stringMatching(/^[0-9a-f]+$/) });
    const imagePath = completed.type === 'SaveCompleted' ? completed.data.imagePath : '';
    expect(existsSync(imagePath)).toBe(true);
    expect(await readImageHeader(imagePath)).toMatchObject({ complete: true, format: 'sparse' });
  });

  it('a work item with a stale fencing token, or for an attempt the scheduler has moved past, produces no event', async () => {
    const staleToken = uniq('s');
    await scheduled(staleToken, 1, 9);
    await work(staleToken, 1, 8);
    const pastAttempt = uniq('s');
    await scheduled(pastAttempt, 2, 12);
    await work(pastAttempt, 1, 11);
    await waitFor(
      'the refusals in the log',
      async () => (await logged(staleToken, /work item refused.*stale-attempt|stale-attempt.*work item refused/)) && (await logged(pastAttempt, /work item refused/)),
      60_000,
      200,
    );
    // A later job goes through, so the executor has long been past the refused items.
    const later = uniq('s');
    await scheduled(later, 1, 1);
    await work(later, 1, 1);
    await waitFor('the later job to complete', async () => (await types(later)).some((e) => e.type === 'SaveCompleted'), 120_000, 200);
    expect((await types(staleToken)).map((e) => e.type)).toEqual(['SaveRequested', 'SaveScheduled']);
    expect((await types(pastAttempt)).map((e) => e.type)).toEqual(['SaveRequested', 'SaveScheduled']);
  });

  it('a job whose cancel the log already holds is confirmed cancelled when its work arrives, without touching the VM', async () => {
    const jobId = uniq('s');
    await scheduled(jobId, 1, 3, [makeEvent('SaveCancelRequested', jobId, { reason: 'operator changed their mind' }, source)]);
    await work(jobId, 1, 3);
    const events = await waitFor(
      'SaveCancelled',
      async () => {
        const h = await types(jobId);
        return h.some((e) => e.type === 'SaveCancelled') ? h : undefined;
      },
      60_000,
      200,
    );
    expect(events.map((e) => e.type)).toEqual(['SaveRequested', 'SaveScheduled', 'SaveCancelRequested', 'SaveCancelled']);
    expect(events[3]).toMatchObject({ data: { reason: 'operator changed their mind', stage: 'queued' } });
  });
});

describe('recovery at start', () => {
  it('a save a crash interrupted is closed with a retryable SaveFailed and its VM runs again; a completed one is left alone', async () => {
    const lost = uniq('s');
    const done = uniq('s');
    const images = path.join(stateDir(), 'images');
    const startedData = (imagePath: string) => ({
      host,
      attempt: 1,
      fencingToken: 5,
      imagePath,
      format: 'sparse' as const,
      channels: 1,
      directIo: false,
      wasRunning: true,
      ramBytes: 64 * 1024 * 1024,
    });
    const executorSource = { source: `executor@${host}` };
    const lostImage = path.join(images, 'lost.vmsave');
    const doneImage = path.join(images, 'done.vmsave');
    await scheduled(lost, 1, 5, [makeEvent('SaveStarted', lost, startedData(lostImage), executorSource)]);
    await scheduled(done, 1, 5, [
      makeEvent('SaveStarted', done, startedData(doneImage), executorSource),
      makeEvent(
        'SaveCompleted',
        done,
        { host, attempt: 1, fencingToken: 5, imagePath: doneImage, format: 'sparse', bytes: 1, blocks: 1, durationMs: 1, throughputBytesPerSec: 1, vmState: 'running', qemu: {} },
        executorSource,
      ),
    ]);
    await stopExecutor('SIGKILL');

    // What the killed executor left: the VM paused mid-save with an fdset, a partial image, the records.
    const qmp = await QmpClient.connect(vm.qmpSocketPath, { timeoutMs: 5000 });
    await qmp.execute('stop');
    await writeFile(lostImage, 'partial');
    await writeFile(doneImage, 'complete');
    const fd = openSync(lostImage, constants.O_WRONLY);
    await qmp.addFd(fd, { opaque: 'left by the crash' });
    closeSync(fd);
    await qmp.close();
    const jobs = path.join(stateDir(), 'jobs');
    await writeFile(
      path.join(jobs, `${lost}.json`),
      JSON.stringify({ jobId: lost, attempt: 1, fencingToken: 5, kind: 'save', vm: 'int-vm', imagePath: lostImage, wasRunning: true }),
    );
    await writeFile(
      path.join(jobs, `${done}.json`),
      JSON.stringify({ jobId: done, attempt: 1, fencingToken: 5, kind: 'save', vm: 'int-vm', imagePath: doneImage, wasRunning: true }),
    );

    await startExecutor();
    const failed = await waitFor('SaveFailed of the lost attempt', async () => (await types(lost)).find((e) => e.type === 'SaveFailed'), 60_000, 200);
    expect(failed).toMatchObject({
      eventId: `${lost}.1.SaveFailed`,
      data: { attempt: 1, stage: 'lost', code: 'executor-restarted', retryable: true, vmResumed: true, fencingToken: 5 },
    });
    expect(existsSync(lostImage)).toBe(false);
    expect(existsSync(doneImage)).toBe(true);
    expect((await types(done)).map((e) => e.type)).toEqual(['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted']);
    expect(existsSync(path.join(jobs, `${lost}.json`)) || existsSync(path.join(jobs, `${done}.json`))).toBe(false);
    // The executor's announcements poll the VM too: QMP serves one client at a time.
    const state = await waitFor(
      'the VM to answer',
      async () => {
        try {
          await using q = await QmpClient.connect(vm.qmpSocketPath, { timeoutMs: 2000 });
          return { status: (await q.execute<{ status: string }>('query-status')).status, fdsets: await q.execute<unknown[]>('query-fdsets') };
        } catch {
          return undefined;
        }
      },
      30_000,
      100,
    );
    expect(state).toEqual({ status: 'running', fdsets: [] });
  });
});
