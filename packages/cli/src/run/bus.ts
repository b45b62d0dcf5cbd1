/** What the bus commands do (their options: `../commands/bus.ts`). Loaded only when one runs. */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { messages, RestoreRequest, SaveRequest, streams, subjects, type AdmissionReply, type JobEvent, type ProgressSample } from '@vmsave/contracts';
import { readHosts, readLog, subscribeValidated } from '@vmsave/bus';
import { describeEvent, describeState, fmtBytes, foldView, jobJson, JOB_STATUSES, type JobState } from '@vmsave/jobs';
import { connectRedis, Projection, queryJobs, RedisConnectError, type JobQuery } from '@vmsave/store';
import { bool, int, oneOf, str, type Values } from '../options.ts';
import { withTimeout, type Ctx } from '../context.ts';
import { CliError, EXIT, JobFailedError, RejectedError, UnreachableError, UsageError } from '../errors.ts';
import { table } from '../terminal.ts';

function zodLine(issues: { path: PropertyKey[]; message: string }[]): string {
  return issues.map((i) => `${i.path.length ? `${i.path.map(String).join('.')}: ` : ''}${i.message}`).join('; ');
}

/** Admission: a rejection is exit 3, no answer is exit 5. */
function admitted(kind: string, a: AdmissionReply | undefined): void {
  if (!a) throw new UnreachableError(`no admission answer for the ${kind} request: is the scheduler running?`);
  if (a.outcome === 'rejected') throw new RejectedError(`${kind} rejected (${a.rule}): ${a.message}`, a.rule);
}

/** Follow a job until it is over, drawing progress; exit code from its final state. */
export async function follow(ctx: Ctx, jobId: string, kind: 'save' | 'restore', timeoutMs?: number): Promise<JobState> {
  const client = await ctx.client();
  const bar = ctx.bar();
  const tty = ctx.tty;
  const state = await client.waitForJob(jobId, {
    timeoutMs,
    signal: ctx.signal,
    onEvent: (e) => {
      if (!ctx.json) ctx.note(`  ${e.type.padEnd(16)} ${describeEvent(e)}`);
    },
    onProgress: tty
      ? (p: ProgressSample) => bar.update({ label: `${kind} ${p.stage}`, totalBytes: p.totalBytes, doneBytes: p.transferredBytes, bytesPerSec: p.bytesPerSec, etaMs: p.etaMs })
      : undefined,
  });
  bar.clear();
  return state;
}

export function exitFor(s: JobState): void {
  if (s.status === 'rejected') throw new RejectedError(describeState(s), s.rejection?.rule);
  if (s.status === 'failed' || s.status === 'cancelled') throw new JobFailedError(describeState(s));
}

export async function save(ctx: Ctx, v: Values): Promise<number> {
  if (str(v, 'qmp') !== undefined || str(v, 'out') !== undefined) return (await import('../commands/offline.ts')).offlineSave(ctx, v);
  const vm = str(v, 'vm');
  if (!vm) throw new UsageError('save: give --vm NAME (or --qmp SOCKET --out FILE for a local save)');
  const channels = int(v, 'channels', { min: 1, max: 64 });
  const format = oneOf(v, 'format', ['legacy', 'sparse', 'auto'] as const);
  const after = oneOf(v, 'after', ['quit', 'paused', 'running'] as const);
  const priority = oneOf(v, 'priority', ['high', 'normal', 'low'] as const);
  const deadline = int(v, 'deadline', { min: 1, max: 24 * 3600 });
  const replicate = oneOf(v, 'replicate', ['bus', 'none'] as const);
  const req = SaveRequest.safeParse({
    requestId: str(v, 'request-id') ?? `cli-${randomUUID()}`,
    vm,
    format,
    channels,
    directIo: bool(v, 'direct-io') || undefined,
    after,
    priority,
    image: str(v, 'image'),
    deadlineMs: deadline === undefined ? undefined : deadline * 1000,
    replicate,
    requestedBy: `vmsave-cli@${process.env.USER ?? 'unknown'}`,
  });
  if (!req.success) throw new UsageError(`save: ${zodLine(req.error.issues)}`);
  const client = await ctx.client();
  const r = await client.save(req.data, { admissionTimeoutMs: ctx.cfg.VMSAVE_ADMISSION_TIMEOUT_MS });
  admitted('save', r.admission);
  return finishSubmitted(ctx, v, r.jobId, req.data.requestId, r.duplicate, 'save');
}

async function finishSubmitted(ctx: Ctx, v: Values, jobId: string, requestId: string, duplicate: boolean, kind: 'save' | 'restore'): Promise<number> {
  if (!bool(v, 'wait')) {
    ctx.emit({ outcome: 'accepted', jobId, requestId, duplicate });
    ctx.say(jobId);
    return EXIT.ok;
  }
  ctx.note(`${kind} job ${jobId} accepted${duplicate ? ' (duplicate request: the existing job)' : ''}`);
  const s = await follow(ctx, jobId, kind);
  ctx.emit({ outcome: 'accepted', jobId, requestId, duplicate, job: jobJson(s) });
  ctx.say(describeState(s));
  exitFor(s);
  return EXIT.ok;
}

export async function restore(ctx: Ctx, v: Values, [image]: string[]): Promise<number> {
  if (bool(v, 'local') || str(v, 'qmp-dir') !== undefined || (str(v, 'host') === undefined && !bool(v, 'wait') && (await isLocalOutsideImageDir(ctx, image!)))) {
    return (await import('../commands/offline.ts')).offlineRestore(ctx, v, image!);
  }
  const after = oneOf(v, 'after', ['running', 'paused', 'as-saved'] as const);
  const verify = oneOf(v, 'verify', ['state', 'full'] as const);
  const priority = oneOf(v, 'priority', ['high', 'normal', 'low'] as const);
  const req = RestoreRequest.safeParse({
    requestId: str(v, 'request-id') ?? `cli-${randomUUID()}`,
    image,
    host: str(v, 'host'),
    after,
    verify,
    priority,
    requestedBy: `vmsave-cli@${process.env.USER ?? 'unknown'}`,
  });
  if (!req.success) throw new UsageError(`restore: ${zodLine(req.error.issues)}`);
  const client = await ctx.client();
  const r = await client.restore(req.data, { admissionTimeoutMs: ctx.cfg.VMSAVE_ADMISSION_TIMEOUT_MS });
  admitted('restore', r.admission);
  return finishSubmitted(ctx, v, r.jobId, req.data.requestId, r.duplicate, 'restore');
}

async function isLocalOutsideImageDir(ctx: Ctx, file: string): Promise<boolean> {
  if (!existsSync(file)) return false;
  try {
    const { localConfig } = await import('../local.ts');
    const rel = path.relative(localConfig(ctx.env).imageDir, path.resolve(file));
    return rel.startsWith('..') || path.isAbsolute(rel);
  } catch {
    return true;
  }
}

export async function cancel(ctx: Ctx, v: Values, [jobId]: string[]): Promise<number> {
  const client = await ctx.client();
  const a = await client.cancel(
    { requestId: `cli-${randomUUID()}`, jobId: jobId!, reason: str(v, 'reason') ?? `cancelled by ${process.env.USER ?? 'operator'} (vmsave cancel)` },
    { admissionTimeoutMs: ctx.cfg.VMSAVE_ADMISSION_TIMEOUT_MS },
  );
  admitted('cancel', a);
  ctx.emit({ outcome: 'accepted', jobId });
  ctx.say(`cancel of ${jobId} accepted`);
  return EXIT.ok;
}

/** What `vmsave jobs --kind` accepts. */
const JOB_KINDS: readonly string[] = ['save', 'restore', 'drain'];

/**
 * One page of jobs: from the Redis read model's indexes when it is current (the dashboard's
 * query, `queryJobs`), else folded from the log.
 */
async function pageOfJobs(ctx: Ctx, q: JobQuery): Promise<{ jobs: JobState[]; total: number; source: 'redis' | 'log' }> {
  const bus = await ctx.bus();
  const lastSeq = (await bus.jsm.streams.info(streams.events.name)).state.last_seq;
  const fromRedis = await withTimeout(
    (async () => {
      const redis = await connectRedis(ctx.cfg.REDIS_URL, { name: 'vmsave-cli' });
      try {
        const p = new Projection(redis, ctx.cfg.VMSAVE_REDIS_PREFIX);
        if ((await p.appliedSeq()) < lastSeq) return undefined;
        // Read models written before the state indexes existed: the projector builds them when it starts.
        if ((await redis.get(p.k.indexVersion)) === null && (await redis.zcard(p.k.jobsAll)) > 0) return undefined;
        return await queryJobs(redis, ctx.cfg.VMSAVE_REDIS_PREFIX, q);
      } finally {
        redis.disconnect();
      }
    })(),
    3000,
    'redis',
  ).catch((err) => {
    // A Redis that refuses our credentials is a configuration error, not a reason to fall back silently.
    if (err instanceof RedisConnectError && err.code === 'auth') throw new CliError(`REDIS_URL: ${err.message}`, EXIT.error, { cause: err });
    return undefined;
  });
  if (fromRedis) return { jobs: fromRedis.items, total: fromRedis.total, source: 'redis' };
  const byId = new Map<string, JobState>();
  for await (const { event } of readLog(bus)) byId.set(event.jobId, foldView([event], byId.get(event.jobId)));
  const all = [...byId.values()]
    .filter((j) => (!q.vm || j.vm === q.vm) && (!q.host || j.host === q.host) && (!q.kind || j.kind === q.kind) && (!q.states?.length || q.states.includes(j.status)))
    .sort((a, b) => (b.requestedAt ?? b.updatedAt ?? '').localeCompare(a.requestedAt ?? a.updatedAt ?? ''));
  return { jobs: all.slice(0, q.limit), total: all.length, source: 'log' };
}

export async function jobs(ctx: Ctx, v: Values): Promise<number> {
  const states = str(v, 'state')
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const s of states ?? []) if (!(JOB_STATUSES as readonly string[]).includes(s)) throw new UsageError(`--state must be among ${JOB_STATUSES.join(', ')}, got "${s}"`);
  const limit = int(v, 'limit', { min: 1, max: 100_000 }) ?? 20;
  const kind = str(v, 'kind');
  if (kind !== undefined && !JOB_KINDS.includes(kind)) throw new UsageError(`--kind must be among ${JOB_KINDS.join(', ')}, got "${kind}"`);
  const { jobs: shown, total, source } = await pageOfJobs(ctx, { states, vm: str(v, 'vm'), host: str(v, 'host'), kind, limit });
  ctx.emit({ source, total, jobs: shown.map(jobJson) });
  if (!ctx.json) {
    ctx.stdout.write(
      table(
        ['job', 'kind', 'vm', 'state', 'host', 'format', 'size', 'took s', 'requested'],
        shown.map((j) => [
          j.jobId ?? '',
          j.kind ?? '',
          j.vm ?? '',
          j.status,
          j.host ?? '',
          j.format ?? '',
          j.result?.bytes !== undefined ? fmtBytes(j.result.bytes) : '',
          j.result ? (j.result.durationMs / 1000).toFixed(2) : '',
          j.requestedAt ?? '',
        ]),
      ),
    );
  }
  return EXIT.ok;
}

export async function job(ctx: Ctx, _v: Values, [jobId]: string[]): Promise<number> {
  const client = await ctx.client();
  let events: JobEvent[];
  try {
    events = await client.history(jobId!);
  } catch (err) {
    if (err instanceof TypeError) throw new UsageError(`job: ${err.message}`);
    throw err;
  }
  // A history that does not start with the request lost its first events to the log's retention
  // (VMSAVE_EVENT_MAX_AGE): the read model keeps the job's view (docs/operations.md).
  const whole = events[0] !== undefined && ['SaveRequested', 'RestoreRequested', 'DrainRequested'].includes(events[0].type);
  const { withReadModel } = whole ? { withReadModel: undefined } : await import('./images.ts');
  const kept = withReadModel ? await withReadModel(ctx, (p) => p.job(jobId!)) : undefined;
  if (events.length === 0 && !kept) throw new CliError(`no job ${jobId} in the event log`);
  if (kept) ctx.note(`job ${jobId}: its first events aged out of the event log (VMSAVE_EVENT_MAX_AGE); its state is the read model's`);
  // `foldView`: a drain's history folds into its drain row (kind, state, VMs and child jobs).
  const s = kept ?? foldView(events);
  ctx.emit({ job: jobJson(s), events, source: kept ? 'read-model' : 'log' });
  if (!ctx.json) {
    ctx.stdout.write(
      table(
        ['at', 'event', 'source', 'detail'],
        events.map((e) => [e.at, e.type, e.source, describeEvent(e)]),
      ),
    );
    ctx.say(describeState(s));
    for (const c of s.checks ?? []) ctx.say(`  ${c.status.padEnd(4)} ${c.name}: ${c.detail}`);
  }
  return EXIT.ok;
}

export async function watch(ctx: Ctx, v: Values): Promise<number> {
  const bus = await ctx.bus();
  const job = str(v, 'job');
  const count = int(v, 'count', { min: 1, max: 1e9 });
  let filter: string;
  try {
    filter = job ? subjects.evtOfJob(job) : subjects.evtAll;
  } catch (err) {
    throw new UsageError(`watch: ${(err as Error).message}`);
  }
  const fromSeq = bool(v, 'from-start') ? 1 : (await bus.jsm.streams.info(streams.events.name)).state.last_seq + 1;
  const stop = () => ctx.ac.abort();
  process.once('SIGINT', stop);
  ctx.cleanups.push(() => {
    process.off('SIGINT', stop);
  });
  if (bool(v, 'progress')) {
    // A bad sample is skipped by subscribeValidated; the subscription ends with the command.
    const sub = subscribeValidated(bus, messages.progress, job ? subjects.progress(job) : subjects.progressAll, { signal: ctx.signal });
    ctx.cleanups.push(() => sub.unsubscribe());
    void (async () => {
      for await (const { value: p } of sub) {
        if (ctx.json) ctx.emit({ progress: p });
        else ctx.say(`${p.at.slice(11, 19)}  ${p.jobId}  progress         ${p.stage}:${p.status} ${fmtBytes(p.transferredBytes)}/${fmtBytes(p.totalBytes)}`);
      }
    })().catch(() => undefined);
  }
  if (!ctx.json) ctx.note(`watching ${job ? `job ${job}` : 'every job'} (Ctrl-C to stop)`);
  let n = 0;
  for await (const { seq, event } of readLog(bus, { filter, fromSeq, follow: true, signal: ctx.signal })) {
    if (ctx.json) ctx.emit({ seq, event });
    else ctx.say(`${event.at.slice(11, 19)}  ${event.jobId}  ${event.type.padEnd(16)} ${describeEvent(event)}`);
    if (count !== undefined && ++n >= count) break;
  }
  return EXIT.ok;
}

export async function hosts(ctx: Ctx): Promise<number> {
  const bus = await ctx.bus();
  const list = [];
  for await (const a of readHosts(bus)) list.push(a);
  list.sort((a, b) => a.host.localeCompare(b.host));
  ctx.emit({ hosts: list });
  if (!ctx.json) {
    const now = Date.now();
    ctx.stdout.write(
      table(
        ['host', 'seen s ago', 'qemu', 'accel', 'sparse', 'direct-io', 'free', 'vms'],
        list.map((h) => [
          h.host,
          String(Math.round((now - Date.parse(h.at)) / 1000)),
          h.qemu.version,
          h.qemu.accel,
          h.qemu.mappedRam ? 'yes' : 'no',
          h.qemu.directIo ? 'yes' : 'no',
          fmtBytes(h.freeBytes),
          h.vms.map((x) => `${x.name}:${x.status}`).join(' ') || '-',
        ]),
        { right: [1] },
      ),
    );
  }
  return EXIT.ok;
}
