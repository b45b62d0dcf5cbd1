/**
 * `npm run bench`: vmsave save/restore through the real bus (scheduler, executor and verifier
 * as processes) versus raw QEMU driven over QMP, versus the disk's own O_DIRECT bandwidth.
 * Writes docs/benchmarks.md (the generated section), docs/benchmarks/results.json (every
 * sample) and docs/benchmarks/chart.svg.
 *
 *   npm run bench                                       # 4 GiB VM, 3 repetitions, every mode
 *   npm run bench -- -- --ram 1024 --reps 1             # quick (the second -- is turbo's)
 *   VMSAVE_BENCH_RAM=1024 VMSAVE_BENCH_REPS=1 npm run bench
 *   options: --ram MiB  --reps N  --modes legacy,sparse,…  --states idle,dirty  --out FILE.md  --keep
 *            --bus private|shared (default private: a nats-server of its own; shared: NATS_URL)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { mkdir, mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { jobIdFor, type JobEvent, type VmDefinition } from '@vmsave/contracts';
import { Stack, REPO } from '@vmsave/e2e';
import { readImage, verifyImage } from '@vmsave/image/node';
import { launchVm, probeQemu, type VmProcess } from '@vmsave/qemu';
import { selectModes, type Mode } from './modes.ts';
import { quitVm, rawRestore, rawSave, type RawMode } from './raw.ts';
import { renderChart, renderSection, spliceSection, type OpDiag, type RawSample, type Results, type TimelineEntry, type VmState, type VmsaveSample } from './report.ts';
import { dirtyRegions, parseArgs, positiveInt } from './stats.ts';
import { CpuSampler, blockDevice, describeMachine, diskCounters, diskDelta, dropCaches, findPid, measureDisk, writeRandom } from './sys.ts';

const args = parseArgs(process.argv.slice(2), ['ram', 'reps', 'modes', 'states', 'out', 'keep', 'bus']);
const env = process.env;
const ramMiB = positiveInt(args.ram ?? env.VMSAVE_BENCH_RAM, 'ram', 4096);
const reps = positiveInt(args.reps ?? env.VMSAVE_BENCH_REPS, 'reps', 3);
const modes = selectModes(args.modes ?? env.VMSAVE_BENCH_MODES);
const states = (args.states ?? env.VMSAVE_BENCH_STATES ?? 'dirty,idle').split(',').map((s) => s.trim()) as VmState[];
for (const s of states) if (s !== 'idle' && s !== 'dirty') throw new Error(`--states: unknown state ${s} (idle, dirty)`);
const outMd = path.resolve(REPO, args.out ?? env.VMSAVE_BENCH_OUT ?? 'docs/benchmarks.md');
const outDir = path.join(path.dirname(outMd), 'benchmarks');
const keep = args.keep === 'true';
/** `private` (default): a nats-server of the benchmark's own, so other people's traffic on the shared bus does not land in the numbers. */
const busMode = args.bus ?? env.VMSAVE_BENCH_BUS ?? 'private';
if (busMode !== 'private' && busMode !== 'shared') throw new Error(`--bus must be private or shared, got ${busMode}`);
/** 87.5 % of RAM (3.5 GiB of 4 GiB), rounded to whole MiB. */
const dirtyMiB = Math.floor(ramMiB * 0.875);
const MiB = 1024 * 1024;

const log = (msg: string): void => console.log(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const started = Date.now();
const command = ['npm run bench', ...(args.ram ? [`--ram ${ramMiB}`] : []), ...(args.reps ? [`--reps ${reps}`] : []), ...(args.modes ? [`--modes ${args.modes}`] : [])].join(' ');

// Everything the benchmark writes goes under one temporary directory (os.tmpdir(), which
// must be a real disk: a tmpfs would measure RAM, not the disk).
const work = await mkdtemp(path.join(os.tmpdir(), 'vmsave-bench-'));
const myVms = new Set<VmProcess>();
let stack: Stack | undefined;
let nats: ChildProcess | undefined;
let cleaning = false;
/** The image of the cycle in progress, to bring the VM back from when a restore fails. */
let pendingImage: { path: string; mode: RawMode; offset: number } | undefined;

async function cleanup(): Promise<void> {
  if (cleaning) return;
  cleaning = true;
  for (const vm of myVms) await vm.kill().catch(() => undefined);
  await stack?.stop().catch((err) => log(`stack stop: ${(err as Error).message}`));
  if (nats && nats.exitCode === null) {
    const gone = new Promise((r) => nats!.once('exit', r));
    nats.kill('SIGTERM');
    await gone;
  }
  if (!keep) await rm(work, { recursive: true, force: true });
}
process.on('unhandledRejection', (err) => {
  console.error('unhandled rejection:', err);
  void cleanup().finally(() => process.exit(1));
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    log(`${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  });
}

try {
  await main();
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await cleanup();
}

async function main(): Promise<void> {
  const fsInfo = await stat(work);
  const repoInfo = await stat(REPO);
  const machine = await describeMachine(work);
  if (/tmpfs|ramfs/.test(machine.imageDirFs)) throw new Error(`${os.tmpdir()} is ${machine.imageDirFs}: point TMPDIR at a directory on the disk to measure`);
  const imageDirNote =
    fsInfo.dev === repoInfo.dev
      ? 'The temporary directory (os.tmpdir()) is on the same file system as the repository.'
      : "The temporary directory (os.tmpdir()) is NOT on the repository's file system.";
  const dev = await blockDevice(work);
  log(`work dir ${work} on ${machine.imageDirFs}; ${imageDirNote}`);
  log(`RAM ${ramMiB} MiB (dirty ${dirtyMiB} MiB), ${reps} rep(s), modes ${modes.map((m) => m.id).join(',')}, states ${states.join(',')}`);

  const canDrop = await dropCaches();
  log(`drop_caches ${canDrop ? 'permitted' : 'NOT permitted (restores may hit the page cache)'}`);
  const notes: string[] = [];
  const results: Results = {
    startedAt: new Date(started).toISOString(),
    command,
    ramMiB,
    dirtyMiB,
    reps,
    machine,
    imageDirNote,
    dropCachesPermitted: canDrop,
    disk: [],
    modes,
    vmsave: [],
    raw: [],
    failures: [],
    notes,
  };

  // Random bytes: a source for dd (kept for the run) and one file per RAM region for the dirty VM.
  const ddBytes = Math.min(2048, ramMiB) * MiB;
  const ddSource = path.join(work, 'dd-source.bin');
  await writeRandom(ddSource, ddBytes);
  const disk = async (): Promise<void> => {
    const d = await measureDisk(work, ddSource, ddBytes, canDrop);
    results.disk.push(d);
    log(
      `disk: O_DIRECT write ${(d.directWrite / 1024 ** 3).toFixed(2)} GiB/s, O_DIRECT read ${(d.directRead / 1024 ** 3).toFixed(2)} GiB/s, cold buffered read ${d.coldBufferedRead ? (d.coldBufferedRead / 1024 ** 3).toFixed(2) : '—'} GiB/s`,
    );
  };
  await disk();

  if (busMode === 'private') {
    const url = await startPrivateNats();
    process.env.NATS_URL = url;
    notes.push(
      'The bus is a private nats-server (JetStream, file storage on the same disk) started by the benchmark, so that other users of the shared NATS do not put their traffic into the numbers; Redis is the shared one under a key prefix of its own. `--bus shared` uses NATS_URL instead.',
    );
    log(`private NATS at ${url}`);
  } else {
    notes.push(
      `The bus is the shared NATS at ${env.NATS_URL ?? 'nats://127.0.0.1:4222'}: other users' traffic (and their schedulers on the same command stream) may show in the numbers.`,
    );
  }
  stack = await Stack.start({ hosts: ['bench'], env: { VMSAVE_LOG_LEVEL: 'info' } });
  const host = stack.host('bench');
  const dirs = stack.dirs(host);
  log(`stack up: host ${host}, images in ${dirs.imageDir}`);
  const caps = await probeQemu();

  for (const state of states) {
    const name = `bench-${state}-${randomUUID().slice(0, 8)}`;
    const def: VmDefinition = {
      name,
      uuid: randomUUID(),
      machine: caps.machines.find((m) => m.startsWith('pc-q35')) ?? 'q35',
      memoryMiB: ramMiB,
      vcpus: 1,
      args: ['-name', 'debug-threads=on'],
    } as VmDefinition;
    const socket = path.join(dirs.qmpDir, `${name}.qmp`);
    // The executor knows the VM by its definition file; the benchmark starts the first QEMU.
    await writeFile(path.join(dirs.vmDir, `${name}.json`), JSON.stringify(def));
    const loaderArgs: string[] = [];
    const loaderFiles: string[] = [];
    if (state === 'dirty') {
      // QEMU's loader copies each file into guest RAM at reset. The loader has no migration
      // state, so the definition restores use (without it) is migration-compatible.
      for (const [i, [addr, mib]] of dirtyRegions(ramMiB, dirtyMiB).entries()) {
        const f = path.join(work, `dirty-${i}.bin`);
        await writeRandom(f, mib * MiB);
        loaderFiles.push(f);
        loaderArgs.push('-device', `loader,file=${f},addr=0x${addr.toString(16)},force-raw=on`);
      }
    }
    log(`${state}: starting ${name}`);
    // The random files stay until the state is done: a failed sample is replaced by a fresh VM.
    const relaunch = async (): Promise<void> => {
      const vm = await launchVm({ ...def, args: [...def.args, ...loaderArgs] }, { qmpSocketPath: socket, killWithParent: true, readyTimeoutMs: 120_000 });
      myVms.add(vm);
      await stack!.waitForHost('bench', [name]);
    };
    await relaunch();

    for (let rep = 0; rep < reps; rep++) {
      for (const mode of modes) {
        // A failed sample is recorded and the VM brought back from whatever image is left, so one
        // failure (e.g. a QEMU that stopped answering under I/O load) does not end the run.
        if (!mode.pipeDirect) {
          try {
            const v = await vmsaveCycle(stack, state, mode, rep, name, socket, dev?.name, canDrop);
            results.vmsave.push(v);
            log(
              `${state} ${mode.id} #${rep + 1} vmsave: save ${v.saveS.toFixed(3)} s (executor ${v.saveExecutorS.toFixed(3)}), restore ${v.restoreS.toFixed(3)} s (executor ${v.restoreExecutorS.toFixed(3)}, gate cold ${v.gateColdS?.toFixed(3) ?? '—'}), ${v.bytes} B, ${v.blocks} blocks`,
            );
          } catch (err) {
            await failed(results, state, mode, rep, 'vmsave', err, relaunch, socket);
          }
        }
        try {
          const r = await rawCycle(state, mode, rep, def, socket, dev?.name, canDrop);
          results.raw.push(r);
          log(
            `${state} ${mode.id} #${rep + 1} raw: save ${r.saveS.toFixed(3)} s (+sync ${r.saveSyncS.toFixed(3)}), restore ${r.restoreMigrateS.toFixed(3)} s (+start ${r.restoreS.toFixed(3)}), ${r.bytes} B, ${r.blocks} blocks`,
          );
        } catch (err) {
          await failed(results, state, mode, rep, 'raw', err, relaunch, socket);
        }
        await writeFile(path.join(work, 'partial.json'), JSON.stringify(results));
      }
    }
    // The last restored VM of this state goes, and the random files.
    await quitVm(socket, await findPid(socket));
    for (const f of loaderFiles) await unlink(f);
    if (state !== states[states.length - 1]) await disk();
  }
  await disk();

  results.finishedAt = new Date().toISOString();
  results.durationS = (Date.now() - started) / 1000;
  await mkdir(outDir, { recursive: true });
  await writeFile(path.join(outDir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  await writeFile(path.join(outDir, 'chart.svg'), `${renderChart(results, states.includes('dirty') ? 'dirty' : 'idle')}\n`);
  const existing = await readFile(outMd, 'utf8').catch(() => undefined);
  await writeFile(outMd, spliceSection(existing, renderSection(results), '# Benchmarks'));
  log(`wrote ${path.relative(REPO, outMd)}, ${path.relative(REPO, outDir)}/results.json and chart.svg in ${((Date.now() - started) / 60000).toFixed(1)} min`);
  console.log(renderSection(results));
}

/** A nats-server with JetStream on a free port, its store under the work directory; dies with us. */
async function startPrivateNats(): Promise<string> {
  const port = await new Promise<number>((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
  const bin = ['/usr/sbin/nats-server', '/usr/local/bin/nats-server', '/usr/bin/nats-server'].find((b) => existsSync(b)) ?? 'nats-server';
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', bin, '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', path.join(work, 'nats')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  nats = child;
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const end = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nats-server exited (${child.exitCode}): ${stderr}`);
    const ok = await new Promise<boolean>((resolve) => {
      const sock = net.connect(port, '127.0.0.1', () => {
        sock.destroy();
        resolve(true);
      });
      sock.once('error', () => resolve(false));
    });
    if (ok) return `nats://127.0.0.1:${port}`;
    if (Date.now() > end) throw new Error(`nats-server did not listen on ${port}: ${stderr}`);
    await sleep(50);
  }
}

async function failed(
  results: Results,
  state: VmState,
  mode: Mode,
  rep: number,
  which: 'vmsave' | 'raw',
  err: unknown,
  relaunch: () => Promise<void>,
  socket: string,
): Promise<void> {
  const message = (err instanceof Error ? err.message : String(err)).slice(0, 600);
  results.failures.push({ state, mode: mode.id, rep, path: which, error: message });
  log(`${state} ${mode.id} #${rep + 1} ${which} FAILED: ${message}`);
  if (pendingImage) await rm(pendingImage.path, { force: true });
  pendingImage = undefined;
  // Whatever is left on the socket (a half-restored or paused QEMU) goes; a fresh VM in the same state replaces it.
  const pid = await findPid(socket);
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    await sleep(500);
  }
  await relaunch();
  log(`${state}: a fresh VM replaces the failed one`);
}

/** Measures one operation: QEMU CPU by thread and the disk's counters around `fn`. */
async function measured<T>(needle: string, device: string | undefined, fn: () => Promise<T>): Promise<{ value: T; diag: OpDiag }> {
  const sampler = await new CpuSampler(needle).start();
  const d0 = device ? await diskCounters(device) : undefined;
  try {
    const value = await fn();
    const d1 = device ? await diskCounters(device) : undefined;
    return { value, diag: { cpu: await sampler.stop(), disk: diskDelta(d0, d1) } };
  } catch (err) {
    await sampler.stop();
    throw err;
  }
}

async function vmsaveCycle(s: Stack, state: VmState, mode: Mode, rep: number, vm: string, socket: string, device: string | undefined, canDrop: boolean): Promise<VmsaveSample> {
  // --- save: publish → SaveCompleted as the client sees it; then wait for the verifier.
  let saved: Extract<JobEvent, { type: 'SaveCompleted' }> | undefined;
  let saveS = 0;
  let verifiedS: number | undefined;
  let verified: boolean | undefined;
  let saveTimeline: TimelineEntry[] = [];
  let failReason = '';
  const restoreTimeline: TimelineEntry[] = [];
  const save = await measured(socket, device, async () => {
    for (let attempt = 1; ; attempt++) {
      const requestId = `bench-${randomUUID()}`;
      const jobId = jobIdFor('save', requestId);
      let savedAt = 0;
      const t0 = performance.now();
      const wall0 = Date.now();
      saveTimeline = [];
      const done = s.client.waitForJob(jobId, {
        timeoutMs: 600_000,
        onEvent: (e) => {
          saveTimeline.push({ type: e.type, atMs: Date.parse(e.at) - wall0, seenMs: Date.now() - wall0 });
          if (e.type === 'SaveFailed' || e.type === 'SaveRejected') failReason = `${e.type}: ${'reason' in e.data ? e.data.reason : e.data.message}`;
          if (e.type === 'SaveCompleted') {
            savedAt = performance.now();
            saved = e;
          }
        },
      });
      const { admission } = await s.client.save({ requestId, vm, format: mode.format, channels: mode.channels, directIo: mode.directIo, after: 'paused' });
      if (admission?.outcome === 'rejected' && admission.rule === 'vm-running' && attempt < 20) {
        // The scheduler has not yet seen the announcement of the VM's new QEMU.
        await done.catch(() => undefined);
        await sleep(500);
        continue;
      }
      if (admission?.outcome !== 'accepted') throw new Error(`save not admitted: ${JSON.stringify(admission)}`);
      const final = await done;
      if (!saved) throw new Error(`save ${jobId} ended ${final.status}: ${failReason || JSON.stringify(final)}`);
      saveS = (savedAt - t0) / 1000;
      verifiedS = (performance.now() - t0) / 1000;
      verified = final.status === 'verified';
      return;
    }
  });
  if (!saved) throw new Error('no SaveCompleted');
  const image = saved.data.imagePath;
  const header = (await readImage(image)).header;
  pendingImage = { path: image, mode: { format: header.format, channels: Math.max(1, header.channels), directIo: header.directIo }, offset: header.streamOffset };
  if (verified === false) throw new Error(`the verifier rejected ${image}`);

  // The source must be gone before its name can be restored.
  await quitVm(socket, await findPid(socket));
  const dropped = canDrop ? await dropCaches() : false;

  // --- restore: publish → RestoreCompleted.
  let restoreS = 0;
  let restoreExecutorS = 0;
  const restore = await measured(socket, device, async () => {
    const requestId = `bench-${randomUUID()}`;
    const t0 = performance.now();
    const wall0 = Date.now();
    const { jobId, admission } = await s.client.restore({ requestId, image: path.basename(image), host: s.host('bench'), after: 'running' });
    if (admission?.outcome !== 'accepted') throw new Error(`restore not admitted: ${JSON.stringify(admission)}`);
    let completed: Extract<JobEvent, { type: 'RestoreCompleted' }> | undefined;
    let at = 0;
    const final = await s.client.waitForJob(jobId, {
      timeoutMs: 600_000,
      onEvent: (e) => {
        restoreTimeline.push({ type: e.type, atMs: Date.parse(e.at) - wall0, seenMs: Date.now() - wall0 });
        if (e.type === 'RestoreFailed' || e.type === 'RestoreRejected') failReason = `${e.type}: ${'reason' in e.data ? e.data.reason : e.data.message}`;
        if (e.type === 'RestoreCompleted') {
          at = performance.now();
          completed = e;
        }
      },
    });
    if (!completed) throw new Error(`restore ${jobId} ended ${final.status}: ${failReason || JSON.stringify(final)}`);
    restoreS = (at - t0) / 1000;
    restoreExecutorS = completed.data.durationMs / 1000;
  });

  // The restore gate's cost on its own: verifyImage with a cold cache (first repetition only).
  let gateColdS: number | undefined;
  if (rep === 0) {
    if (canDrop) await dropCaches();
    const t0 = performance.now();
    const v = await verifyImage(image);
    gateColdS = (performance.now() - t0) / 1000;
    if (!v.ok) throw new Error(`verifyImage failed on ${image}`);
  }
  await rm(image, { force: true });
  pendingImage = undefined;

  return {
    state,
    mode: mode.id,
    rep,
    saveS,
    saveExecutorS: saved.data.durationMs / 1000,
    verifiedS,
    verified,
    bytes: saved.data.bytes,
    blocks: saved.data.blocks,
    restoreS,
    restoreExecutorS,
    gateColdS,
    cacheDropped: dropped,
    save: save.diag,
    restore: restore.diag,
    saveTimeline,
    restoreTimeline,
  };
}

async function rawCycle(state: VmState, mode: Mode, rep: number, def: VmDefinition, socket: string, device: string | undefined, canDrop: boolean): Promise<RawSample> {
  const image = path.join(work, `raw-${state}-${mode.id}-${rep}.img`);
  const save = await measured(socket, device, () => rawSave(socket, image, mode));
  pendingImage = { path: image, mode, offset: 0 };
  await quitVm(socket, await findPid(socket));
  const dropped = canDrop ? await dropCaches() : false;
  const restore = await measured(socket, device, () => rawRestore(def, socket, image, mode));
  myVms.add(restore.value.vm);
  void restore.value.vm.exited.then(() => myVms.delete(restore.value.vm));
  await unlink(image);
  pendingImage = undefined;
  const sv = save.value;
  const rs = restore.value;
  return {
    state,
    mode: mode.id,
    rep,
    saveS: sv.saveS,
    saveSyncS: sv.saveSyncS,
    migrateS: sv.migrateS,
    syncS: sv.syncS,
    bytes: sv.bytes,
    blocks: sv.blocks,
    restoreLaunchS: rs.launchS,
    restoreMigrateS: rs.migrateS,
    restoreS: rs.totalS,
    cacheDropped: dropped,
    save: save.diag,
    restore: restore.diag,
  };
}
