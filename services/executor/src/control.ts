import { messages, subjects, type ControlReply, type ControlRequest } from '@vmsave/contracts';
import { subscribeValidated } from '@vmsave/bus';
import type { ExecutorContext } from './context.ts';

/**
 * Answer `vmsave.ctl.<host>` until `signal` aborts. A cancel aborts the job when its work is here
 * (in flight, or still being taken in); otherwise there is nothing to remember: the scheduler
 * wrote the cancel request into the job's log before asking, and the work item, when it comes,
 * finds it there.
 */
export async function serveControl(ctx: ExecutorContext, signal: AbortSignal): Promise<void> {
  const sub = subscribeValidated(ctx.bus, messages.controlRequest, subjects.control(ctx.host), {
    signal,
    onInvalid: (err, subject) => ctx.log.warn({ subject, err: err.message }, 'invalid control request ignored'),
  });
  for await (const m of sub) m.respond(messages.controlReply, onControl(ctx, m.value));
}

export function onControl(ctx: Pick<ExecutorContext, 'inflight' | 'log'>, req: ControlRequest): ControlReply {
  const j = ctx.inflight.get(req.jobId);
  if (j) {
    ctx.log.info({ jobId: req.jobId, reason: req.reason, stage: j.stage }, 'cancel requested');
    j.ac.abort('cancelled');
    return { ok: true, message: `cancelling ${req.jobId} at stage ${j.stage}` };
  }
  return { ok: true, message: `${req.jobId} is not running here; its work item will be cancelled when it arrives (the log has the request)` };
}
