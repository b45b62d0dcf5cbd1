/** What the image lifecycle commands do (their options: `../commands/images.ts`). Loaded only when one runs. */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { messages, subjects, type ControlReply } from '@vmsave/contracts';
import { BusRequestTimeout, readLog, requestValidated } from '@vmsave/bus';
import { evolve, fmtBytes, fmtElapsed, imagesOf, initialState, parseDurationMs, type JobState } from '@vmsave/jobs';
import { bool, int, str, type Values } from '../options.ts';
import type { Ctx } from '../context.ts';
import { CliError, EXIT, UnreachableError, UsageError } from '../errors.ts';
import { table } from '../terminal.ts';

/** How long `images prune` waits for the executor's answer (it reads the whole log first). */
const PRUNE_TIMEOUT_MS = 120_000;

async function foldAll(ctx: Ctx): Promise<JobState[]> {
  const bus = await ctx.bus();
  const jobs = new Map<string, JobState>();
  for await (const { event } of readLog(bus, { signal: ctx.signal })) jobs.set(event.jobId, evolve(jobs.get(event.jobId) ?? initialState(), event));
  return [...jobs.values()];
}

export async function images(ctx: Ctx, v: Values): Promise<number> {
  if (bool(v, 'unknown')) return unknownImages(ctx, v);
  const vm = str(v, 'vm');
  const host = str(v, 'host');
  const states = await foldAll(ctx);
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
  for (const s of await foldAll(ctx)) {
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
