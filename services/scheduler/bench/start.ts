/**
 * Scheduler start time with a long event log, with and without the state snapshot.
 *
 *   npm run bench:start -w @vmsave/scheduler -- [--events 1000000] [--reps 3] [--window 4000] [--no-full] [--keep]
 *
 * Starts a private nats-server (JetStream in a temporary directory) and redis-server, publishes
 * `--events` events (whole save lifecycles of 5 events: requested, scheduled, started, completed,
 * verified) with batched async publishes, then times the real scheduler (`src/main.ts`) from spawn
 * to its "scheduler running" line:
 *   full      VMSAVE_SNAPSHOT_EVERY=0: the whole log replayed;
 *   snapshot  after a run that wrote a snapshot on its clean stop: the snapshot loaded, nothing replayed.
 * Prints each run and the medians. A benchmark, never a test.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { makeEvent, JobEvent, jobIdFor, subjects } from '@vmsave/contracts';
import { Bus } from '@vmsave/bus';
import { killAllNow, startNats, startRedis, startScheduler, stop, stopAll } from './procs.ts';

const { values: args } = parseArgs({
  options: {
    events: { type: 'string', default: '1000000' },
    reps: { type: 'string', default: '3' },
    window: { type: 'string', default: '4000' },
    keep: { type: 'boolean', default: false },
    /** Leave out the full replay (about 100 s at 1,000,000 events): only the snapshot start is timed. */
    'no-full': { type: 'boolean', default: false },
  },
});
const EVENTS = Number(args.events);
const REPS = Number(args.reps);
const WINDOW = Number(args.window);
const say = (s: string) => process.stdout.write(`${s}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const dir = mkdtempSync(path.join(os.tmpdir(), 'vmsave-bench-start-'));
process.on('exit', killAllNow);
for (const sig of ['SIGINT', 'SIGTERM'] as const)
  process.once(sig, () => {
    void stopAll().finally(() => process.exit(130));
  });

/** One save's five events, all valid under the contract (checked for the first job). */
function lifecycle(i: number): JobEvent[] {
  const vm = `vm-${i % 10_000}`;
  const host = `hv-${i % 500}`;
  const jobId = jobIdFor('save', `bench-start-${i}`);
  const src = { source: 'scheduler' };
  const base = { host, attempt: 1, fencingToken: i + 1, imagePath: `/var/lib/vmsave/${vm}-${jobId}-1.vmsave`, format: 'sparse' as const };
  return [
    makeEvent('SaveRequested', jobId, { request: { requestId: `bench-start-${i}`, vm, priority: 'normal' } as never }, src),
    makeEvent('SaveScheduled', jobId, { host, attempt: 1, fencingToken: i + 1, deadlineAt: new Date(Date.now() + 3600_000).toISOString() }, src),
    makeEvent('SaveStarted', jobId, { ...base, channels: 1, directIo: false, wasRunning: true, ramBytes: 128 * 2 ** 20 }, { source: `executor@${host}` }),
    makeEvent('SaveCompleted', jobId, { ...base, bytes: 1, blocks: 1, durationMs: 10, throughputBytesPerSec: 1, vmState: 'running', qemu: {} }, { source: `executor@${host}` }),
    makeEvent('ImageVerified', jobId, { imagePath: base.imagePath, host, checks: [{ name: 'header', status: 'pass', detail: 'ok' }] }, { source: 'verifier' }),
  ];
}

async function publishAll(url: string): Promise<void> {
  const bus = await Bus.connect({ servers: url, name: 'bench-start' });
  await bus.ensureStreams();
  for (const e of lifecycle(0)) JobEvent.parse(e);
  const enc = new TextEncoder();
  const t0 = Date.now();
  let inflight: Promise<unknown>[] = [];
  let n = 0;
  for (let i = 0; n < EVENTS; i++) {
    for (const e of lifecycle(i)) {
      if (n >= EVENTS) break;
      inflight.push(bus.js.publish(subjects.evt(e.jobId, e.type), enc.encode(JSON.stringify(e))));
      n++;
      if (inflight.length >= WINDOW) {
        await Promise.all(inflight);
        inflight = [];
      }
    }
    if (n % 100_000 < 5) process.stdout.write(`\r  published ${n}`);
  }
  await Promise.all(inflight);
  const s = (Date.now() - t0) / 1000;
  say(`\rpublished ${n} events in ${s.toFixed(1)} s (${Math.round(n / s)}/s)`);
  await bus.close();
}

/** Spawn → "scheduler running", and what its rebuild line says. */
async function timedStart(env: Record<string, string>, name: string): Promise<{ ms: number; rebuilt: Record<string, unknown>; proc: Awaited<ReturnType<typeof startScheduler>> }> {
  const d = mkdtempSync(path.join(dir, `${name}-`));
  const t0 = performance.now();
  const proc = await startScheduler(d, env, { readyTimeoutMs: 600_000 });
  const ms = performance.now() - t0;
  const line = readFileSync(proc.logFile, 'utf8')
    .split('\n')
    .find((l) => l.includes('rebuilt its view'));
  return { ms, rebuilt: line ? (JSON.parse(line) as Record<string, unknown>) : {}, proc };
}

try {
  const nats = await startNats(dir);
  const redis = await startRedis(dir);
  say(
    `nats ${nats.url}, redis ${redis.url}, ${EVENTS} events, ${REPS} repetitions, load average ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`,
  );
  await publishAll(nats.url);
  const env = { NATS_URL: nats.url, REDIS_URL: redis.url, VMSAVE_LOG_LEVEL: 'info', VMSAVE_METRICS_PORT: '0', VMSAVE_REDIS_PREFIX: 'bench' };
  const full: number[] = [];
  const snap: number[] = [];
  for (let r = 0; r < REPS; r++) {
    if (!args['no-full'])
      try {
        const a = await timedStart({ ...env, VMSAVE_SNAPSHOT_EVERY: '0' }, 'full');
        await stop(a.proc);
        full.push(a.ms);
        say(`full replay   #${r + 1}: serving after ${(a.ms / 1000).toFixed(2)} s (jobs ${a.rebuilt.jobs}, replayed ${a.rebuilt.replayed})`);
      } catch (err) {
        say(`full replay   #${r + 1}: did not start: ${(err as Error).message.split('\n').slice(-3).join(' | ')}`);
      }
    // Snapshots on: this start replays whatever the last snapshot did not cover, its clean stop writes one.
    const w = await timedStart(env, 'write');
    say(
      `writing start #${r + 1}: serving after ${(w.ms / 1000).toFixed(2)} s (snapshot seq ${w.rebuilt.snapshotSeq}, replayed ${w.rebuilt.replayed}; load average ${os.loadavg()[0]!.toFixed(1)})`,
    );
    await stop(w.proc, 120_000);
    const written = readFileSync(w.proc.logFile, 'utf8')
      .split('\n')
      .filter((l) => l.includes('state snapshot written'))
      .pop();
    const b = await timedStart(env, 'snap');
    await stop(b.proc, 120_000);
    snap.push(b.ms);
    const wr = written ? (JSON.parse(written) as Record<string, number>) : {};
    say(
      `from snapshot #${r + 1}: serving after ${(b.ms / 1000).toFixed(2)} s (snapshot seq ${b.rebuilt.snapshotSeq}, replayed ${b.rebuilt.replayed}; snapshot ${((wr.bytes ?? 0) / 2 ** 20).toFixed(1)} MiB, captured in ${wr.capturedMs} ms, written in ${wr.totalMs} ms)`,
    );
  }
  say(
    full.length
      ? `\nmedian start to "scheduler running", ${EVENTS} events: full replay ${(median(full) / 1000).toFixed(2)} s, from snapshot ${(median(snap) / 1000).toFixed(2)} s (ratio ${(median(full) / median(snap)).toFixed(1)}x)`
      : `\nmedian start to "scheduler running", ${EVENTS} events, from snapshot: ${(median(snap) / 1000).toFixed(2)} s (load average ${os.loadavg()[0]!.toFixed(1)})`,
  );
} finally {
  await stopAll();
  if (!args.keep) rmSync(dir, { recursive: true, force: true });
  else say(`kept ${dir}`);
}
