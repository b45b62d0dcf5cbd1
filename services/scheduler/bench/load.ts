/**
 * Load benchmark of the scheduler (not a test): many save requests against simulated executors.
 *
 *   npm run bench:load -w @vmsave/scheduler
 *   npm run bench:load -w @vmsave/scheduler -- --sizes 1000/100/5 --reps 3
 *   options: --sizes R/V/H,…  (requests/VMs/hosts; default 10000/1000/50,100000/10000/500)
 *            --paced-s N (seconds of the paced stream at half the measured admission rate; 10, 0 = none)
 *            --paced-base burst|sustained (half of what: the burst's admission rate (default), or the
 *              rate the whole pipeline sustained, requests ÷ time to the last SaveCompleted)
 *            --reps N  --window N (publishes awaiting their JetStream ack; 256)  --save-ms 20-50
 *            --host-limit N (2)  --tick-ms N (1000)  --timeout-s N (per run; 600)  --log-level info
 *            --cpu-prof DIR (profile the scheduler; a summary is printed)  --out FILE.md|-  --keep
 *            --node-arg "ARG …" (passed to the scheduler's node, e.g. --node-arg=--trace-gc; output to its log)
 *            --gc single|parallel (the scheduler's node with --single-threaded-gc, as `npm start` runs it (default), or V8's parallel GC)
 *            --nats-server BIN  --redis-server BIN
 *            --schedulers N[,M…] (scheduler processes sharing the work, 1; a list runs every size with each count)
 *            --scheduler-env K=V[,K=V…] (more environment for the schedulers, e.g. VMSAVE_PARTITION_TTL_MS=15000)
 *
 * Per run it starts a private nats-server (JetStream in a temporary directory) and redis-server
 * (no persistence), announces the hosts, starts the real scheduler as N child processes (with
 * N > 1 it waits until they have split the partitions among them), publishes
 * the requests as fast as JetStream acks them, and follows the event log, timestamping the
 * arrival of each job's SaveRequested, SaveScheduled and SaveCompleted. Before the scheduler starts,
 * the same NATS's own publish-ack rate is measured on a scratch stream (the ceiling); after the
 * burst, a paced stream at half the admission rate the burst reached measures publish →
 * SaveRequested when the scheduler is not saturated. Requests go to their VM's partition subject
 * (`vmsave.cmd.save.<NN>`) when the schedulers log the partitions they own, to the bare
 * `vmsave.cmd.save` otherwise (the output says which). From the log it also checks, across all the schedulers: every request
 * admitted once, every attempt scheduled and handed out once, never two jobs of one VM at once, and
 * each VM's jobs admitted and scheduled in the order their commands are in the command stream.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { jobIdFor, messages, PARTITIONS, partitionOf, subjects, type JobEvent } from '@vmsave/contracts';
import { Bus, createLogger, publishValidated, readLog } from '@vmsave/bus';
import { Fleet, vmName } from './fleet.ts';
import { REPO, countLines, killAllNow, ownedPartitions, startNats, startRedis, startScheduler, stop, stopAll, tail, usage, type Proc } from './procs.ts';
import { inclusiveMs, summarizeProfile } from './profile.ts';
import { medianRun, percentile, renderTables, renderTargets, sizeLabel, splice, type RunResult } from './stats.ts';

/* ---------------- options ---------------- */

function parseArgs(argv: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    // Split at the first '=' only: a value may hold more (--node-arg=--max-semi-space-size=32).
    const eq = a.indexOf('=');
    const [k, v] = eq < 0 ? [a.slice(2), undefined] : [a.slice(2, eq), a.slice(eq + 1)];
    if (v !== undefined) out[k] = v;
    else if (argv[i + 1] !== undefined && !argv[i + 1]!.startsWith('--')) out[k] = argv[++i]!;
    else out[k] = 'true';
  }
  return out;
}

const KNOWN = [
  'gc',
  'node-arg',
  'paced-s',
  'paced-base',
  'sizes',
  'reps',
  'window',
  'save-ms',
  'host-limit',
  'tick-ms',
  'timeout-s',
  'log-level',
  'cpu-prof',
  'out',
  'keep',
  'nats-server',
  'redis-server',
  'schedulers',
  'scheduler-env',
];
const args = parseArgs(process.argv.slice(2));
for (const k of Object.keys(args)) if (!KNOWN.includes(k)) throw new Error(`unknown option --${k} (known: ${KNOWN.map((x) => `--${x}`).join(' ')})`);

const int = (name: string, def: number, min = 1): number => {
  const v = args[name] === undefined ? def : Number(args[name]);
  if (!Number.isInteger(v) || v < min) throw new Error(`--${name}: an integer ≥ ${min}, got ${args[name]}`);
  return v;
};

interface Size {
  requests: number;
  vms: number;
  hosts: number;
}
const sizes: Size[] = (args.sizes ?? '10000/1000/50,100000/10000/500').split(',').map((s) => {
  const [requests, vms, hosts] = s.trim().split('/').map(Number) as [number, number, number];
  if (![requests, vms, hosts].every((n) => Number.isInteger(n) && n > 0) || hosts > vms) throw new Error(`--sizes: "${s}" is not requests/VMs/hosts (hosts ≤ VMs)`);
  return { requests, vms, hosts };
});
const reps = int('reps', 1);
const pacedS = int('paced-s', 10, 0);
const pacedBase = args['paced-base'] ?? 'burst';
const gcMode = args.gc ?? 'single';
if (gcMode !== 'single' && gcMode !== 'parallel') throw new Error(`--gc: single or parallel, got ${gcMode}`);
if (pacedBase !== 'burst' && pacedBase !== 'sustained') throw new Error(`--paced-base: burst or sustained, got ${pacedBase}`);
const pubWindow = int('window', 256);
const hostLimit = int('host-limit', 2);
const tickMs = int('tick-ms', 1000);
const timeoutS = int('timeout-s', 600);
const logLevel = args['log-level'] ?? 'info';
const saveMs = (args['save-ms'] ?? '20-50').split('-').map(Number) as [number, number];
if (saveMs.length !== 2 || !saveMs.every((n) => Number.isFinite(n) && n >= 0) || saveMs[0] > saveMs[1]) throw new Error(`--save-ms: MIN-MAX in ms, got ${args['save-ms']}`);
/** Where `node --cpu-prof` writes the scheduler's profiles (kept: they are the point); a bare --cpu-prof means a temporary directory. */
const cpuProfDir =
  args['cpu-prof'] === undefined ? undefined : args['cpu-prof'] === 'true' ? path.join(os.tmpdir(), `vmsave-load-prof-${process.pid}`) : path.resolve(args['cpu-prof']);
const outMd = args.out === '-' ? undefined : path.resolve(REPO, args.out ?? 'docs/scheduler.md');
const keep = args.keep === 'true';
const schedulerCounts = (args.schedulers ?? '1').split(',').map((x) => {
  const n = Number(x.trim());
  if (!Number.isInteger(n) || n < 1 || n > 16) throw new Error(`--schedulers: integers from 1 to 16 (comma-separated), got ${args.schedulers}`);
  return n;
});
const schedulerEnv: Record<string, string> = Object.fromEntries(
  (args['scheduler-env'] ?? '')
    .split(',')
    .filter(Boolean)
    .map((kv) => {
      const eq = kv.indexOf('=');
      if (eq < 1 || !/^VMSAVE_[A-Z0-9_]+$/.test(kv.slice(0, eq))) throw new Error(`--scheduler-env: VMSAVE_NAME=value pairs, comma-separated, got "${kv}"`);
      return [kv.slice(0, eq), kv.slice(eq + 1)];
    }),
);
const natsBin = args['nats-server'] ?? 'nats-server';
const redisBin = args['redis-server'] ?? 'redis-server';

/** The paced stream is cut at this many requests. */
const PACED_MAX = 50_000;
const say = (msg: string): void => console.log(`[load ${new Date().toISOString().slice(11, 19)}] ${msg}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const quiet = createLogger('load-bench', { level: 'warn', destination: process.stderr });

/* ---------------- the save subject ---------------- */

/**
 * Where a client publishes a save for a VM: its partition's subject (`vmsave.cmd.save.<NN>`) when
 * the schedulers divide the fleet, the bare `vmsave.cmd.save` otherwise. Decided per run, from
 * the schedulers' logs: a scheduler that logs no "partitions owned" serves only the bare subject.
 */
type Route = 'partitioned' | 'bare';
const subjectOf = (route: Route, vm: string): string => (route === 'partitioned' ? subjects.cmd.partitioned('save', partitionOf(vm)) : subjects.cmd.save);

/* ---------------- cleanup ---------------- */

const dirs = new Set<string>();
let cleaning: Promise<void> | undefined;
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await stopAll();
    if (!keep) for (const d of dirs) await rm(d, { recursive: true, force: true }).catch(() => undefined);
  })();
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    say(`${sig}: stopping the scheduler, nats-server and redis-server, removing the temporary directories`);
    void cleanup().finally(() => process.exit(130));
  });
}
process.on('exit', () => {
  killAllNow();
  if (!keep) for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/* ---------------- one run ---------------- */

/** The CPU time and memory of all the schedulers together, and each one's CPU. */
async function usageOf(procs: readonly Proc[]): Promise<{ cpuMs: number; rssBytes: number; peakRssBytes: number; each: number[] }> {
  const us = await Promise.all(procs.map((p) => usage(p.child.pid!)));
  return {
    cpuMs: us.reduce((a, u) => a + u.cpuMs, 0),
    rssBytes: us.reduce((a, u) => a + u.rssBytes, 0),
    peakRssBytes: us.reduce((a, u) => a + u.peakRssBytes, 0),
    each: us.map((u) => u.cpuMs),
  };
}

/**
 * Until the schedulers' last "partitions owned" lines cover every partition exactly once. Returns
 * each one's share, or undefined when a single scheduler logged none within `graceMs` (a
 * scheduler without partitions: it serves the bare subject alone).
 */
async function waitForSplit(procs: readonly Proc[], timeoutMs = 120_000, graceMs = 5_000): Promise<number[][] | undefined> {
  const t0 = performance.now();
  const end = t0 + timeoutMs;
  let owned: (number[] | undefined)[] = [];
  for (;;) {
    owned = await Promise.all(procs.map((p) => ownedPartitions(p.logFile)));
    if (owned.every((o) => o !== undefined)) {
      const all = owned.flat() as number[];
      if (all.length === PARTITIONS && new Set(all).size === PARTITIONS) return owned as number[][];
    }
    if (procs.length === 1 && owned[0] === undefined && performance.now() > t0 + graceMs) return undefined;
    for (const p of procs) if (p.child.exitCode !== null) throw new Error(`${p.name} exited (${p.child.exitCode}) before the partitions were split: ${tail(p.logFile)}`);
    if (performance.now() > end)
      throw new Error(
        `the ${PARTITIONS} partitions were not split within ${timeoutMs} ms: ${procs.map((p, k) => `${p.name} owns ${owned[k] ? `[${owned[k].join(',')}]` : 'nothing it logged ("partitions owned")'}`).join(', ')}`,
      );
    await sleep(200);
  }
}

async function runOnce(size: Size, rep: number, nSchedulers: number): Promise<RunResult> {
  const { requests, vms, hosts } = size;
  const slots = hosts * hostLimit;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-load-'));
  dirs.add(dir);
  const loadAvg = os.loadavg()[0]!;
  const nats = await startNats(dir, natsBin);
  const redis = await startRedis(dir, redisBin);
  const bus = await Bus.connect({ servers: nats.url, name: 'load-bench' });
  const schedulers: Proc[] = [];
  const fleet = new Fleet(bus, { hosts, vms, hostLimit, saveMs }, quiet);
  const ac = new AbortController();
  try {
    await bus.ensureStreams();
    await fleet.announce();
    const ceiling = await publishCeiling(bus, Math.min(requests, 20_000));
    say(`  JetStream alone acks ${Math.round(ceiling)} publishes/s on this NATS (scratch stream, window ${pubWindow})`);
    fleet.start();
    const env = {
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      VMSAVE_HOST_LIMIT: String(hostLimit),
      VMSAVE_TICK_MS: String(tickMs),
      VMSAVE_LOG_LEVEL: logLevel,
      VMSAVE_METRICS_PORT: '0',
      // No verifier runs here: without this every completed save would become overdue and be asked again.
      VMSAVE_VERDICT_TIMEOUT_MS: String(24 * 3600 * 1000),
      ...schedulerEnv,
    };
    const nodeArgs = [...(gcMode === 'single' ? ['--single-threaded-gc'] : []), ...(args['node-arg'] ?? '').split(' ').filter(Boolean)];
    // All at once, with the same environment: that is how they come to share the work.
    const started = await Promise.allSettled(
      Array.from({ length: nSchedulers }, (_, k) => startScheduler(dir, env, { cpuProfDir, nodeArgs, name: nSchedulers > 1 ? `scheduler-${k + 1}` : 'scheduler' })),
    );
    for (const r of started) if (r.status === 'fulfilled') schedulers.push(r.value);
    const failedStart = started.find((r) => r.status === 'rejected');
    if (failedStart) throw (failedStart as PromiseRejectedResult).reason;
    const owned = await waitForSplit(schedulers);
    const route: Route = owned ? 'partitioned' : 'bare';
    const split = owned ? `; partitions ${schedulers.map((p, k) => `${p.name} [${owned[k]!.join(',')}]`).join(', ')}` : '';
    say(
      `run ${rep + 1}/${reps} of ${sizeLabel(size)} with ${nSchedulers} scheduler(s): nats ${nats.url}, redis ${redis.url}, scheduler pid(s) ${schedulers.map((p) => p.child.pid).join(' ')}${split}; publishing on ${route === 'partitioned' ? "each VM's partition subject" : `the bare ${subjects.cmd.save} (the scheduler logs no partitions)`}`,
    );

    // Per request (by index): publish time, and arrival of its events in the log.
    const tPub = new Float64Array(requests).fill(NaN);
    const tReq = new Float64Array(requests).fill(NaN);
    const tSched = new Float64Array(requests).fill(NaN);
    const tDone = new Float64Array(requests).fill(NaN);
    const index = new Map<string, number>();
    const tag = `${Date.now().toString(36)}-${rep}`;
    const requestId = (i: number) => `load-${tag}-${i}`;
    for (let i = 0; i < requests; i++) index.set(jobIdFor('save', requestId(i)), i);
    /** The paced stream after the burst: its own ids, publish times and SaveRequested arrivals. */
    const pacedIndex = new Map<string, number>();
    const pacedId = (i: number) => `load-${tag}-p${i}`;
    let tPacedPub = new Float64Array(0);
    let tPacedReq = new Float64Array(0);
    let nPacedReq = 0;
    /** Arrival in this process minus the event's own `at` (same clock): how far the log follower lags. */
    const lag: number[] = [];
    /** For the first `slots` requests: when the scheduler stamped SaveRequested and SaveScheduled (performance clock). */
    const atReq = new Float64Array(slots).fill(NaN);
    const atSched = new Float64Array(slots).fill(NaN);
    const toPerf = (iso: string) => Date.parse(iso) - performance.timeOrigin;
    let nReq = 0,
      nSched = 0,
      nDone = 0,
      nRejected = 0,
      nFailed = 0,
      nFailedAfterCompleted = 0;
    /** `jobId.attempt` of every SaveCompleted: a SaveFailed for one of them is the watchdog misjudging a finished save. */
    const completedAttempts = new Set<string>();
    // The checks, over the burst's jobs (k = i) and the paced stream's (k = requests + p), whichever scheduler wrote the events.
    const total = requests + PACED_MAX;
    /** Sequence of each job's command in the command stream (from its publish ack). */
    const cmdSeq = new Float64Array(total).fill(NaN);
    /** Position of each job's first SaveRequested among all SaveRequested in the log, and of its first SaveScheduled. */
    const reqPos = new Float64Array(total).fill(NaN);
    const schedPos = new Float64Array(total).fill(NaN);
    const vmOf = (k: number) => (k < requests ? k : k - requests) % vms;
    const scheduledAttempts = new Set<string>();
    /** The job of each VM between its SaveScheduled and its SaveCompleted / SaveFailed / SaveCancelled. */
    const activeOfVm = new Map<number, number>();
    const audit = { requestedTwice: 0, scheduledTwice: 0, overlaps: 0, reqSeen: 0, schedSeen: 0 };
    const check = (k: number, event: JobEvent): void => {
      const vm = vmOf(k);
      switch (event.type) {
        case 'SaveRequested':
          if (Number.isNaN(reqPos[k]!)) reqPos[k] = audit.reqSeen++;
          else audit.requestedTwice++;
          break;
        case 'SaveScheduled': {
          const key = `${k}.${event.data.attempt}`;
          if (scheduledAttempts.has(key)) audit.scheduledTwice++;
          else scheduledAttempts.add(key);
          if (Number.isNaN(schedPos[k]!)) schedPos[k] = audit.schedSeen++;
          const other = activeOfVm.get(vm);
          if (other !== undefined && other !== k) audit.overlaps++;
          activeOfVm.set(vm, k);
          break;
        }
        case 'SaveCompleted':
        case 'SaveFailed':
        case 'SaveCancelled':
          if (activeOfVm.get(vm) === k) activeOfVm.delete(vm);
          break;
        default:
      }
    };
    let wake: (() => void) | undefined;
    const follower = (async () => {
      // An ordered consumer, not direct gets (a client connection's default): one request per event would make this follower the bottleneck.
      for await (const { event } of readLog(bus, { follow: true, signal: ac.signal, via: 'consumer' })) {
        const now = performance.now();
        const i = index.get(event.jobId);
        if (i !== undefined) check(i, event);
        if (i === undefined) {
          const p = pacedIndex.get(event.jobId);
          if (p !== undefined) check(requests + p, event);
          if (p !== undefined && event.type === 'SaveRequested' && Number.isNaN(tPacedReq[p]!)) {
            tPacedReq[p] = now;
            nPacedReq++;
            wake?.();
          }
          continue;
        }
        switch (event.type) {
          case 'SaveRequested':
            if (Number.isNaN(tReq[i]!)) {
              tReq[i] = now;
              nReq++;
            }
            if (i < slots) atReq[i] = toPerf(event.at);
            break;
          case 'SaveScheduled':
            if (Number.isNaN(tSched[i]!)) {
              tSched[i] = now;
              nSched++;
            }
            if (i < slots) atSched[i] = toPerf(event.at);
            lag.push(now - toPerf(event.at));
            break;
          case 'SaveCompleted':
            if (Number.isNaN(tDone[i]!)) {
              tDone[i] = now;
              nDone++;
            }
            completedAttempts.add(`${event.jobId}.${event.data.attempt}`);
            break;
          case 'SaveRejected':
            nRejected++;
            break;
          case 'SaveFailed':
            nFailed++;
            if (completedAttempts.has(`${event.jobId}.${event.data.attempt}`)) nFailedAfterCompleted++;
            break;
          default:
        }
        wake?.();
      }
    })().catch((err) => {
      if (!ac.signal.aborted) say(`log follower failed: ${(err as Error).message}`);
    });

    const ownedAtStart = (await Promise.all(schedulers.map((p) => countLines(p.logFile, '"msg":"partitions owned"')))).reduce((a, n) => a + n, 0);
    const u0 = await usageOf(schedulers);
    const n0 = await usage(nats.proc.child.pid!);
    const b0 = process.cpuUsage();
    const start = performance.now();
    let lastAck = start;
    let next = 0;
    const publisher = async () => {
      while (next < requests) {
        const i = next++;
        const id = requestId(i);
        tPub[i] = performance.now();
        const vm = vmName(i % vms);
        const { ack } = await publishValidated(bus, messages.saveRequest, subjectOf(route, vm), { requestId: id, vm }, { msgId: id });
        cmdSeq[i] = ack.seq;
        lastAck = performance.now();
      }
    };
    const publishing = Promise.all(Array.from({ length: Math.min(pubWindow, requests) }, publisher));

    // Progress every 5 s, with the scheduler's CPU share over the interval.
    let prevCpu = u0.cpuMs,
      prevAt = start;
    let reading = false;
    const progress = setInterval(() => {
      // Under load two ticks can fire back to back: one reading at a time, and none over less than a second.
      if (reading || performance.now() - prevAt < 1000) return;
      reading = true;
      void usageOf(schedulers).then(
        (u) => {
          reading = false;
          const now = performance.now();
          say(
            `  ${((now - start) / 1000).toFixed(0)} s: published ${Math.min(next, requests)}, requested ${nReq}, scheduled ${nSched}, completed ${nDone} (work received ${fleet.received}), rejected ${nRejected}, failed ${nFailed}; scheduler CPU ${Math.round(((u.cpuMs - prevCpu) / (now - prevAt)) * 100)} %, RSS ${Math.round(u.rssBytes / 2 ** 20)} MiB${nSchedulers > 1 ? ' (all schedulers)' : ''}`,
          );
          prevCpu = u.cpuMs;
          prevAt = now;
        },
        () => {
          reading = false;
        },
      );
    }, 5000);

    await publishing;
    const published = performance.now();
    const deadline = start + timeoutS * 1000;
    let timedOut = false;
    while (nDone + nRejected < requests) {
      if (performance.now() > deadline) {
        timedOut = true;
        break;
      }
      for (const p of schedulers) if (p.child.exitCode !== null) throw new Error(`${p.name} exited (${p.child.exitCode}): ${tail(p.logFile)}`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 500);
      });
      wake = undefined;
    }
    clearInterval(progress);
    const u1 = await usageOf(schedulers);
    const n1 = await usage(nats.proc.child.pid!);
    const b1 = process.cpuUsage(b0);
    const end = performance.now();

    const lastOf = (ts: Float64Array) => ts.reduce((m, t) => (Number.isNaN(t) ? m : Math.max(m, t)), Number.NEGATIVE_INFINITY);
    // The paced stream: half the admission rate the burst reached, for --paced-s seconds.
    const burstRate = nReq / (((nReq ? lastOf(tReq) : end) - start) / 1000);
    // "sustained": what the whole pipeline (admission, scheduling, completions) kept up with during the burst.
    const sustainedRate = nDone / (((nDone ? lastOf(tDone) : end) - start) / 1000);
    const pacedRate = Math.max(1, Math.round((pacedBase === 'sustained' ? sustainedRate : burstRate) / 2));
    const nPaced = timedOut || !pacedS ? 0 : Math.min(Math.round(pacedRate * pacedS), PACED_MAX);
    if (nPaced) {
      tPacedPub = new Float64Array(nPaced).fill(NaN);
      tPacedReq = new Float64Array(nPaced).fill(NaN);
      for (let i = 0; i < nPaced; i++) pacedIndex.set(jobIdFor('save', pacedId(i)), i);
      say(
        `  paced stream: ${nPaced} requests at ${pacedRate}/s (half of the ${pacedBase === 'sustained' ? `sustained ${Math.round(sustainedRate)}` : `burst's ${Math.round(burstRate)}`}/s)`,
      );
      const p0 = performance.now();
      const inflight = new Set<Promise<unknown>>();
      for (let i = 0; i < nPaced; i++) {
        const due = p0 + (i * 1000) / pacedRate;
        const wait = due - performance.now();
        if (wait > 1) await sleep(wait);
        const id = pacedId(i);
        const vm = vmName(i % vms);
        tPacedPub[i] = performance.now();
        const pr = publishValidated(bus, messages.saveRequest, subjectOf(route, vm), { requestId: id, vm }, { msgId: id })
          .then(({ ack }) => {
            cmdSeq[requests + i] = ack.seq;
          })
          .finally(() => inflight.delete(pr));
        inflight.add(pr);
      }
      await Promise.all(inflight);
      const until = performance.now() + 60_000;
      while (nPacedReq < nPaced && performance.now() < until) {
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 200);
        });
        wake = undefined;
      }
    }
    const pacedLat: number[] = [];
    for (let i = 0; i < nPaced; i++) if (!Number.isNaN(tPacedReq[i]!)) pacedLat.push(tPacedReq[i]! - tPacedPub[i]!);
    if (timedOut) say(`  timed out after ${timeoutS} s: ${nReq} requested, ${nSched} scheduled, ${nDone} completed of ${requests}`);

    const since = (ts: Float64Array, upto = requests) => {
      const out: number[] = [];
      for (let i = 0; i < upto; i++) if (!Number.isNaN(ts[i]!)) out.push(ts[i]! - tPub[i]!);
      return out;
    };
    const reqArrivals = [...tReq].filter((t) => !Number.isNaN(t)).sort((a, b) => a - b);
    const tenth = Math.max(1, Math.floor(requests / 10));
    const sched = since(tSched);
    const first = since(tSched, Math.min(slots, requests));
    const admit = since(tReq);
    const wallMs = (nDone ? lastOf(tDone) : end) - start;
    // Per VM, its jobs in the order of their commands in the stream: where a later command's job came first in the log.
    const byVm: number[][] = Array.from({ length: vms }, () => []);
    for (let k = 0; k < requests + nPaced; k++) if (!Number.isNaN(cmdSeq[k]!)) byVm[vmOf(k)]!.push(k);
    for (const ks of byVm) ks.sort((a, b) => cmdSeq[a]! - cmdSeq[b]!);
    const examples: string[] = [];
    const outOfOrder = (pos: Float64Array, what: string): number => {
      let n = 0;
      for (const ks of byVm) {
        let last = -1;
        for (const k of ks) {
          if (Number.isNaN(pos[k]!)) continue;
          if (last >= 0 && pos[k]! < pos[last]!) {
            if (n++ === 0)
              examples.push(
                `${what}: ${vmName(vmOf(k))}'s command at stream seq ${cmdSeq[k]} (${k < requests ? `request ${k}` : `paced ${k - requests}`}) came ${pos[last]! - pos[k]!} places before the one at seq ${cmdSeq[last]} (${last < requests ? `request ${last}` : `paced ${last - requests}`})`,
              );
          } else last = k;
        }
      }
      return n;
    };
    const outOfOrderRequested = outOfOrder(reqPos, 'admitted');
    const outOfOrderScheduled = outOfOrder(schedPos, 'scheduled');
    const ownershipChanges = (await Promise.all(schedulers.map((p) => countLines(p.logFile, '"msg":"partitions owned"')))).reduce((a, n) => a + n, 0) - ownedAtStart;
    const result: RunResult = {
      requests,
      vms,
      hosts,
      slots,
      scheduled: nSched,
      admitted: nReq,
      rejected: nRejected,
      failed: nFailed,
      failedAfterCompleted: nFailedAfterCompleted,
      schedulers: nSchedulers,
      subjectMode: route,
      requestedTwice: audit.requestedTwice,
      scheduledTwice: audit.scheduledTwice,
      workItemsTwice: fleet.duplicates,
      vmOverlaps: audit.overlaps,
      outOfOrderRequested,
      outOfOrderScheduled,
      ownershipChanges,
      workItems: fleet.received,
      timedOut,
      publishPerSec: requests / ((lastAck - start) / 1000),
      admittedPerSec: nReq / (((nReq ? lastOf(tReq) : end) - start) / 1000),
      scheduledPerSec: nSched / (((nSched ? lastOf(tSched) : end) - start) / 1000),
      admittedPerSecFirstTenth: reqArrivals.length >= tenth ? tenth / ((reqArrivals[tenth - 1]! - start) / 1000) : NaN,
      admittedPerSecLastTenth: reqArrivals.length === requests ? tenth / ((reqArrivals[requests - 1]! - reqArrivals[requests - 1 - tenth]!) / 1000) : NaN,
      admitP50: percentile(admit, 50),
      admitP99: percentile(admit, 99),
      schedP50: percentile(sched, 50),
      schedP99: percentile(sched, 99),
      schedMax: percentile(sched, 100),
      firstP50: percentile(first, 50),
      firstP99: percentile(first, 99),
      firstMax: percentile(first, 100),
      wallS: wallMs / 1000,
      schedulerCpuS: (u1.cpuMs - u0.cpuMs) / 1000,
      schedulerCpuSplit: u1.each.map((c, k) => ((c - u0.each[k]!) / 1000).toFixed(1)).join(' + '),
      schedulerCpuShare: (u1.cpuMs - u0.cpuMs) / (end - start),
      schedulerRssMiB: u1.rssBytes / 2 ** 20,
      schedulerPeakRssMiB: u1.peakRssBytes / 2 ** 20,
      natsCpuS: (n1.cpuMs - n0.cpuMs) / 1000,
      benchCpuS: (b1.user + b1.system) / 1e6,
      loadAvg,
      followLagP50: percentile(lag, 50),
      followLagP99: percentile(lag, 99),
      ceilingPerSec: ceiling,
      slotCapacityPerSec: (slots * 1000) / ((saveMs[0] + saveMs[1]) / 2),
      pacedRate: nPaced ? pacedRate : NaN,
      pacedCount: nPaced,
      pacedAdmitted: pacedLat.length,
      pacedP50: percentile(pacedLat, 50),
      pacedP99: percentile(pacedLat, 99),
    };
    say(
      `  done in ${((end - start) / 1000).toFixed(1)} s (publishing took ${((published - start) / 1000).toFixed(1)} s): admitted ${Math.round(result.admittedPerSec)}/s, scheduled ${Math.round(result.scheduledPerSec)}/s, publish → SaveScheduled p50 ${Math.round(result.schedP50)} ms p99 ${Math.round(result.schedP99)} ms; first ${slots}: p50 ${Math.round(result.firstP50)} ms p99 ${Math.round(result.firstP99)} ms; scheduler CPU ${result.schedulerCpuS.toFixed(1)} s${nSchedulers > 1 ? ` (${result.schedulerCpuSplit})` : ''}`,
    );
    const firstN = Math.min(slots, requests);
    const part = (a: (i: number) => number) => {
      const v = Array.from({ length: firstN }, (_, i) => a(i)).filter(Number.isFinite);
      return `p50 ${Math.round(percentile(v, 50))} / max ${Math.round(percentile(v, 100))} ms`;
    };
    say(
      `  first ${firstN} requests, where the time goes: publish → scheduler stamps SaveRequested ${part((i) => atReq[i]! - tPub[i]!)}; → stamps SaveScheduled ${part((i) => atSched[i]! - atReq[i]!)}; → seen here ${part((i) => tSched[i]! - atSched[i]!)}`,
    );
    say(`  log follower lag behind SaveScheduled's own timestamp, all jobs: p50 ${Math.round(result.followLagP50)} ms, p99 ${Math.round(result.followLagP99)} ms`);
    if (nPaced)
      say(
        `  paced at ${pacedRate}/s: publish → SaveRequested p50 ${Math.round(result.pacedP50)} ms, p99 ${Math.round(result.pacedP99)} ms (${pacedLat.length} of ${nPaced} admitted)`,
      );
    if (fleet.errors) say(`  ${fleet.errors} simulated saves could not publish their events`);
    const broken = [
      [result.requestedTwice, 'requests admitted twice'],
      [result.scheduledTwice, 'attempts scheduled twice'],
      [result.workItemsTwice, 'attempts handed out twice'],
      [result.vmOverlaps, 'times a VM had two jobs at once'],
      [result.outOfOrderRequested, 'jobs admitted before an earlier command of their VM'],
      [result.outOfOrderScheduled, "jobs scheduled before an earlier command's job of their VM"],
    ].filter(([n]) => n !== 0);
    say(
      `  checks across ${nSchedulers} scheduler(s): ${broken.length ? `**${broken.map(([n, what]) => `${n} ${what}`).join(', ')}**` : 'every request admitted once, every attempt scheduled and handed out once, no VM with two jobs at once, per-VM order kept'}; ${result.rejected} rejected, ${result.failed} SaveFailed (${result.failedAfterCompleted} after that attempt's SaveCompleted); partition ownership changed ${ownershipChanges} time(s) during the run`,
    );
    for (const e of examples) say(`  first out of order, ${e}`);
    ac.abort();
    await follower;
    return result;
  } finally {
    ac.abort();
    await Promise.all(schedulers.map((p) => stop(p)));
    await fleet.stop();
    await bus.close();
    await stop(redis.proc);
    await stop(nats.proc);
    if (!keep) {
      await rm(dir, { recursive: true, force: true });
      dirs.delete(dir);
    } else say(`  kept ${dir}`);
  }
}

/* ---------------- the ceiling ---------------- */

/**
 * JetStream's own publish-ack rate on this NATS: `n` publishes of a save request's size with a
 * message id, `--window` in flight, to a scratch stream stored like the command stream (file),
 * deleted afterwards. What the bus can absorb here, so the scheduler's rate can be read against it.
 */
async function publishCeiling(bus: Bus, n: number): Promise<number> {
  const name = 'LOADBENCH_CEILING';
  await bus.jsm.streams.add({ name, subjects: ['loadbench.ceiling'], storage: 'file' as never, duplicate_window: 120 * 1e9 });
  try {
    const data = new TextEncoder().encode(JSON.stringify({ requestId: 'load-ceiling-000000', vm: vmName(0), format: 'auto', channels: 1, priority: 'normal' }));
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: Math.min(pubWindow, n) }, async () => {
        while (next < n) {
          const i = next++;
          await bus.js.publish('loadbench.ceiling', data, { msgID: `ceiling-${i}` });
        }
      }),
    );
    return n / ((performance.now() - t0) / 1000);
  } finally {
    await bus.jsm.streams.delete(name).catch(() => undefined);
  }
}

/* ---------------- the report ---------------- */

function version(bin: string, flag: string): string {
  try {
    return execFileSync(bin, [flag], { encoding: 'utf8' }).trim().split('\n')[0]!;
  } catch {
    return `${bin}: unknown version`;
  }
}

async function machine(): Promise<string> {
  const osName = await readFile('/etc/os-release', 'utf8').then(
    (t) => /^PRETTY_NAME="?([^"\n]*)/m.exec(t)?.[1] ?? 'Linux',
    () => os.type(),
  );
  const cpus = os.cpus();
  return `${cpus.length} × ${cpus[0]?.model.trim() ?? 'CPU'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, ${osName} (kernel ${os.release()}), Node ${process.versions.node}, ${version(natsBin, '--version')}, ${version(redisBin, '--version').replace(/ sha=.*$/, '')}`;
}

async function main(): Promise<void> {
  const began = Date.now();
  const rows: { result: RunResult; reps: number }[] = [];
  const profiles: string[] = [];
  for (const nSchedulers of schedulerCounts)
    for (const size of sizes) {
      const runs: RunResult[] = [];
      for (let r = 0; r < reps; r++) {
        const before = cpuProfDir && existsSync(cpuProfDir) ? new Set(await readdir(cpuProfDir)) : new Set<string>();
        runs.push(await runOnce(size, r, nSchedulers));
        if (cpuProfDir) {
          await sleep(500);
          const fresh = (await readdir(cpuProfDir).catch(() => [] as string[])).filter((f) => f.endsWith('.cpuprofile') && !before.has(f));
          for (const f of fresh) {
            const d = await describeProfile(path.join(cpuProfDir, f), size);
            if (d) profiles.push(d);
          }
        }
      }
      rows.push({ result: medianRun(runs), reps });
    }
  const tables = [renderTables(rows), '', renderTargets(rows.map((r) => r.result))].join('\n');
  const took = (Date.now() - began) / 1000;
  const command = `npm run bench:load -w @vmsave/scheduler${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
  const body = [
    `Run ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC with \`${command}\` (${(took / 60).toFixed(1)} min in all).`,
    '',
    `Machine: ${await machine()}.`,
    `Settings: paced stream ${pacedS} s at half ${pacedBase === 'sustained' ? 'the rate the burst sustained to its last SaveCompleted' : "the burst's admission rate"}, VMSAVE_HOST_LIMIT ${hostLimit}, VMSAVE_TICK_MS ${tickMs}, scheduler log level ${logLevel} (to a file), ${gcMode === 'single' ? '`--single-threaded-gc`' : "V8's parallel GC"}, publish window ${pubWindow}${
      Object.keys(schedulerEnv).length
        ? `, scheduler environment ${Object.entries(schedulerEnv)
            .map(([k, v]) => `${k}=${v}`)
            .join(' ')}`
        : ''
    }, simulated save ${saveMs[0]}–${saveMs[1]} ms, ${reps} run(s) per size${reps > 1 ? ' (medians of the runs)' : ''}; requests published on ${[...new Set(rows.map((r) => r.result.subjectMode))].map((m) => (m === 'partitioned' ? "each VM's partition subject (`vmsave.cmd.save.<NN>`)" : `the bare \`${subjects.cmd.save}\` (the scheduler logged no partitions)`)).join(' and ')}.`,
    '',
    tables,
    ...(profiles.length ? ['', ...profiles] : []),
  ].join('\n');
  console.log(`\n${body}\n`);
  if (outMd) {
    const doc = existsSync(outMd) ? await readFile(outMd, 'utf8') : '# Scheduler\n';
    await writeFile(outMd, splice(doc, body, '## Load benchmark: results'));
    say(`written to ${path.relative(REPO, outMd)}`);
  }
  if (cpuProfDir) say(`scheduler CPU profiles in ${cpuProfDir} (open them in Chrome DevTools or speedscope)`);
  say(`total ${(took / 60).toFixed(1)} min`);
}

async function describeProfile(file: string, size: Size): Promise<string | undefined> {
  const { totalMs, idleMs, hot } = await summarizeProfile(file, REPO, 12);
  // tsx's module loader runs in a worker thread with a profile of its own: leave out an idle thread.
  if (totalMs - idleMs < 0.05 * totalMs) return undefined;
  const inc = await inclusiveMs(file, ['pump', 'pickNext', 'place', 'onCommand', 'onLogEvent', 'tick', 'dispatch']);
  return [
    `CPU profile of the scheduler at ${sizeLabel(size)} (\`--cpu-prof\`, whole process life: ${(totalMs / 1000).toFixed(1)} s, of it idle ${(idleMs / 1000).toFixed(1)} s). Inclusive: ${Object.entries(
      inc,
    )
      .map(([k, v]) => `${k} ${(v / 1000).toFixed(1)} s`)
      .join(', ')}.`,
    '',
    '| function | where | self | inclusive | share of busy time |',
    '|---|---|---:|---:|---:|',
    ...hot.map(
      (h) =>
        `| \`${h.name}\` | ${h.where.replace(/^.*node_modules\//, 'node_modules/')} | ${(h.selfMs / 1000).toFixed(2)} s | ${(h.totalMs / 1000).toFixed(2)} s | ${Math.round(h.share * 100)} % |`,
    ),
  ].join('\n');
}

try {
  await main();
} catch (err) {
  console.error(err);
  process.exitCode = 1;
} finally {
  await cleanup();
}
