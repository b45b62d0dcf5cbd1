/**
 * Image lifecycle on this host: fold the log to know the images, plan retention
 * (`planRetention` in @vmsave/jobs, pure), and for each image of this host the plan deletes,
 * remove the file and record `ImageDeleted` through `decide` on the job's folded history. Asked
 * by a control request (`prune`, control.ts) or run periodically (VMSAVE_RETENTION_KEEP_LAST /
 * VMSAVE_RETENTION_MAX_AGE).
 */
import { stat, unlink } from 'node:fs/promises';
import type { JobEvent } from '@vmsave/contracts';
import { publishEvent, readLog, type Logger } from '@vmsave/bus';
import { decide, evolve, imagesOf, initialState, neededImagesOf, planRetention, type JobState, type PlannedImage, type RetentionPolicy } from '@vmsave/jobs';
import type { ExecutorContext } from './context.ts';
import { resolveImagePath } from './image-path.ts';

type Ctx = Pick<ExecutorContext, 'bus' | 'cfg' | 'host' | 'source' | 'vms' | 'log' | 'onPublished'>;

export interface PruneResult {
  /** This host's images: deleted (or, on a dry run, to delete) with the rule, or kept with why. */
  plan: PlannedImage[];
  deleted: number;
  freedBytes: number;
  /** Images the plan chose that could not be deleted (with why); they stay, and so does their job. */
  errors: { jobId: string; imagePath: string; error: string }[];
}

interface Folded {
  jobs: Map<string, { events: JobEvent[]; state: JobState }>;
  lastSeq: number;
}

/** Every job of the log, folded; `from` continues a fold already made. */
async function foldLog(ctx: Ctx, from: Folded = { jobs: new Map(), lastSeq: 0 }): Promise<Folded> {
  let lastSeq = from.lastSeq;
  for await (const { seq, event } of readLog(ctx.bus, {
    fromSeq: from.lastSeq + 1,
    onInvalid: (s, err) => ctx.log.warn({ seq: s, err: err.message }, 'lifecycle: skipping invalid event'),
  })) {
    const j = from.jobs.get(event.jobId) ?? { events: [], state: initialState() };
    j.events.push(event);
    j.state = evolve(j.state, event);
    from.jobs.set(event.jobId, j);
    lastSeq = seq;
  }
  return { jobs: from.jobs, lastSeq };
}

/** The VMs of this host that run now (any QEMU state but `stopped`). */
async function runningVms(ctx: Ctx): Promise<string[]> {
  try {
    return (await ctx.vms.summaries()).filter((v) => v.status !== 'stopped').map((v) => v.name);
  } catch (err) {
    // Unknown: treat every VM as stopped, which keeps each one's newest verified image.
    ctx.log.warn({ err: (err as Error).message }, 'lifecycle: could not list VMs; assuming none runs');
    return [];
  }
}

function planFor(ctx: Ctx, f: Folded, policy: RetentionPolicy, running: string[], now: Date): PlannedImage[] {
  const states = [...f.jobs.values()].map((j) => j.state);
  const plan = planRetention(imagesOf(states), policy, { runningVms: running, neededImages: neededImagesOf(states) }, now);
  return [...plan.delete, ...plan.keep].filter((i) => i.host === ctx.host);
}

/** Apply `policy` to this host's images (a dry run deletes nothing and answers the plan). */
export async function prune(ctx: Ctx, opts: { policy: RetentionPolicy; dryRun: boolean; now?: Date }): Promise<PruneResult> {
  const now = opts.now ?? new Date();
  let folded = await foldLog(ctx);
  const running = await runningVms(ctx);
  let plan = planFor(ctx, folded, opts.policy, running, now);
  const result: PruneResult = { plan, deleted: 0, freedBytes: 0, errors: [] };
  if (opts.dryRun || !plan.some((p) => p.action === 'delete')) return result;

  // Read what the log gained while planning (a restore queued meanwhile protects its image).
  folded = await foldLog(ctx, folded);
  plan = planFor(ctx, folded, opts.policy, running, now);
  result.plan = plan;
  for (const p of plan) {
    if (p.action !== 'delete') continue;
    const log = ctx.log.child({ jobId: p.jobId });
    try {
      const bytes = await removeImage(ctx.cfg.imageDir, p.imagePath);
      const job = folded.jobs.get(p.jobId)!;
      const d = decide({ type: 'RecordImageDeleted', imagePath: p.imagePath, host: ctx.host, rule: p.rule, bytes }, job.state, { source: ctx.source, now });
      if (!d.ok) {
        log.warn({ rule: d.rule, imagePath: p.imagePath }, `ImageDeleted not recorded: ${d.message}`);
        continue;
      }
      for (const e of d.events) {
        const ack = await publishEvent(ctx.bus, e);
        job.events.push(e);
        job.state = evolve(job.state, e);
        if (!ack.duplicate) ctx.onPublished?.(e, job.events);
      }
      result.deleted++;
      result.freedBytes += bytes;
      log.info({ imagePath: p.imagePath, vm: p.vm, rule: p.rule, bytes, reason: p.reason }, 'image deleted by retention');
    } catch (err) {
      result.errors.push({ jobId: p.jobId, imagePath: p.imagePath, error: (err as Error).message });
      log.warn({ imagePath: p.imagePath, err: (err as Error).message }, 'retention could not delete the image');
    }
  }
  return result;
}

/** Delete an image file inside the image directory (never outside it, never through a link); its size, 0 when already gone. */
async function removeImage(imageDir: string, imagePath: string): Promise<number> {
  const abs = await resolveImagePath(imageDir, imagePath);
  const st = await stat(abs).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!st) return 0;
  if (!st.isFile()) throw new Error(`${abs} is not a regular file`);
  await unlink(abs);
  return st.size;
}

/** The periodic step: prune with the configured policy every `intervalMs` until `signal` aborts. */
export async function runRetention(ctx: Ctx, policy: RetentionPolicy, intervalMs: number, signal: AbortSignal, log: Logger = ctx.log): Promise<void> {
  log.info({ policy, intervalMs }, 'retention: periodic prune on');
  while (!signal.aborted) {
    try {
      const r = await prune(ctx, { policy, dryRun: false });
      if (r.deleted || r.errors.length) log.info({ deleted: r.deleted, freedBytes: r.freedBytes, errors: r.errors.length }, 'retention pass');
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'retention pass failed');
    }
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, intervalMs);
      signal.addEventListener(
        'abort',
        () => {
          clearTimeout(t);
          resolve();
        },
        { once: true },
      );
    });
  }
}
