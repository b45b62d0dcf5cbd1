/**
 * The scheduler's wiring: configuration, connections, the parts and the reads that feed them.
 *
 *   leadership  one active scheduler per deployment (a Redis lease); a second one stands by
 *   journal     event intake and job state: decide, append, fold the log, retries
 *   admission   commands on `vmsave.cmd.*`, answered on `Vmsave-Reply-To`
 *   placement   which host, and handing out work within limits (`policy.ts`'s `pickNext`)
 *   watchdog    heartbeats, lost executors, deadlines, overdue verdicts
 *
 * All state is folded from the event log (plus host announcements and heartbeats), so a
 * restarted scheduler resumes where the log says; changes that await I/O run through `state.serial`,
 * admission folds its stored events in arrival order (`admission.ts`).
 */
import { z } from 'zod';
import { messages, streams, subjects } from '@vmsave/contracts';
import { Bus, busOptions, createLogger, readHosts, readLog, runConsumer, subscribeValidated } from '@vmsave/bus';
import { ON_HOST_STATUSES } from '@vmsave/jobs';
import { ServiceMetrics } from '@vmsave/metrics';
import { connectRedis, Leases } from '@vmsave/store';
import { Admission } from './admission.ts';
import { Drains } from './drain.ts';
import { loadConfig } from './config.ts';
import { Journal, SOURCE } from './journal.ts';
import { Leadership } from './leadership.ts';
import { registerSchedulerMetrics, schedulerStateSource } from './metrics.ts';
import { Placement } from './placement.ts';
import { Snapshots } from './snapshot.ts';
import { SchedulerState } from './state.ts';
import { Watchdog } from './watchdog.ts';

const log = createLogger('scheduler');
const cfg = loadConfig();
const metrics = new ServiceMetrics('scheduler');
const bus = await Bus.connect({ ...busOptions(cfg, 'scheduler'), log, metrics: metrics.bus });
await bus.ensureStreams();
const redis = await connectRedis(cfg.REDIS_URL, { name: 'scheduler' });
const leases = new Leases(redis, cfg.VMSAVE_REDIS_PREFIX);
const ac = new AbortController();
const signal = ac.signal;
const tasks: Promise<unknown>[] = [];

let stopping = false;
let leadership: Leadership | undefined;
let snapshots: Snapshots | undefined;
const state = new SchedulerState();
const schedulerMetrics = registerSchedulerMetrics(metrics, schedulerStateSource(state));
// A standby scheduler serves /metrics too (its gauges stay 0 until it becomes the active one).
await metrics.serve(cfg, log);
async function shutdown(why: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal: why }, 'scheduler stopping');
  // Reverse order of start: stop consuming and following, let queued changes finish, give up
  // the lease, then drain the bus, then Redis.
  ac.abort();
  await Promise.allSettled(tasks);
  await state.settled();
  // While still the active one: the next scheduler starts from here.
  await snapshots?.final().catch((err) => log.warn({ err: (err as Error).message }, 'snapshot at stop failed'));
  await leadership?.release();
  await bus.close();
  redis.disconnect();
  await metrics.close();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));

const id = `scheduler-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
leadership = await Leadership.acquire(leases, { id, ttlMs: cfg.VMSAVE_LEASE_TTL_MS, log, signal, onLost: () => void shutdown('lost-leadership') });
if (!leadership) await new Promise(() => undefined); // stopped while standing by: shutdown exits

// The parts call each other only through these: `wake` asks for a placement pass.
const wake = () => placement.requestPump();
const journal = new Journal({ bus, state, leases, cfg, log, wake });
const placement = new Placement({ bus, state, journal, leases, cfg, log, signal });
const watchdog = new Watchdog({ bus, state, journal, leases, cfg, log, wake });
const admission = new Admission({ bus, state, journal, placement, log });
// Host drains: their own read of the log; they ask saves and restores as ordinary commands.
const drains = new Drains({ bus, log, signal });
tasks.push(drains.run().catch((err) => log.error({ err }, 'drains stopped')));

state.startedAtMs = Date.now();
snapshots = new Snapshots({
  bus,
  redis,
  state,
  log,
  prefix: cfg.VMSAVE_REDIS_PREFIX,
  every: cfg.VMSAVE_SNAPSHOT_EVERY,
  intervalMs: cfg.VMSAVE_SNAPSHOT_INTERVAL_MS,
});
const snapshotSeq = cfg.VMSAVE_SNAPSHOT_EVERY === 0 ? 0 : await snapshots.load();
const lastSeq = await journal.rebuild(snapshotSeq + 1);
state.logSeq = lastSeq;
await placement.rebuildHosts();
const active = [...state.openJobs()].filter((j) => j.status !== 'none' && ON_HOST_STATUSES.has(j.status)).length;
log.info({ jobs: state.jobs.size, active, hosts: state.hosts.size, lastSeq, snapshotSeq, replayed: lastSeq - snapshotSeq }, 'scheduler rebuilt its view from the log');

/** A log line for a following read reopened after NATS went away. */
const resumed = (what: string) => (err: unknown, attempt: number) => log.warn({ err: (err as Error)?.message ?? String(err), attempt }, `${what}: read reopened`);

const off = bus.onReconnect(() => watchdog.onReconnect());
signal.addEventListener('abort', off, { once: true });
const heartbeats = subscribeValidated(bus, messages.heartbeat, subjects.heartbeatAll, {
  signal,
  onInvalid: (err, subject) => log.warn({ err: err.message, subject }, 'invalid heartbeat ignored'),
});
tasks.push(
  (async () => {
    for await (const { value } of heartbeats) watchdog.onHeartbeat(value);
  })(),
  (async () => {
    for await (const a of readHosts(bus, { follow: true, signal, onResume: resumed('host announcements') })) placement.onAnnouncement(a);
  })(),
  (async () => {
    for await (const { seq, event } of readLog(bus, { fromSeq: lastSeq + 1, follow: true, signal, onResume: resumed('event log') })) {
      // Our own events come back through the log; they were applied when appended.
      if (state.own.delete(event.eventId)) {
        if (seq > state.logSeq) state.logSeq = seq;
        continue;
      }
      // Queued, not awaited: the follower keeps reading while earlier events are applied in order.
      state.pendingLogEvents++;
      void state
        .serial(async () => {
          try {
            await journal.onLogEvent(event);
          } finally {
            // Folded even when its reaction failed.
            if (seq > state.logSeq) state.logSeq = seq;
          }
        })
        .finally(() => {
          state.pendingLogEvents--;
          snapshots?.maybe();
        })
        .catch((err) => log.error({ err, jobId: event.jobId }, 'applying a log event failed'));
    }
  })(),
  runConsumer(bus, {
    stream: streams.commands.name,
    durable: 'scheduler',
    filterSubject: subjects.cmd.all,
    schema: z.unknown(),
    service: SOURCE,
    log,
    signal,
    // Pipelined admission: many commands in flight, each folded in arrival order once stored (admission.ts).
    concurrency: cfg.VMSAVE_ADMISSION_WINDOW,
    // Drain requests and cancels of a drain (`d-…`) go to the drains (drain.ts), the rest to admission.
    handler: (raw, ctx) => (Drains.owns(raw, ctx.subject) ? drains.handle(raw, ctx) : schedulerMetrics.timeAdmission(() => admission.handle(raw, ctx))),
    onInvalid: (err, ctx) => admission.refuseUnreadable(err, ctx),
  }),
);
const tick = setInterval(() => {
  void state.serial(() => watchdog.tick()).catch((err) => log.error({ err }, 'tick failed'));
  snapshots?.maybe();
}, cfg.VMSAVE_TICK_MS);
signal.addEventListener('abort', () => clearInterval(tick), { once: true });
await state.serial(() => placement.pump());
log.info({ nats: cfg.NATS_URL, hostLimit: cfg.VMSAVE_HOST_LIMIT }, 'scheduler running');
