/**
 * Projection lag benchmark (not a test): the scheduler benchmark's 10,000-request burst through
 * the real scheduler on a private nats-server and redis-server (the scheduler bench's helpers:
 * simulated executors, `startScheduler`), with the real projection (`Projection.run`) folding the
 * log into Redis and a real dashboard serving the live stream to one client. It prints the lag
 * from an event's time (`at`, stamped by its publisher) to the read model written (the projection's
 * transaction done), and to the live stream's frame received, p50/p99/max. Target p99 ≤ 1 s.
 *
 *   npm run bench:lag -w @vmsave/dashboard
 *   npm run bench:lag -w @vmsave/dashboard -- --requests 10000 --vms 1000 --hosts 50 --batch-max 1000
 *   (--batch-max 1: one event per transaction, the projection before batching; --via consumer|direct:
 *   how the projector reads the log, default as its NATS user `dashboard` does, by direct get)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { messages, subjects } from '@vmsave/contracts';
import { Bus, createLogger, publishValidated } from '@vmsave/bus';
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connectRedis, Projection } from '@vmsave/store';
import { Fleet, vmName } from '@vmsave/scheduler/bench/fleet';
import { killAllNow, startNats, startRedis, startScheduler, stopAll, tail } from '@vmsave/scheduler/bench/procs';
import { openSse } from '@vmsave/dashboard/test/sse';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : def;
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name}: a positive integer, got ${process.argv[i + 1]}`);
  return v;
}
const REQUESTS = arg('requests', 10_000);
const VMS = arg('vms', 1000);
const HOSTS = arg('hosts', 50);
const BATCH_MAX = arg('batch-max', 1000);
const TIMEOUT_S = arg('timeout-s', 300);
const VIA = process.argv.includes('--via') ? process.argv[process.argv.indexOf('--via') + 1] : undefined;
if (VIA !== undefined && VIA !== 'direct' && VIA !== 'consumer') throw new Error(`--via: direct or consumer, got ${VIA}`);
const say = (m: string) => console.log(`[lag ${new Date().toISOString().slice(11, 19)}] ${m}`);
const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-bench-lag-'));
process.on('exit', killAllNow);
const quiet = createLogger('bench-lag', { level: 'warn', destination: process.stderr });
let child: ChildProcess | undefined;
try {
  const nats = await startNats(dir);
  const redisProc = await startRedis(dir);
  const bus = await Bus.connect({ servers: nats.url, name: 'bench-lag' });
  await bus.ensureStreams();
  const fleet = new Fleet(bus, { hosts: HOSTS, vms: VMS, hostLimit: 2, saveMs: [20, 50] }, quiet);
  await fleet.announce();
  fleet.start();
  const scheduler = await startScheduler(dir, {
    NATS_URL: nats.url,
    REDIS_URL: redisProc.url,
    VMSAVE_HOST_LIMIT: '2',
    VMSAVE_LOG_LEVEL: 'info', // startScheduler waits for its "scheduler running" line
    VMSAVE_METRICS_PORT: '0',
    VMSAVE_VERDICT_TIMEOUT_MS: String(24 * 3600 * 1000),
  });

  // The projection and the dashboard in a process of their own (dashboard-lag-child.ts), as deployed.
  child = fork(fileURLToPath(new URL('./dashboard-lag-child.ts', import.meta.url)), {
    execArgv: ['--conditions=development', '--import', 'tsx'],
    env: { ...process.env, NATS_URL: nats.url, REDIS_URL: redisProc.url, PREFIX: 'lag', BATCH_MAX: String(BATCH_MAX), ...(VIA ? { VIA } : {}) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    child!.once('message', (m) => resolve((m as { port: number }).port));
    child!.once('exit', (code) => reject(new Error(`the projector process exited (${code})`)));
  });
  const redis = await connectRedis(redisProc.url, { name: 'bench-lag' });
  const projection = new Projection(redis, 'lag');
  const countOf = async (state: string) => redis.zcard(projection.k.jobsByState(state));
  const sse = await openSse(`http://127.0.0.1:${port}/api/stream`);
  const streamLag: number[] = [];
  let summaries = 0;
  let frames = 0;
  const reading = (async () => {
    for await (const m of sse.messages) {
      if (m.event === 'job') {
        frames++;
        streamLag.push(Date.now() - Date.parse((JSON.parse(m.data) as { event: { at: string } }).event.at));
      } else if (m.event === 'summary') summaries++;
    }
  })().catch(() => undefined);

  say(`burst of ${REQUESTS} save requests (${VMS} VMs, ${HOSTS} hosts), projection batches ≤ ${BATCH_MAX} events`);
  const t0 = performance.now();
  let next = 0;
  const tag = Date.now().toString(36);
  await Promise.all(
    Array.from({ length: 256 }, async () => {
      while (next < REQUESTS) {
        const i = next++;
        const id = `lag-${tag}-${i}`;
        await publishValidated(bus, messages.saveRequest, subjects.cmd.save, { requestId: id, vm: vmName(i % VMS) }, { msgId: id });
      }
    }),
  );
  say(`published in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const end = performance.now() + TIMEOUT_S * 1000;
  let completed = 0;
  let rejected = 0;
  while (completed + rejected < REQUESTS && performance.now() < end) {
    [completed, rejected] = await Promise.all([countOf('completed'), countOf('rejected')]);
    if (scheduler.child.exitCode !== null) throw new Error(`the scheduler exited: ${tail(scheduler.logFile)}`);
    await sleep(500);
  }
  const took = (performance.now() - t0) / 1000;
  await sleep(1500); // the stream's last frames
  say(`done in ${took.toFixed(1)} s: ${completed} completed, ${rejected} rejected`);

  const stopped = new Promise<{ samples: Array<[string, number, number]>; writes: Array<[number, number]> }>((resolve) => child!.once('message', (m) => resolve(m as never)));
  child.send('stop');
  const { samples, writes } = await stopped;
  const batches = writes.length;
  const writeMs = writes.map((w) => w[1]);
  const lag = samples.map((x) => x[1]);
  const applied = samples.length;
  const lagByType = new Map<string, number[]>();
  const worstBySecond = new Map<number, number>();
  for (const [type, l, at] of samples) {
    lagByType.set(type, [...(lagByType.get(type) ?? []), l]);
    const sec = Math.floor(at / 1000);
    worstBySecond.set(sec, Math.max(worstBySecond.get(sec) ?? 0, l));
  }
  const f = (x: number) => (Number.isNaN(x) ? '—' : `${Math.round(x)} ms`);
  console.log(
    `\nProjection lag during a ${REQUESTS.toLocaleString('en')}-request burst (event at → read model written), batches ≤ ${BATCH_MAX}, log read ${VIA ?? 'as the dashboard user (direct get)'}`,
  );
  console.log(
    `  events applied ${applied} (${Math.round(applied / took)}/s over the run), transactions ${batches} (${(applied / Math.max(1, batches)).toFixed(1)} events each, largest ${Math.max(...writes.map((w) => w[0]))}), each written in p50 ${f(pct(writeMs, 50))}, p99 ${f(pct(writeMs, 99))}`,
  );
  console.log(`  projection lag p50 ${f(pct(lag, 50))}  p99 ${f(pct(lag, 99))}  max ${f(Math.max(...lag))}   target p99 ≤ 1000 ms: ${pct(lag, 99) <= 1000 ? 'met' : 'NOT met'}`);
  console.log(`  by type: ${[...lagByType].map(([t, xs]) => `${t} p50 ${f(pct(xs, 50))} p99 ${f(pct(xs, 99))}`).join('; ')}`);
  console.log(`  worst lag per second of the run: ${[...worstBySecond].map(([sec, l]) => `${sec}s:${l}`).join(' ')}`);
  console.log(
    `  live stream (event at → frame received by one client): ${frames} job frames, ${summaries} summaries, lag p50 ${f(pct(streamLag, 50))}  p99 ${f(pct(streamLag, 99))}`,
  );
  sse.close();
  await reading;
  await fleet.stop();
  redis.disconnect();
  await bus.close();
} finally {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  await stopAll();
  await rm(dir, { recursive: true, force: true });
}
