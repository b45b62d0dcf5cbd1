import { messages, subjects } from '@vmsave/contracts';
import { publishCore } from '@vmsave/bus';
import type { MigrationProgress } from '@vmsave/qemu';
import type { ExecutorContext, InFlight } from './context.ts';

/** A migration progress callback: samples on `vmsave.progress.<jobId>` (≤ 5/s, best effort), and the job's heartbeat stage. */
export function progressReporter(ctx: Pick<ExecutorContext, 'bus' | 'host'>, job: InFlight, stage: 'save' | 'restore') {
  let last = 0;
  return (p: MigrationProgress) => {
    const now = Date.now();
    if (now - last < 200 && p.status !== 'completed') return;
    last = now;
    const bytesPerSec = (p.mbps * 1e6) / 8;
    try {
      publishCore(ctx.bus, messages.progress, subjects.progress(job.jobId), {
        jobId: job.jobId,
        at: new Date(now).toISOString(),
        host: ctx.host,
        stage,
        status: p.status,
        totalBytes: p.total,
        transferredBytes: p.transferred,
        remainingBytes: p.remaining,
        bytesPerSec,
        etaMs: bytesPerSec > 0 ? (p.remaining / bytesPerSec) * 1000 : undefined,
      });
    } catch {
      /* progress is best effort */
    }
    job.stage = `${stage}:${p.status}`;
  };
}
