/**
 * Save on host shutdown (VMSAVE_ON_SHUTDOWN=save): on SIGTERM the executor asks for a save of
 * each VM it runs, through the bus as any client would (so every save is an ordinary save job
 * in the event log, decided by the scheduler and run by this executor's own work consumer),
 * waits for them within VMSAVE_SHUTDOWN_BUDGET_MS, names the VMs it could not save in time
 * (log line; their jobs are cancelled with a reason saying so), and remembers the images in
 * `<state>/shutdown-saved.json`. At its next start it asks for a restore of each of them on
 * this host. docs/decisions.md says why the bus and not a host-level event.
 */
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { jobIdFor, messages, partitionOf, subjects, type RestoreRequestInput, type SaveRequestInput } from '@vmsave/contracts';
import { eventsOfJob, publishValidated } from '@vmsave/bus';
import { fold, type JobState } from '@vmsave/jobs';
import type { ExecutorContext } from './context.ts';

export interface ShutdownSaved {
  vm: string;
  jobId: string;
  imagePath: string;
}

export interface ShutdownOutcome {
  saved: ShutdownSaved[];
  unsaved: Array<{ vm: string; jobId: string; reason: string }>;
}

const STATE_FILE = 'shutdown-saved.json';
export const shutdownStateFile = (ctx: Pick<ExecutorContext, 'cfg'>): string => path.join(path.resolve(ctx.cfg.VMSAVE_STATE_DIR), STATE_FILE);

const saveDone = (s: JobState) => s.status === 'completed' || s.status === 'verified';
const saveEnded = (s: JobState) => saveDone(s) || s.status === 'rejected' || s.status === 'cancelled' || (s.status === 'failed' && s.lastFailure?.retryable !== true);

async function poll(ctx: ExecutorContext, jobId: string, until: (s: JobState) => boolean, deadline: number): Promise<JobState> {
  for (;;) {
    const s = fold((await eventsOfJob(ctx.bus, jobId)).map((e) => e.event));
    if (until(s) || Date.now() >= deadline) return s;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Save every VM this host runs (running or paused) within the budget; see the file comment. */
export async function saveOnShutdown(ctx: ExecutorContext): Promise<ShutdownOutcome> {
  const budgetMs = ctx.cfg.VMSAVE_SHUTDOWN_BUDGET_MS;
  const deadline = Date.now() + budgetMs;
  const stamp = Date.now().toString(36);
  const vms = (await ctx.vms.summaries()).filter((v) => v.status === 'running' || v.status === 'paused');
  ctx.log.info({ vms: vms.map((v) => v.name), budgetMs }, 'host shutdown: saving the VMs this host runs');
  const jobs: Array<{ vm: string; jobId: string }> = [];
  const refused: ShutdownOutcome['unsaved'] = [];
  for (const v of vms) {
    const req: SaveRequestInput = {
      schemaVersion: 1,
      requestId: `shutdown-${ctx.host}-${v.name}-${stamp}`.slice(0, 128),
      vm: v.name,
      format: ctx.cfg.VMSAVE_SHUTDOWN_FORMAT,
      after: 'quit',
      priority: 'high',
      deadlineMs: Math.max(1000, budgetMs),
      requestedBy: `${ctx.source} (host shutdown)`,
    };
    const jobId = jobIdFor('save', req.requestId);
    try {
      await publishValidated(ctx.bus, messages.saveRequest, subjects.cmd.partitioned('save', partitionOf(req.vm)), req, { msgId: req.requestId });
    } catch (err) {
      // E.g. NATS permissions that do not let this executor's user publish on vmsave.cmd.save.
      refused.push({ vm: v.name, jobId, reason: `the save request could not be published: ${(err as Error).message}` });
      continue;
    }
    ctx.log.info({ jobId, vm: v.name }, 'host shutdown: save requested');
    jobs.push({ vm: v.name, jobId });
  }
  const outcome: ShutdownOutcome = { saved: [], unsaved: [...refused] };
  const states = await Promise.all(jobs.map((j) => poll(ctx, j.jobId, saveEnded, deadline)));
  for (const [i, j] of jobs.entries()) {
    const s = states[i]!;
    if (saveDone(s) && s.imagePath) {
      outcome.saved.push({ vm: j.vm, jobId: j.jobId, imagePath: s.imagePath });
      ctx.log.info({ jobId: j.jobId, vm: j.vm, image: s.imagePath }, 'host shutdown: VM saved');
    } else {
      const reason =
        s.status === 'none'
          ? `no scheduler took the save request within the shutdown budget of ${budgetMs} ms`
          : s.status === 'requested' || s.status === 'scheduled' || s.status === 'running'
            ? `not saved within the shutdown budget of ${budgetMs} ms (job ${s.status})`
            : `save ${s.status}${s.lastFailure ? `: ${s.lastFailure.reason}` : ''}`;
      outcome.unsaved.push({ vm: j.vm, jobId: j.jobId, reason });
      if (!saveEnded(s)) {
        // So the scheduler does not retry it once this host is gone; the job's own events then say why.
        await publishValidated(
          ctx.bus,
          messages.cancelRequest,
          subjects.cmd.partitioned('cancel', partitionOf(j.vm)),
          { schemaVersion: 1, requestId: `cancel-${j.jobId}`.slice(0, 128), jobId: j.jobId, reason: `host ${ctx.host} shut down: ${reason}` },
          { msgId: `cancel-${j.jobId}` },
        ).catch((err: unknown) => ctx.log.warn({ jobId: j.jobId, err: (err as Error).message }, 'host shutdown: could not cancel the unfinished save'));
      }
    }
  }
  if (outcome.unsaved.length)
    ctx.log.error(
      { vms: outcome.unsaved.map((u) => u.vm), unsaved: outcome.unsaved },
      `host shutdown: ${outcome.unsaved.length} VM(s) NOT saved: ${outcome.unsaved.map((u) => u.vm).join(', ')}`,
    );
  if (outcome.saved.length) {
    const file = shutdownStateFile(ctx);
    const previous = await readShutdownState(ctx);
    const keep = previous.filter((p) => !outcome.saved.some((s) => s.vm === p.vm));
    await writeFile(`${file}.tmp`, `${JSON.stringify([...keep, ...outcome.saved], null, 2)}\n`);
    await rename(`${file}.tmp`, file);
  }
  ctx.log.info({ saved: outcome.saved.map((s) => s.vm), unsaved: outcome.unsaved.map((u) => u.vm) }, 'host shutdown: saves done');
  return outcome;
}

/** The VMs a previous shutdown saved and that are not restored yet (none when no file). */
export async function readShutdownState(ctx: Pick<ExecutorContext, 'cfg' | 'log'>): Promise<ShutdownSaved[]> {
  let text: string;
  try {
    text = await readFile(shutdownStateFile(ctx), 'utf8');
  } catch {
    return [];
  }
  try {
    const list = JSON.parse(text) as ShutdownSaved[];
    return Array.isArray(list) ? list.filter((e) => typeof e?.vm === 'string' && typeof e?.imagePath === 'string' && typeof e?.jobId === 'string') : [];
  } catch (err) {
    ctx.log.warn({ file: shutdownStateFile(ctx), err: (err as Error).message }, 'host shutdown state file unreadable: nothing to restore');
    return [];
  }
}

/**
 * Ask for a restore on this host of each VM the last shutdown saved (request ids derived from
 * the save jobs, so asking twice after a crash names the same restore jobs), then forget them.
 */
export async function restoreAfterShutdown(ctx: ExecutorContext, pending: ShutdownSaved[]): Promise<string[]> {
  const jobIds: string[] = [];
  for (const p of pending) {
    const req: RestoreRequestInput = {
      schemaVersion: 1,
      requestId: `restore-${p.jobId}`.slice(0, 128),
      image: p.imagePath,
      host: ctx.host,
      after: 'as-saved',
      priority: 'high',
      requestedBy: `${ctx.source} (restart after host shutdown)`,
    };
    await publishValidated(ctx.bus, messages.restoreRequest, subjects.cmd.partitioned('restore', partitionOf(req.image)), req, { msgId: req.requestId });
    const jobId = jobIdFor('restore', req.requestId);
    jobIds.push(jobId);
    ctx.log.info({ jobId, vm: p.vm, image: p.imagePath, saveJobId: p.jobId }, 'restart after host shutdown: restore requested');
  }
  if (pending.length) await rm(shutdownStateFile(ctx), { force: true });
  return jobIds;
}
