import { messages, subjects } from '@vmsave/contracts';
import { publishCore } from '@vmsave/bus';
import { WriteProgressEstimator } from '@vmsave/jobs';
import type { MigrationProgress } from '@vmsave/qemu';
import type { ExecutorContext, InFlight } from './context.ts';

/**
 * A migration progress callback: samples on `vmsave.progress.<jobId>` (≤ 5/s, best effort), and
 * the job's heartbeat stage. Bytes, rate and ETA count what the save writes (`WriteProgressEstimator`),
 * not logical RAM or QEMU's `mbps`, which both count zero pages a mapped-ram image never writes.
 */
export function progressReporter(ctx: Pick<ExecutorContext, 'bus' | 'host'>, job: InFlight, stage: 'save' | 'restore') {
  let last = 0;
  const estimator = new WriteProgressEstimator();
  return (p: MigrationProgress) => {
    const now = Date.now();
    // Every sample feeds the rate; only some are published.
    const w = estimator.sample(p, now);
    if (now - last < 200 && p.status !== 'completed') return;
    last = now;
    try {
      publishCore(ctx.bus, messages.progress, subjects.progress(job.jobId), {
        jobId: job.jobId,
        at: new Date(now).toISOString(),
        host: ctx.host,
        stage,
        status: p.status,
        totalBytes: w.totalBytes,
        transferredBytes: w.doneBytes,
        remainingBytes: w.remainingBytes,
        bytesPerSec: w.bytesPerSec,
        etaMs: w.etaMs,
      });
    } catch {
      /* progress is best effort */
    }
    job.stage = `${stage}:${p.status}`;
  };
}
