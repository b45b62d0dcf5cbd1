/**
 * `npm run bench:warm -w @vmsave/bench`: an idle sparse image restored through the real bus
 * (scheduler, executor, verifier as processes, a private nats-server), publish → RestoreCompleted,
 * from a cold QEMU (VMSAVE_WARM_POOL=0) and from the warm pool (VMSAVE_WARM_POOL=1), with where the
 * milliseconds go: the job's own event timestamps and the executor's timings in RestoreCompleted.
 * Beside them, raw QEMU: the same image loaded by a QEMU started for it (exec → QMP answers →
 * fds, migrate-incoming → completed → cont over QMP), no gate, no bus, in the same rounds so
 * both see the same host load. Prints medians; asserts nothing about time.
 *
 *   options: --ram MiB (default 4096)  --rounds N (default 7)  --gap ms before each round (default 2500)
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { JobEvent, VmDefinition } from '@vmsave/contracts';
import { Stack } from '@vmsave/e2e';
import { closeStreamFds, openStreamFds, readImage } from '@vmsave/image/node';
import { detectAccel, launchVm, probeQemu, restoreFromFds, resume, type Accel } from '@vmsave/qemu';
import { QmpClient } from '@vmsave/qmp';
import { median, parseArgs, positiveInt } from './stats.ts';

const args = parseArgs(process.argv.slice(2), ['ram', 'rounds', 'gap']);
const ramMiB = positiveInt(args.ram, 'ram', 4096);
const rounds = positiveInt(args.rounds, 'rounds', 7);
// Quiet time before each round (ms): the VM's QEMU gone and announced stopped, the pool refilled (2 s after a hand-out).
const gapMs = positiveInt(args.gap, 'gap', 2500);
const log = (msg: string): void => console.log(`[bench:warm ${new Date().toISOString().slice(11, 19)}] ${msg}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Sample {
  start: string;
  totalMs: number;
  /** Epoch ms of each event type of the job (its `at`), and of the publish. */
  at: Record<string, number>;
  wall0: number;
  timings: Record<string, number>;
  executorMs: number;
}

const work = await mkdtemp(path.join(os.tmpdir(), 'vmsave-bench-warm-'));
let nats: ChildProcess | undefined;
let stack: Stack | undefined;
try {
  process.env.NATS_URL = await startNats();
  stack = await Stack.start({ hosts: ['bench'], env: { VMSAVE_LOG_LEVEL: 'info', VMSAVE_WARM_POOL: '0' } });
  const s = stack;
  const host = s.host('bench');
  const dirs = s.dirs(host);
  const caps = await probeQemu();
  const accel = await detectAccel();
  const name = `warm-${randomUUID().slice(0, 8)}`;
  const def: VmDefinition = { name, uuid: randomUUID(), machine: caps.machines.find((m) => m.startsWith('pc-q35')) ?? 'q35', memoryMiB: ramMiB, vcpus: 1, args: [] };
  await s.startVm('bench', def);
  await s.waitForHost('bench', [name]);
  const saveId = `bench-${randomUUID()}`;
  const { jobId: saveJob } = await s.client.save({ requestId: saveId, vm: name, format: 'sparse', channels: 2, after: 'quit' });
  const saved = await s.client.waitForJob(saveJob, { timeoutMs: 300_000, until: (j) => j.status === 'verified' || j.status === 'rejected' || j.status === 'failed' });
  if (saved.status !== 'verified') throw new Error(`save ended ${saved.status}`);
  const image = path.basename((await eventOf(s, saveJob, 'SaveCompleted')).imagePath as string);
  log(`idle ${ramMiB} MiB sparse image ${image} saved and verified`);

  const results: Record<string, Sample[]> = { cold: [], warm: [] };
  const raw: Array<{ launchMs: number; loadMs: number; contMs: number; totalMs: number }> = [];
  for (const phase of ['cold', 'warm'] as const) {
    const svc = `executor:${host}` as const;
    const mark = (await s.log(svc)).length;
    await s.kill(svc, 'SIGTERM');
    await s.startService(svc, { VMSAVE_WARM_POOL: phase === 'warm' ? '1' : '0', VMSAVE_WARM_VMS: name, VMSAVE_LOG_LEVEL: 'info' });
    for (const end = Date.now() + 120_000; !/"msg":"executor running"/.test((await s.log(svc)).slice(mark)); ) {
      if (Date.now() > end) throw new Error('executor did not restart');
      await sleep(100);
    }
    for (let i = 0; i < rounds + 1; i++) {
      // Quiet: the VM's QEMU gone and announced stopped, the pool refilled.
      await sleep(gapMs);
      const sample = await restoreOnce(s, image, host);
      if (i > 0) results[phase]!.push(sample); // the first round warms caches; not counted
      log(`${phase} #${i}: ${sample.start} ${sample.totalMs.toFixed(1)} ms (${JSON.stringify(sample.timings)})`);
      await quit(path.join(dirs.qmpDir, `${name}.qmp`));
      if (phase === 'cold') {
        await sleep(500);
        const r = await rawRestore(path.join(dirs.imageDir, image), accel);
        if (i > 0) raw.push(r);
        log(`raw #${i}: ${r.totalMs.toFixed(1)} ms (launch ${r.launchMs.toFixed(1)}, load ${r.loadMs.toFixed(1)}, cont ${r.contMs.toFixed(1)})`);
      }
    }
  }
  report(results);
  const m = (f: (x: (typeof raw)[number]) => number) => (median(raw.map(f)) ?? Number.NaN).toFixed(1);
  console.log(
    `\nraw QEMU, same image, same rounds (median ms): exec → QMP answers ${m((x) => x.launchMs)}, load (fds, migrate-incoming, completed) ${m((x) => x.loadMs)}, cont ${m((x) => x.contMs)}, total ${m((x) => x.totalMs)}`,
  );
  console.log(`raw totals: ${raw.map((x) => x.totalMs.toFixed(0)).join(' ')}`);
} finally {
  await stack?.stop().catch(() => undefined);
  nats?.kill('SIGTERM');
  await rm(work, { recursive: true, force: true });
}

async function restoreOnce(s: Stack, image: string, host: string): Promise<Sample> {
  for (let attempt = 1; ; attempt++) {
    const events: Array<{ type: string; at: number }> = [];
    let completed: Extract<JobEvent, { type: 'RestoreCompleted' }> | undefined;
    const wall0 = Date.now();
    const t0 = performance.now();
    const { jobId, admission } = await s.client.restore({ requestId: `bench-${randomUUID()}`, image, host, after: 'running' });
    if (admission?.outcome === 'rejected' && attempt < 20) {
      await sleep(500);
      continue;
    }
    if (admission?.outcome !== 'accepted') throw new Error(`restore not admitted: ${JSON.stringify(admission)}`);
    let seen = 0;
    const final = await s.client.waitForJob(jobId, {
      timeoutMs: 120_000,
      onEvent: (e) => {
        events.push({ type: e.type, at: Date.parse(e.at) });
        if (e.type === 'RestoreCompleted') {
          seen = performance.now();
          completed = e;
        }
      },
    });
    if (!completed) throw new Error(`restore ended ${final.status}`);
    const at = (t: string) => events.find((e) => e.type === t)?.at ?? Number.NaN;
    const timings = (completed.data as { timings?: Record<string, number> }).timings ?? {};
    return {
      start: (completed.data as { start?: string }).start ?? '?',
      totalMs: seen - t0,
      at: Object.fromEntries(['RestoreRequested', 'RestoreScheduled', 'RestoreStarted', 'RestoreCompleted'].map((t) => [t, at(t)])),
      wall0,
      timings,
      executorMs: completed.data.durationMs,
    };
  }
}

function report(results: Record<string, Sample[]>): void {
  const t = (x: Sample, k: string) => x.timings[k] ?? 0;
  // The executor's own steps, in order, from its clock (RestoreCompleted `timings`).
  // (The journal write runs beside the gate: not a step of its own.)
  const executorSteps = (x: Sample) => t(x, 'intakeMs') + x.executorMs + t(x, 'finishMs');
  const rows: Array<[string, (x: Sample) => number]> = [
    ['publish → RestoreCompleted seen (total)', (x) => x.totalMs],
    ['publish → RestoreRequested (client, command stream, scheduler admission)', (x) => x.at.RestoreRequested! - x.wall0],
    ['RestoreRequested → RestoreScheduled (scheduler placement)', (x) => x.at.RestoreScheduled! - x.at.RestoreRequested!],
    ['RestoreScheduled → work item received by the executor (work hop, pull)', (x) => t(x, 'receivedAt') - x.at.RestoreScheduled!],
    ['executor intake (the job history read and folded)', (x) => t(x, 'intakeMs')],
    ['  beside it: image head read, QEMU started (begun before the gate by)', (x) => t(x, 'headLeadMs')],
    ['executor journal write (beside the gate)', (x) => t(x, 'journalMs')],
    ['executor gate: waiting for the head read at receipt (part of the gate)', (x) => t(x, 'headWaitMs')],
    ['executor gate (descriptor, compatibility, seal, fingerprint)', (x) => t(x, 'gateMs')],
    ['  of it: seal content check', (x) => t(x, 'contentMs')],
    ['executor prepare (VM state, definition, RestoreStarted published)', (x) => t(x, 'prepareMs')],
    ['executor launch: wait for QEMU after gate + prepare', (x) => t(x, 'launchMs')],
    ['  QEMU start → QMP answers (overlapped with gate + prepare)', (x) => t(x, 'launchWallMs')],
    ['executor qmp connect (0: the launch session is handed over)', (x) => t(x, 'qmpMs')],
    ['executor load (fds, capabilities, migrate-incoming, completed)', (x) => t(x, 'loadMs')],
    ['  of it: QMP set-up before migrate-incoming', (x) => t(x, 'loadSetupMs')],
    ['  of it: migrate-incoming → completed (QEMU loads)', (x) => t(x, 'loadTransferMs')],
    ['  of it: fdset removed, QEMU drops it', (x) => t(x, 'loadCleanupMs')],
    ['executor cont', (x) => t(x, 'contMs')],
    ['executor finish (QMP session closed, job log re-read)', (x) => t(x, 'finishMs')],
    ['RestoreCompleted published → seen by the client', (x) => x.totalMs - (t(x, 'receivedAt') - x.wall0) - executorSteps(x)],
  ];
  console.log(`\nidle ${ramMiB} MiB sparse image, medians of ${rounds} rounds (ms):\n`);
  console.log('| step | cold | warm |\n|---|---:|---:|');
  for (const [label, f] of rows)
    console.log(`| ${label} | ${(median(results.cold!.map(f)) ?? Number.NaN).toFixed(1)} | ${(median(results.warm!.map(f)) ?? Number.NaN).toFixed(1)} |`);
  console.log(`\nstarts seen: cold ${results.cold!.map((x) => x.start).join(',')}; warm ${results.warm!.map((x) => x.start).join(',')}`);
  console.log(`totals: cold ${results.cold!.map((x) => x.totalMs.toFixed(0)).join(' ')}; warm ${results.warm!.map((x) => x.totalMs.toFixed(0)).join(' ')}`);
}

/** Raw QEMU: start one for the image's own definition, load the image over QMP, cont; then quit it. */
async function rawRestore(imagePath: string, accel: Accel) {
  const image = await readImage(imagePath);
  const h = image.header;
  const socket = path.join(work, `raw-${randomUUID().slice(0, 8)}.qmp`);
  const t0 = performance.now();
  const vm = await launchVm(image.descriptor.vm, { qmpSocketPath: socket, incoming: 'defer', accel, keepQmp: true, killWithParent: true });
  const qmp = vm.takeQmp?.() ?? (await vm.connectQmp());
  const t1 = performance.now();
  const fds = await openStreamFds(imagePath, { mode: 'restore', directIo: h.directIo });
  try {
    await restoreFromFds(qmp, {
      fds,
      offset: h.streamOffset,
      format: h.format,
      channels: h.format === 'sparse' ? Math.max(1, h.channels) : undefined,
      directIo: h.directIo,
      process: vm,
    });
  } finally {
    closeStreamFds(fds);
  }
  const t2 = performance.now();
  await resume(qmp);
  const t3 = performance.now();
  await qmp.execute('quit').catch(() => undefined);
  await qmp.close().catch(() => undefined);
  await vm.exited;
  return { launchMs: t1 - t0, loadMs: t2 - t1, contMs: t3 - t2, totalMs: t3 - t0 };
}

async function eventOf(s: Stack, jobId: string, type: string): Promise<Record<string, unknown>> {
  let found: Record<string, unknown> | undefined;
  await s.client.waitForJob(jobId, {
    timeoutMs: 30_000,
    onEvent: (e) => {
      if (e.type === type) found = e.data as Record<string, unknown>;
    },
  });
  if (!found) throw new Error(`no ${type} in job ${jobId}`);
  return found;
}

async function quit(socket: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    try {
      const qmp = await QmpClient.connect(socket, { timeoutMs: 2000 });
      await qmp.execute('quit').catch(() => undefined);
      await qmp.close().catch(() => undefined);
    } catch {
      if (!existsSync(socket) || i > 0) return;
    }
    await sleep(100);
  }
}

async function startNats(): Promise<string> {
  const port = await new Promise<number>((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
  const bin = ['/usr/sbin/nats-server', '/usr/local/bin/nats-server', '/usr/bin/nats-server'].find((b) => existsSync(b)) ?? 'nats-server';
  nats = spawn('setpriv', ['--pdeathsig', 'KILL', '--', bin, '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', path.join(work, 'nats')], { stdio: 'ignore' });
  for (const end = Date.now() + 15_000; ; ) {
    const ok = await new Promise<boolean>((resolve) => {
      const sock = net.connect(port, '127.0.0.1', () => {
        sock.destroy();
        resolve(true);
      });
      sock.once('error', () => resolve(false));
    });
    if (ok) return `nats://127.0.0.1:${port}`;
    if (Date.now() > end) throw new Error('private nats-server did not start');
    await sleep(50);
  }
}
