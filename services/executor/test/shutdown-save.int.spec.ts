/**
 * VMSAVE_ON_SHUTDOWN=save with real parts: a private nats-server (the shutdown saves go through
 * a real scheduler, which must be alone on its log), the real scheduler and executor spawned
 * from their `main.ts`, and a small real QEMU VM holding a known pattern in RAM. SIGTERM the
 * executor → the VM is saved (a save job in the log) and quits → restart → the VM runs again
 * from the image with the same memory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bus, readLog } from '@vmsave/bus';
import type { JobEvent } from '@vmsave/contracts';
import { readImageHeader } from '@vmsave/image/node';
import { detectAccel, launchVm, type VmProcess } from '@vmsave/qemu';
import { QmpClient } from '@vmsave/qmp';
import { answers, freePort, guestMemory, makePattern, patternVm, testUrls, uniq, waitFor, stopChild } from '@vmsave/testkit';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPO = path.resolve(PKG, '../..');
const TSX = path.join(REPO, 'node_modules', 'tsx', 'dist', 'loader.mjs');

let dir: string;
let natsUrl: string;
let nats: ChildProcess;
let scheduler: ChildProcess;
let executor: ChildProcess | undefined;
let vm: VmProcess;
let bus: Bus;
const host = uniq('sd').replace(/[^A-Za-z0-9_-]/g, '-');
const pattern = makePattern(undefined, 7);
const state = () => path.join(dir, 'state');
const logFile = (name: string) => path.join(dir, `${name}.log`);
const readLogFile = (name: string) => readFile(logFile(name), 'utf8').catch(() => '');

function node(name: string, script: string, env: Record<string, string>): ChildProcess {
  const out = createWriteStream(logFile(name), { flags: 'a' });
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', process.execPath, '--conditions=development', '--import', TSX, script], {
    cwd: dir,
    env: { ...process.env, NATS_URL: natsUrl, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);
  return child;
}

async function startExecutor(extra: Record<string, string> = {}): Promise<void> {
  const mark = (await readLogFile('executor')).length;
  const child = node('executor', path.join(PKG, 'src', 'main.ts'), {
    VMSAVE_HOST: host,
    VMSAVE_STATE_DIR: state(),
    VMSAVE_LOG_LEVEL: 'debug',
    VMSAVE_HEARTBEAT_MS: '500',
    VMSAVE_ANNOUNCE_MS: '1000',
    VMSAVE_METRICS_PORT: '0',
    VMSAVE_ON_SHUTDOWN: 'save',
    VMSAVE_SHUTDOWN_BUDGET_MS: '60000',
    ...extra,
  });
  executor = child;
  await waitFor(
    'the executor to run',
    async () => {
      if (child.exitCode !== null) throw new Error(`executor exited ${child.exitCode}: ${await readLogFile('executor')}`);
      return /"msg":"executor running"/.test((await readLogFile('executor')).slice(mark));
    },
    120_000,
    200,
  );
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-shutdown-save-'));
  const port = await freePort();
  await mkdir(path.join(dir, 'nats'));
  nats = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', path.join(dir, 'nats')], { stdio: 'ignore' });
  natsUrl = `nats://127.0.0.1:${port}`;
  await waitFor('the private nats-server', () => answers(port), 20_000, 100);
  bus = await Bus.connect({ servers: natsUrl, name: 'shutdown-save-int' });
  await bus.ensureStreams();
  scheduler = node('scheduler', path.join(REPO, 'services', 'scheduler', 'src', 'main.ts'), {
    REDIS_URL: (await testUrls()).redisUrl,
    VMSAVE_REDIS_PREFIX: host,
    VMSAVE_METRICS_PORT: '0',
    VMSAVE_LOG_LEVEL: 'debug',
  });

  for (const d of ['vms', 'qmp', 'images']) await mkdir(path.join(state(), d), { recursive: true });
  const def = await patternVm(dir, 'sd-vm', 64, pattern);
  await writeFile(path.join(state(), 'vms', 'sd-vm.json'), JSON.stringify(def));
  vm = await launchVm(def, { qmpSocketPath: path.join(state(), 'qmp', 'sd-vm.qmp'), accel: await detectAccel(), killWithParent: true });
  await waitFor(
    'the scheduler to run',
    async () => {
      if (scheduler.exitCode !== null) throw new Error(`scheduler exited ${scheduler.exitCode}: ${await readLogFile('scheduler')}`);
      return /"msg":"scheduler running"/.test(await readLogFile('scheduler'));
    },
    120_000,
    200,
  );
  await startExecutor();
  // The scheduler places a save on the host that announced the VM: let it hear an announcement.
  await new Promise((r) => setTimeout(r, 3000));
});

afterAll(async () => {
  await stopChild(executor, 120_000);
  await stopChild(scheduler);
  await vm?.kill().catch(() => undefined);
  // The restored QEMU is detached from the executor: quit it over QMP.
  try {
    await using q = await QmpClient.connect(path.join(state(), 'qmp', 'sd-vm.qmp'), { timeoutMs: 2000 });
    await q.execute('quit').catch(() => undefined);
  } catch {}
  await bus?.close();
  await stopChild(nats);
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function events(): Promise<JobEvent[]> {
  const out: JobEvent[] = [];
  for await (const e of readLog(bus, {})) out.push(e.event);
  return out;
}

describe('VMSAVE_ON_SHUTDOWN=save', () => {
  it('on SIGTERM saves the running VM as a save job, and at the next start restores it with the same memory', async () => {
    const gone = new Promise((r) => executor!.once('exit', r));
    executor!.kill('SIGTERM');
    await Promise.race([gone, new Promise((_, reject) => setTimeout(() => reject(new Error('executor did not exit within 150 s')), 150_000))]);
    const log = await readLogFile('executor');
    if (!/host shutdown: VM saved/.test(log)) console.error(await readLogFile('scheduler'));
    expect(log).toMatch(/"msg":"host shutdown: VM saved"/);
    expect(log).not.toMatch(/NOT saved/);

    // The save is an ordinary job in the log, asked for by this executor, and its image is whole.
    const all = await events();
    const requested = all.find((e) => e.type === 'SaveRequested' && e.data.request.vm === 'sd-vm');
    expect(requested?.type === 'SaveRequested' && requested.data.request).toMatchObject({ after: 'quit', requestedBy: `executor@${host} (host shutdown)` });
    const completed = all.find((e) => e.type === 'SaveCompleted' && e.jobId === requested!.jobId);
    const imagePath = completed?.type === 'SaveCompleted' ? completed.data.imagePath : '';
    expect(await readImageHeader(imagePath)).toMatchObject({ complete: true });
    const remembered = JSON.parse(await readFile(path.join(state(), 'shutdown-saved.json'), 'utf8')) as Array<{ vm: string; imagePath: string }>;
    expect(remembered).toEqual([{ vm: 'sd-vm', jobId: requested!.jobId, imagePath }]);
    // `after: quit`: the VM's QEMU is gone.
    await Promise.race([vm.exited, new Promise((_, reject) => setTimeout(() => reject(new Error('the saved VM did not quit')), 20_000))]);

    await startExecutor();
    const restored = await waitFor(
      'the restore to complete',
      async () => {
        const evs = await events();
        const failed = evs.find((e) => e.type === 'RestoreFailed' || e.type === 'RestoreRejected');
        if (failed) throw new Error(`restore did not complete: ${JSON.stringify(failed)}`);
        return evs.find((e) => e.type === 'RestoreCompleted');
      },
      120_000,
      250,
    );
    expect(restored.type).toBe('RestoreCompleted');
    expect(existsSync(path.join(state(), 'shutdown-saved.json'))).toBe(false);

    await using qmp = await QmpClient.connect(path.join(state(), 'qmp', 'sd-vm.qmp'), { timeoutMs: 5000 });
    const status = await qmp.execute<{ status: string }>('query-status');
    expect(status.status).toBe('running');
    expect((await guestMemory(qmp, dir)).equals(pattern)).toBe(true);
  });

  it('names the VMs it could not save within the budget (here: no scheduler), and leaves them running', async () => {
    await stopChild(scheduler);
    // SIGKILL: no shutdown saves now; the restored QEMU is detached and keeps running.
    const killed = new Promise((r) => executor!.once('exit', r));
    executor!.kill('SIGKILL');
    await killed;
    await startExecutor({ VMSAVE_SHUTDOWN_BUDGET_MS: '2000' });
    const mark = (await readLogFile('executor')).length;
    await stopChild(executor, 60_000);
    const lines = (await readLogFile('executor')).slice(mark);
    const named = lines.split('\n').find((l) => /NOT saved/.test(l));
    expect(named).toMatch(/"msg":"host shutdown: 1 VM\(s\) NOT saved: sd-vm"/);
    expect(named).toMatch(/no scheduler took the save request within the shutdown budget of 2000 ms/);
    expect(existsSync(path.join(state(), 'shutdown-saved.json'))).toBe(false);
    await using qmp = await QmpClient.connect(path.join(state(), 'qmp', 'sd-vm.qmp'), { timeoutMs: 5000 });
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
  });
});
