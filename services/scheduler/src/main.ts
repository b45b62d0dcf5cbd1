/**
 * The scheduler's wiring: configuration, connections, the parts and the reads that feed them.
 *
 *   ownership   the 16 VM partitions shared among the active schedulers (Redis leases), and `_global`
 *   journal     event intake and job state: decide, append, fold the log, retries
 *   admission   commands on `vmsave.cmd.<kind>.<NN>` (owned partitions) and the bare `vmsave.cmd.*`
 *               (the `_global` holder: drains, or forwarded to the partition, `routing.ts`)
 *   placement   which host, and handing out work within limits (`policy.ts`'s `pickNext`)
 *   watchdog    heartbeats, lost executors, deadlines, overdue verdicts
 *
 * All state is folded from the event log (plus host announcements and heartbeats), so a
 * restarted scheduler resumes where the log says; changes that await I/O run through `state.serial`,
 * admission folds its stored events in arrival order (`admission.ts`).
 */
import { setMaxListeners } from 'node:events';
import { z } from 'zod';
import { commandFilters, messages, partitionToken, streams, subjects } from '@vmsave/contracts';
import { Bus, busOptions, createLogger, nak, readHosts, readLog, runConsumer, subscribeValidated, type MessageContext, type Outcome } from '@vmsave/bus';
import { ON_HOST_STATUSES } from '@vmsave/jobs';
import { ServiceMetrics } from '@vmsave/metrics';
import { connectRedis, Leases } from '@vmsave/store';
import { Admission } from './admission.ts';
import { Drains } from './drain.ts';
import { loadConfig } from './config.ts';
import { Journal, SOURCE } from './journal.ts';
import { Ownership } from './ownership.ts';
import { Forwarder, routeOf } from './routing.ts';
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
// The ownership rounds' own connection: a partition renewal must not queue behind a burst of
// dispatch scripts on the shared one (a late renewal lapses the partition; docs/scheduler.md).
const ownershipRedis = await connectRedis(cfg.REDIS_URL, { name: 'scheduler-ownership' });
const ac = new AbortController();
const signal = ac.signal;
// One listener per command consumer (16 partitions and the global one) plus the followers: more
// than Node's default of 10, which would print a (false) memory-leak warning at every start.
setMaxListeners(64, signal);
const tasks: Promise<unknown>[] = [];

let stopping = false;
let ownership: Ownership | undefined;
let snapshots: Snapshots | undefined;
const state = new SchedulerState();
const schedulerMetrics = registerSchedulerMetrics(metrics, schedulerStateSource(state));
metrics.gauge('ownedPartitions', function () {
  this.set(ownership?.owned().length ?? 0);
});
await metrics.serve(cfg, log);
/** Running command consumers: one per owned partition (`p07`), and `global` for the bare subjects. */
const consumers = new Map<string, { ac: AbortController; done: Promise<void> }>();
/** Every consumer still running, stopping ones included (a stop waits for them). */
const consumerRuns = new Set<Promise<void>>();
async function shutdown(why: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal: why }, 'scheduler stopping');
  // Reverse order of start: stop consuming and following, let queued changes finish, give up
  // the leases, then drain the bus, then Redis.
  ac.abort();
  await Promise.allSettled([...tasks, ...consumerRuns]);
  await state.settled();
  // While still the global holder: the next scheduler starts from here.
  if (ownership?.ownsGlobal()) await snapshots?.final().catch((err) => log.warn({ err: (err as Error).message }, 'snapshot at stop failed'));
  await ownership?.release();
  await bus.close();
  ownershipRedis.disconnect();
  redis.disconnect();
  await metrics.close();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));

const id = cfg.VMSAVE_SCHEDULER_ID ?? `scheduler-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

// The parts call each other only through these: `wake` asks for a placement pass.
const wake = () => placement.requestPump();
const journal = new Journal({ bus, state, leases, cfg, log, wake });
const placement = new Placement({ bus, state, journal, leases, cfg, log, signal });
const watchdog = new Watchdog({ bus, state, journal, leases, cfg, log, wake, limitOf: placement.limitOf });
const admission = new Admission({ bus, state, journal, placement, log });
const forwarder = new Forwarder(bus, log);
/** Host drains: only on the `_global` holder (their own read of the log; they ask saves and restores as ordinary commands). */
let drains: Drains | undefined;
let drainsAc: AbortController | undefined;

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
// Nothing is owned until the ownership rounds say so: the rebuild only folds.
state.owns = () => false;
state.holds = () => false;
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
      // Other schedulers' jobs are folded only (journal.apply reacts to owned jobs alone).
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
          if (ownership?.ownsGlobal()) snapshots?.maybe();
        })
        .catch((err) => log.error({ err, jobId: event.jobId }, 'applying a log event failed'));
    }
  })(),
);

/** Start one command consumer (`scheduler-<name>`); stopped with `stopConsumer`. */
function startConsumer(name: string, filterSubject: string, handler: (raw: unknown, ctx: MessageContext) => Promise<Outcome>): void {
  if (consumers.has(name) || signal.aborted) return;
  const cac = new AbortController();
  const stop = () => cac.abort();
  signal.addEventListener('abort', stop, { once: true });
  const done = runConsumer(bus, {
    stream: streams.commands.name,
    durable: `scheduler-${name}`,
    filterSubject,
    schema: z.unknown(),
    service: SOURCE,
    log,
    signal: cac.signal,
    // Pipelined admission: many commands in flight, each folded in arrival order once stored (admission.ts).
    concurrency: cfg.VMSAVE_ADMISSION_WINDOW,
    handler,
    onInvalid: (err, ctx) => admission.refuseUnreadable(err, ctx),
  })
    .catch((err) => log.error({ err, consumer: name }, 'command consumer stopped'))
    .finally(() => {
      signal.removeEventListener('abort', stop);
      consumerRuns.delete(done);
    });
  consumerRuns.add(done);
  consumers.set(name, { ac: cac, done });
}

/** Stop a consumer and wait for its in-flight commands (their admissions finish and are acked). */
async function stopConsumer(name: string): Promise<void> {
  const c = consumers.get(name);
  if (!c) return;
  // Out of the map at once: taking it again meanwhile starts a new one on the same durable.
  consumers.delete(name);
  c.ac.abort();
  await c.done;
}

const admit = (raw: unknown, ctx: MessageContext) => schedulerMetrics.timeAdmission(() => admission.handle(raw, ctx));

/**
 * A partition's commands: admitted here; a cancel of a job of another partition (or of a drain)
 * goes where that job is handled. While the partition's lease lapsed (held, not valid), a
 * command waits (no ack, no admission) until it is valid again; once its loss is confirmed it is
 * nak'd at once, so JetStream delivers it again before newer ones (per-VM order is kept).
 */
function onPartitionCommand(partition: number) {
  return async (raw: unknown, ctx: MessageContext): Promise<Outcome> => {
    if (!ownership!.owns(partition) && !(await ownership!.whenActing(partition))) return nak(0);
    const route = routeOf(raw, ctx.subject, state);
    if (ctx.subject.startsWith(`${subjects.cmd.cancel}.`) && route !== 'here' && (route === 'bare' || route.partition !== partition)) {
      const f = forwarder.forward(raw, ctx, route === 'bare' ? 'bare' : route.partition);
      if (f) return f;
    }
    return admit(raw, ctx);
  };
}

/** The bare subjects (old clients, drains): drains handled here; a command of an owned partition admitted here, others forwarded to their partition. */
async function onBareCommand(raw: unknown, ctx: MessageContext): Promise<Outcome> {
  if (Drains.owns(raw, ctx.subject)) return drains ? drains.handle(raw, ctx) : nak(1000);
  const route = routeOf(raw, ctx.subject, state);
  if (route !== 'here' && route !== 'bare' && !ownership!.owns(route.partition)) {
    const f = forwarder.forward(raw, ctx, route.partition);
    if (f) return f;
  }
  return admit(raw, ctx);
}

/** The log folded up to the events stream's last sequence now (a taken partition's previous owner's events included). */
async function catchUp(): Promise<void> {
  const target = (await bus.jsm.streams.info(streams.events.name)).state.last_seq;
  while (!signal.aborted && (state.logSeq < target || state.pendingLogEvents > 0)) await new Promise((r) => setTimeout(r, 10));
  await state.settled();
}

/**
 * Act on partitions taken (or resumed after a lapse): queue their requested jobs, check their
 * on-host jobs soon, release the leases of their jobs that ended while not acted on here, and
 * retry their failed jobs that no `Retry` followed.
 */
async function adoptPartitions(ps: number[]): Promise<void> {
  const gained = new Set(ps);
  await state.serial(async () => {
    const retries = state.adopt(gained, Date.now());
    journal.releaseEndedElsewhere(gained);
    for (const jobId of retries) await journal.retry(state.jobs.get(jobId)!);
  });
}

// The old single durable (`scheduler`, filter `vmsave.cmd.>`) overlaps every new one, which a
// work-queue stream refuses: delete it (its unacked commands stay in the stream for the new ones).
try {
  await bus.jsm.consumers.info(streams.commands.name, 'scheduler');
  await bus.jsm.consumers.delete(streams.commands.name, 'scheduler');
  log.info({ stream: streams.commands.name, durable: 'scheduler' }, 'deleted the old single command consumer (now one per partition and scheduler-global)');
} catch {
  // Not there: nothing to do.
}

ownership = new Ownership({
  leases: new Leases(ownershipRedis, cfg.VMSAVE_REDIS_PREFIX),
  redis: ownershipRedis,
  prefix: cfg.VMSAVE_REDIS_PREFIX,
  id,
  ttlMs: cfg.VMSAVE_PARTITION_TTL_MS,
  log,
  signal,
  catchUp,
  onGain: async (ps) => {
    await adoptPartitions(ps);
    for (const p of ps) startConsumer(`p${partitionToken(p)}`, commandFilters.ofPartition(p), onPartitionCommand(p));
    wake();
  },
  onLose: async (ps) => {
    // Already not held (`holds` is false; waiting commands nak'd): drop their queued jobs, then stop their consumers.
    state.disown(new Set(ps));
    await Promise.all(ps.map((p) => stopConsumer(`p${partitionToken(p)}`)));
  },
  onGlobal: async (held) => {
    if (held) {
      drainsAc = new AbortController();
      const dsignal = AbortSignal.any([signal, drainsAc.signal]);
      drains = new Drains({ bus, log, signal: dsignal });
      const d = drains;
      tasks.push(d.run().catch((err) => log.error({ err }, 'drains stopped')));
      startConsumer('global', commandFilters.bare, onBareCommand);
    } else {
      // Synchronously first: a take that comes while the consumer stops must keep its new drains.
      drainsAc?.abort();
      drains = undefined;
      await stopConsumer('global');
    }
  },
  onChange: (owned) => {
    log.info({ id, partitions: owned, count: owned.length }, 'partitions owned');
  },
  // A lapse renewed in time: what ended or failed meanwhile was not acted on (its lease release,
  // its retry, watchdog checks consumed): adopt them again (their queued jobs keep their place).
  onResume: (ps) => {
    void adoptPartitions(ps)
      .then(wake)
      .catch((err) => log.error({ err, partitions: ps }, 'resuming lapsed partitions failed'));
  },
});
// Ownership decides from here on (a partition's jobs are queued once it is caught up and held,
// and acted on while its lease is valid).
state.owns = (p) => ownership!.owns(p);
state.holds = (p) => ownership!.holds(p);
await ownership.start();

const tick = setInterval(() => {
  void state.serial(() => watchdog.tick()).catch((err) => log.error({ err }, 'tick failed'));
  if (ownership?.ownsGlobal()) snapshots?.maybe();
}, cfg.VMSAVE_TICK_MS);
signal.addEventListener('abort', () => clearInterval(tick), { once: true });
// The first round's partitions are taken; wait for them to be caught up and acted on before saying so.
for (let i = 0; i < 500 && !signal.aborted && ownership.owned().length === 0; i++) await new Promise((r) => setTimeout(r, 10));
await state.serial(() => placement.pump());
log.info({ id, nats: cfg.NATS_URL, hostLimit: cfg.VMSAVE_HOST_LIMIT, partitions: ownership.owned() }, 'scheduler running');
