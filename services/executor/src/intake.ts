import type { WorkItem } from '@vmsave/contracts';
import { ack, type MessageContext, type Outcome } from '@vmsave/bus';
import { discardRestoreHead } from '@vmsave/ops';
import type { ExecutorContext, InFlight } from './context.ts';
import { admitWork } from './admit.ts';
import { JobTrack } from './job-log.ts';
import { prestartRestore, runRestore } from './restore-job.ts';
import { runSave } from './save-job.ts';

/**
 * One work item from `vmsave.work.<host>`: the job's history is folded, a copy of work already
 * running here or of an attempt the log closed is dropped, work that is not the job's current
 * attempt is refused, a job whose cancel was requested is confirmed cancelled without touching
 * the VM; otherwise the save or restore runs under the job's deadline. Always acked: every
 * outcome is in the log.
 */
export async function onWork(ctx: ExecutorContext, w: WorkItem, msg: MessageContext): Promise<Outcome> {
  const receivedEpochMs = Date.now();
  const receivedAt = performance.now();
  const log = ctx.log.child({ jobId: w.jobId, attempt: w.attempt });
  const running = ctx.inflight.get(w.jobId);
  if (running) {
    // A redelivery while the first delivery still runs (e.g. after a NATS failover lost the
    // in-progress signal): the running one owns the work.
    log.warn({ runningAttempt: running.attempt }, 'work item redelivered while it runs here; ignoring the copy');
    return ack();
  }
  // In flight from here on, so a cancel that arrives on the control channel while the history
  // is read is not lost: it aborts this controller.
  const ac = new AbortController();
  const job: InFlight = { jobId: w.jobId, attempt: w.attempt, fencingToken: w.fencingToken, kind: w.kind, stage: 'intake', ac };
  ctx.inflight.set(w.jobId, job);
  const deadlineMs = Date.parse(w.deadlineAt) - Date.now();
  const timer = setTimeout(() => ac.abort('deadline'), Math.max(0, deadlineMs));
  const working = setInterval(() => msg.working(), 5000);
  // A restore's QEMU starts now, while the history is read (it gets the image only after the
  // restore's gate and fencing passed; killed below when no restore took it).
  const head = w.kind === 'restore' ? prestartRestore(ctx, w, job) : undefined;
  try {
    const track = await JobTrack.load(ctx, w.jobId);
    // A redelivered item whose attempt the log already closed (e.g. after a crash) is done.
    if (track.closes(w.attempt)) {
      log.info('work for an attempt that is already closed; skipping');
      return ack();
    }
    const admitted = admitWork(w, track.state);
    if (!admitted.ok) {
      log.warn(
        { rule: admitted.rule, state: track.state.status, stateAttempt: track.state.attempt, stateFencingToken: track.state.fencingToken, fencingToken: w.fencingToken },
        `work item refused: ${admitted.message}`,
      );
      return ack();
    }
    const cancelReason = track.cancelReason() ?? (ac.signal.reason === 'cancelled' ? 'cancelled on request' : undefined);
    if (cancelReason !== undefined) {
      await track.apply({ type: 'ConfirmCancelled', reason: cancelReason, stage: 'queued' }, w.attempt, log);
      log.info({ reason: cancelReason }, 'cancelled before it started');
      return ack();
    }
    if (w.kind === 'save') await runSave(ctx, w, job, track, log);
    else await runRestore(ctx, w, job, track, log, { receivedEpochMs, intakeMs: performance.now() - receivedAt, head });
    return ack();
  } finally {
    clearTimeout(timer);
    clearInterval(working);
    await discardRestoreHead(head);
    ctx.inflight.delete(w.jobId);
    if (job.vm) ctx.vms.busy.delete(job.vm);
    await ctx.journal.remove(w.jobId);
  }
}
