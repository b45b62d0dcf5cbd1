import { recoverInterrupted } from '@vmsave/ops';
import type { ExecutorContext } from './context.ts';
import { clearHolds } from './failpoints.ts';
import { JobTrack } from './job-log.ts';

/**
 * At start, the jobs this host was running when it died (their journal records): QEMU is put
 * right by `@vmsave/ops` (`recoverInterrupted`: migration cancelled, fdsets removed, a VM that
 * was running resumed, the partial image removed), then the attempt is closed with a retryable
 * SaveFailed/RestoreFailed, decided against the job's log. An attempt the log shows completed is
 * left alone (its image is whole, its VM was left as asked).
 */
export async function recoverAtStart(ctx: ExecutorContext): Promise<void> {
  await clearHolds(ctx.cfg.jobsDir);
  for (const r of await ctx.journal.list()) {
    const log = ctx.log.child({ jobId: r.jobId, attempt: r.attempt });
    const track = await JobTrack.load(ctx, r.jobId).catch((err: unknown) => {
      log.warn({ err: (err as Error).message }, 'could not read the interrupted job from the log');
      return undefined;
    });
    if (track?.completed(r.attempt)) {
      log.info('the interrupted attempt had completed; nothing to recover');
      await ctx.journal.remove(r.jobId);
      continue;
    }
    const { vmResumed, migration, error } = await recoverInterrupted(r, { qmpSocketPath: r.vm ? ctx.vms.socketOf(r.vm) : undefined });
    if (error) log.warn({ err: error }, 'could not reach the VM of an interrupted job');
    const reason = `executor restarted during the ${r.kind} (QEMU migration status: ${migration})`;
    const base = { attempt: r.attempt, stage: 'lost' as const, reason, code: 'executor-restarted', retryable: true, host: ctx.host, fencingToken: r.fencingToken };
    if (track) {
      await track.apply(r.kind === 'save' ? { type: 'FailSave', data: { ...base, vmResumed } } : { type: 'FailRestore', data: base }, r.attempt, log);
    }
    log.warn({ vmResumed, migration }, 'closed a job interrupted by an executor restart');
    await ctx.journal.remove(r.jobId);
  }
}
