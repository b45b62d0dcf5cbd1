/**
 * Image lifecycle on this host: fold the log to know the images, plan retention
 * (`planRetention` in @vmsave/jobs, pure), and for each image of this host the plan deletes,
 * remove the file and record `ImageDeleted` through `decide` on the job's folded history. Asked
 * by a control request (`prune`, control.ts) or run periodically (VMSAVE_RETENTION_KEEP_LAST /
 * VMSAVE_RETENTION_MAX_AGE).
 */
import { lstat, stat, unlink } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { fingerprintImage, readImage } from '@vmsave/image/node';
import type { JobEvent } from '@vmsave/contracts';
import { publishEvent, readLog, type Logger } from '@vmsave/bus';
import { decide, evolve, imagesOf, initialState, neededImagesOf, planRetention, withVmRules, type JobState, type PlannedImage, type RetentionPolicy } from '@vmsave/jobs';
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

/** The policy with each VM of this host's own retention (`VmDefinition.retention`) over it. */
async function policyWithVms(ctx: Ctx, policy: RetentionPolicy): Promise<RetentionPolicy> {
  try {
    return withVmRules(policy, await ctx.vms.definitions());
  } catch (err) {
    ctx.log.warn({ err: (err as Error).message }, "lifecycle: could not read the VM definitions; applying the host's policy alone");
    return policy;
  }
}

/**
 * Apply `policy` to this host's images (a dry run deletes nothing and answers the plan). A VM
 * whose definition has its own `retention` has that rule instead, for its images.
 */
export async function prune(ctx: Ctx, opts: { policy: RetentionPolicy; dryRun: boolean; now?: Date }): Promise<PruneResult> {
  const now = opts.now ?? new Date();
  let folded = await foldLog(ctx);
  const running = await runningVms(ctx);
  const policy = await policyWithVms(ctx, opts.policy);
  let plan = planFor(ctx, folded, policy, running, now);
  const result: PruneResult = { plan, deleted: 0, freedBytes: 0, errors: [] };
  if (opts.dryRun || !plan.some((p) => p.action === 'delete')) return result;

  // Read what the log gained while planning (a restore queued meanwhile protects its image).
  folded = await foldLog(ctx, folded);
  plan = planFor(ctx, folded, policy, running, now);
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

export type RemoveResult =
  | { ok: true; imagePath: string; bytes: number; dryRun: boolean }
  | { ok: false; rule: 'image-path' | 'not-found' | 'not-a-file' | 'image-known' | 'image-needed'; message: string; jobId?: string };

const base = (p: string): string => path.basename(p);

/**
 * Why the log does not let `abs` (a real path in this host's image directory) go: a save's image
 * or kept partial image that was not deleted (matched by path, or by name on any host, so a
 * shared or differently rooted directory is safe too), or the image a queued or running restore
 * needs. Undefined when the file is unknown to the log.
 */
function heldBy(ctx: Ctx, f: Folded, abs: string): Extract<RemoveResult, { ok: false }> | undefined {
  const states = [...f.jobs.values()].map((j) => j.state);
  const name = base(abs);
  for (const s of states) {
    if (s.kind !== 'save' || s.imageDeleted) continue;
    for (const p of [s.imagePath, s.imageKept]) {
      if (!p) continue;
      const same = (s.host === ctx.host && path.resolve(ctx.cfg.imageDir, p) === abs) || base(p) === name;
      if (same)
        return {
          ok: false,
          rule: 'image-known',
          jobId: s.jobId,
          message: `imagePath: ${abs} is the image of job ${s.jobId} (${s.vm ?? '?'}, ${s.status}); the log knows it: prune it with a retention policy instead`,
        };
    }
  }
  for (const n of neededImagesOf(states)) {
    const p = n.includes('\0') ? n.slice(n.indexOf('\0') + 1) : n;
    if (base(p) === name) return { ok: false, rule: 'image-needed', message: `imagePath: ${abs} is the image a queued or running restore needs (${p})` };
  }
  return undefined;
}

/** A regular file inside this host's image directory (not through a link), or the refusal naming the rule. */
async function imageFileOf(
  ctx: Ctx,
  imagePath: string,
): Promise<{ ok: true; abs: string; st: Stats } | { ok: false; rule: 'image-path' | 'not-found' | 'not-a-file'; message: string }> {
  let abs: string;
  try {
    abs = await resolveImagePath(ctx.cfg.imageDir, imagePath);
  } catch (err) {
    return { ok: false, rule: 'image-path', message: `imagePath: ${(err as Error).message}` };
  }
  const st = await lstat(abs).catch(() => undefined);
  if (!st) return { ok: false, rule: 'not-found', message: `imagePath: ${abs} does not exist in ${ctx.host}'s image directory` };
  if (!st.isFile()) return { ok: false, rule: 'not-a-file', message: `imagePath: ${abs} is not a regular file` };
  return { ok: true, abs, st };
}
/**
 * Remove a file of this host's image directory that the log does not know (`images --unknown`):
 * never one outside it or through a link, never one a save of the log wrote (and that retention
 * did not delete), never one a queued or running restore needs. Emits no event: the log never
 * knew the file. A dry run answers whether it would go.
 */
export async function removeUnknown(ctx: Ctx, opts: { imagePath: string; dryRun: boolean }): Promise<RemoveResult> {
  const file = await imageFileOf(ctx, opts.imagePath);
  if (!file.ok) return file;
  const { abs, st } = file;
  let folded = await foldLog(ctx);
  const held = heldBy(ctx, folded, abs);
  if (held) return held;
  if (opts.dryRun) return { ok: true, imagePath: abs, bytes: st.size, dryRun: true };
  // Read what the log gained meanwhile (a restore queued since protects its image).
  folded = await foldLog(ctx, folded);
  const late = heldBy(ctx, folded, abs);
  if (late) return late;
  await unlink(abs);
  ctx.log.info({ imagePath: abs, bytes: st.size }, 'unknown image removed');
  return { ok: true, imagePath: abs, bytes: st.size, dryRun: false };
}

export type AdoptResult =
  | { ok: true; jobId: string; imagePath: string; vm: string; bytes: number; duplicate: boolean }
  | { ok: false; rule: 'image-path' | 'not-found' | 'not-a-file' | 'image-known' | 'image-needed' | 'not-an-image' | 'image-incomplete'; message: string; jobId?: string };

/** The adopted job's id: one per image file (host, real path, fingerprint), so adopting it again changes nothing. */
export const adoptedJobId = (host: string, abs: string, fp: { ino: string; size: number; mtimeNs: string }): string =>
  `a-${createHash('sha256').update(`${host}\0${abs}\0${fp.ino}\0${fp.size}\0${fp.mtimeNs}`).digest('hex').slice(0, 20)}`;

/**
 * Adopt a file of this host's image directory that the log does not know: read its header and
 * descriptor (a complete vmsave image, naming its VM), then record, through `decide`, an
 * `ImageAdopted` on a new save job and that job's `SaveCompleted` (attempt 1, token 0), so the
 * verifier verifies it as it does every save; once verified it is an image like any other
 * (listed, restorable, pruned by retention).
 */
export async function adoptUnknown(ctx: Ctx, opts: { imagePath: string }): Promise<AdoptResult> {
  const file = await imageFileOf(ctx, opts.imagePath);
  if (!file.ok) return file;
  const { abs, st } = file;
  let info: Awaited<ReturnType<typeof readImage>>;
  try {
    info = await readImage(abs);
  } catch (err) {
    return { ok: false, rule: 'not-an-image', message: `imagePath: ${abs} is not a readable vmsave image: ${(err as Error).message}` };
  }
  if (!info.header.complete) return { ok: false, rule: 'image-incomplete', message: `imagePath: ${abs} is a partial image (magic VMSVPART): its save never finished` };
  const fingerprint = await fingerprintImage(abs);
  const jobId = adoptedJobId(ctx.host, abs, fingerprint);
  const folded = await foldLog(ctx);
  const job = folded.jobs.get(jobId) ?? { events: [], state: initialState() };
  const log = ctx.log.child({ jobId });
  const held = heldBy(ctx, folded, abs);
  if (held && held.jobId !== jobId) return held;
  const vm = info.descriptor.vm.name;
  const steps = [
    decide({ type: 'AdoptImage', jobId, data: { host: ctx.host, imagePath: abs, vm, format: info.header.format, bytes: info.size, fingerprint } }, job.state, {
      source: ctx.source,
    }),
  ];
  let duplicate = steps[0]!.ok && steps[0]!.duplicate === true;
  for (let i = 0; i < 2; i++) {
    const d = steps[i]!;
    if (!d.ok) return { ok: false, rule: 'image-known', jobId, message: `adoption not recorded (${d.rule}): ${d.message}` };
    for (const e of d.events) {
      const ack = await publishEvent(ctx.bus, e);
      job.events.push(e);
      job.state = evolve(job.state, e);
      if (!ack.duplicate) ctx.onPublished?.(e, job.events);
    }
    if (i === 0) {
      // Completed at once unless an earlier adoption already did (then nothing more to record).
      if (job.state.status !== 'running') break;
      duplicate = false;
      steps.push(
        decide(
          {
            type: 'CompleteSave',
            data: {
              host: ctx.host,
              attempt: 1,
              fencingToken: 0,
              imagePath: abs,
              format: info.header.format,
              bytes: info.size,
              blocks: Number(st.blocks ?? 0),
              durationMs: 0,
              throughputBytesPerSec: 0,
              vmState: 'quit',
              qemu: {},
            },
          },
          job.state,
          { source: ctx.source },
        ),
      );
    }
  }
  log.info({ imagePath: abs, vm, format: info.header.format, bytes: info.size, duplicate }, duplicate ? 'image already adopted' : 'unknown image adopted');
  return { ok: true, jobId, imagePath: abs, vm, bytes: info.size, duplicate };
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
