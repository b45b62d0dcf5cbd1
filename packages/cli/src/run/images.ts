/** What the image lifecycle commands do (their options: `../commands/images.ts`). Loaded only when one runs. */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { messages, streams, subjects, type ControlReply } from '@vmsave/contracts';
import { BusRequestTimeout, readLog, requestValidated } from '@vmsave/bus';
import { evolve, fmtBytes, fmtElapsed, imagesOf, initialState, parseDurationMs, type JobState } from '@vmsave/jobs';
import { connectRedis, Projection, RedisConnectError } from '@vmsave/store';
import { bool, int, str, type Values } from '../options.ts';
import { withTimeout, type Ctx } from '../context.ts';
import { CliError, EXIT, UnreachableError, UsageError } from '../errors.ts';
import { table } from '../terminal.ts';

/** How long `images prune` waits for the executor's answer (it reads the whole log first). */
const PRUNE_TIMEOUT_MS = 120_000;

type RedisClient = Awaited<ReturnType<typeof connectRedis>>;

/**
 * Run `fn` on the Redis read models (the dashboard's projection, `VMSAVE_REDIS_PREFIX`):
 * undefined when Redis does not answer within 3 s (the caller falls back on the log); Redis
 * refusing our credentials is a configuration error.
 */
export async function withReadModel<T>(ctx: Ctx, fn: (p: Projection, redis: RedisClient) => Promise<T | undefined>): Promise<T | undefined> {
  return withTimeout(
    (async () => {
      const redis = await connectRedis(ctx.cfg.REDIS_URL, { name: 'vmsave-cli' });
      try {
        return await fn(new Projection(redis, ctx.cfg.VMSAVE_REDIS_PREFIX), redis);
      } finally {
        redis.disconnect();
      }
    })(),
    3000,
    'redis',
  ).catch((err) => {
    if (err instanceof RedisConnectError && err.code === 'auth') throw new CliError(`REDIS_URL: ${err.message}`, EXIT.error, { cause: err });
    return undefined;
  });
}

/** Read models read per Redis round trip. */
const VIEWS_PER_READ = 1000;

/**
 * Every save job, for the image lists: from the read model when it has applied the whole log
 * (it keeps every job's view after the log's retention, `VMSAVE_EVENT_MAX_AGE`, dropped its
 * events), else folded from the log, with a warning when the log no longer starts at its first
 * event (saves older than the retention are then missing from the list).
 */
async function saveStates(ctx: Ctx): Promise<{ states: JobState[]; source: 'redis' | 'log' }> {
  const bus = await ctx.bus();
  const info = (await bus.jsm.streams.info(streams.events.name)).state;
  const fromRedis = await withReadModel(ctx, async (p, redis) => {
    if ((await p.appliedSeq()) < info.last_seq) return undefined;
    // Read models written before the kind index existed: the projector builds it when it starts.
    if ((await redis.get(p.k.indexVersion)) === null && (await redis.zcard(p.k.jobsAll)) > 0) return undefined;
    const ids = await redis.zrange(p.k.jobsByKind('save'), 0, -1);
    const out: JobState[] = [];
    for (let i = 0; i < ids.length; i += VIEWS_PER_READ) for (const v of await p.jobsByIds(ids.slice(i, i + VIEWS_PER_READ))) if (v) out.push(v);
    return out;
  });
  if (fromRedis) return { states: fromRedis, source: 'redis' };
  if (info.first_seq > 1)
    ctx.note(
      `the read model (Redis) is not current, and the event log starts at sequence ${info.first_seq} (older events aged out, VMSAVE_EVENT_MAX_AGE): images of older saves are missing from this list`,
    );
  const jobs = new Map<string, JobState>();
  for await (const { event } of readLog(bus, { signal: ctx.signal })) jobs.set(event.jobId, evolve(jobs.get(event.jobId) ?? initialState(), event));
  return { states: [...jobs.values()].filter((s) => s.kind === 'save'), source: 'log' };
}

export async function images(ctx: Ctx, v: Values): Promise<number> {
  if (bool(v, 'unknown')) return unknownImages(ctx, v);
  const vm = str(v, 'vm');
  const host = str(v, 'host');
  const { states, source } = await saveStates(ctx);
  const rows = imagesOf(states).map((i) => ({ ...i, deleted: undefined as JobState['imageDeleted'] }));
  if (bool(v, 'deleted'))
    for (const s of states)
      if (s.kind === 'save' && s.imageDeleted && s.jobId && s.vm)
        rows.push({
          jobId: s.jobId,
          vm: s.vm,
          host: s.imageDeleted.host,
          imagePath: s.imagePath ?? '',
          status: s.status as 'verified',
          at: s.updatedAt ?? '',
          bytes: s.result?.bytes,
          deleted: s.imageDeleted,
        });
  const shown = rows.filter((i) => (!vm || i.vm === vm) && (!host || i.host === host)).sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
  const now = Date.now();
  ctx.emit({
    source,
    images: shown.map((i) => ({
      jobId: i.jobId,
      vm: i.vm,
      host: i.host,
      imagePath: i.imagePath,
      status: i.deleted ? 'deleted' : i.status,
      at: i.at,
      bytes: i.bytes,
      ...(i.deleted ? { deleted: i.deleted } : {}),
    })),
  });
  if (!ctx.json)
    ctx.stdout.write(
      table(
        ['vm', 'host', 'path', 'status', 'age', 'size', 'job'],
        shown.map((i) => [
          i.vm,
          i.host,
          i.imagePath,
          i.deleted ? `deleted (${i.deleted.rule})` : i.status,
          i.at ? fmtElapsed(now - Date.parse(i.at)) : '',
          i.bytes !== undefined ? fmtBytes(i.bytes) : '',
          i.jobId,
        ]),
      ),
    );
  return EXIT.ok;
}

export async function prune(ctx: Ctx, v: Values): Promise<number> {
  const host = str(v, 'host');
  if (!host) throw new UsageError('images prune: --host is required (the host whose images are pruned)');
  const keepLast = int(v, 'keep-last', { min: 1, max: 100_000 });
  const maxAge = str(v, 'max-age');
  const keepYoungerThanMs = maxAge === undefined ? undefined : parseDurationMs(maxAge);
  if (maxAge !== undefined && keepYoungerThanMs === undefined) throw new UsageError(`--max-age needs a duration (90s, 30m, 12h, 7d, 2w), got "${maxAge}"`);
  if (keepLast === undefined && keepYoungerThanMs === undefined) throw new UsageError('images prune: give --keep-last N, --max-age D or both');
  let subject: string;
  try {
    subject = subjects.control(host);
  } catch (err) {
    throw new UsageError(`--host: ${(err as Error).message}`);
  }
  const bus = await ctx.bus();
  let reply: ControlReply;
  try {
    reply = await requestValidated(
      bus,
      messages.controlRequest,
      subject,
      { action: 'prune', dryRun: bool(v, 'dry-run'), policy: { keepLast, keepYoungerThanMs } },
      messages.controlReply,
      { timeoutMs: PRUNE_TIMEOUT_MS },
    );
  } catch (err) {
    if (err instanceof BusRequestTimeout) throw new UnreachableError(`no answer from the executor of ${host} (is it running, and is the host name right?)`);
    throw err;
  }
  ctx.emit(reply);
  if (!ctx.json) {
    const plan = reply.plan ?? [];
    if (plan.length)
      ctx.stdout.write(
        table(
          ['action', 'vm', 'path', 'status', 'size', 'rule', 'why', 'job'],
          plan.map((p) => [p.action, p.vm, p.imagePath, p.status, p.bytes !== undefined ? fmtBytes(p.bytes) : '', p.rule ?? '', p.reason, p.jobId]),
        ),
      );
    ctx.say(reply.message);
  }
  if (!reply.ok) throw new CliError(reply.message, EXIT.error);
  return EXIT.ok;
}

/**
 * `images --unknown`: files in this host's image directory (the executor's, VMSAVE_STATE_DIR /
 * VMSAVE_IMAGE_DIR) that no save of this host in the log wrote, or whose image the log says was
 * deleted: left by hand or by a crash.
 */
async function unknownImages(ctx: Ctx, v: Values): Promise<number> {
  const { localConfig } = await import('../local.ts');
  const cfg = localConfig(ctx.env);
  const host = str(v, 'host') ?? cfg.host;
  if (host !== cfg.host) throw new UsageError(`images --unknown reads this host's image directory: --host ${host} is not this host (${cfg.host}, VMSAVE_HOST)`);
  const known = new Set<string>();
  for (const s of (await saveStates(ctx)).states) {
    if (s.kind !== 'save' || s.host !== host || s.imageDeleted) continue;
    for (const p of [s.imagePath, s.imageKept]) if (p) known.add(path.resolve(cfg.imageDir, p));
  }
  const entries = await readdir(cfg.imageDir, { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [];
    throw new CliError(`cannot read the image directory ${cfg.imageDir}: ${err.message}`);
  });
  const now = Date.now();
  const unknown: { imagePath: string; bytes: number; modifiedAt: string }[] = [];
  for (const e of entries) {
    if (!e.isFile()) continue;
    const abs = path.join(cfg.imageDir, e.name);
    if (known.has(abs)) continue;
    const st = await stat(abs).catch(() => undefined);
    if (st) unknown.push({ imagePath: abs, bytes: st.size, modifiedAt: st.mtime.toISOString() });
  }
  unknown.sort((a, b) => a.imagePath.localeCompare(b.imagePath));
  ctx.emit({ host, imageDir: cfg.imageDir, unknown });
  if (!ctx.json)
    ctx.stdout.write(
      table(
        ['path', 'size', 'modified'],
        unknown.map((u) => [u.imagePath, fmtBytes(u.bytes), fmtElapsed(now - Date.parse(u.modifiedAt))]),
      ),
    );
  return EXIT.ok;
}
