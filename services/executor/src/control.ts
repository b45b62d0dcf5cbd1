import { messages, subjects, type ControlReply, type ControlRequest } from '@vmsave/contracts';
import { subscribeValidated } from '@vmsave/bus';
import type { ExecutorContext } from './context.ts';
import { adoptUnknown, prune, removeUnknown } from './lifecycle.ts';

/** At most this many images in a prune's answer, so it stays under the server's max payload. */
const PLAN_MAX = 2000;

/**
 * Answer `vmsave.ctl.<host>` until `signal` aborts. A cancel aborts the job when its work is here
 * (in flight, or still being taken in); otherwise there is nothing to remember: the scheduler
 * wrote the cancel request into the job's log before asking, and the work item, when it comes,
 * finds it there. A prune applies a retention policy to this host's images, a remove deletes a
 * file of the image directory the log does not know (lifecycle.ts); each reads the whole log, so
 * runs beside the loop, one at a time, and cancels are never kept waiting behind it.
 */
export async function serveControl(ctx: ExecutorContext, signal: AbortSignal): Promise<void> {
  const sub = subscribeValidated(ctx.bus, messages.controlRequest, subjects.control(ctx.host), {
    signal,
    onInvalid: (err, subject) => ctx.log.warn({ subject, err: err.message }, 'invalid control request ignored'),
  });
  let busy: { action: string; done: Promise<void> } | undefined;
  for await (const m of sub) {
    const req = m.value;
    if (req.action === 'cancel') {
      m.respond(messages.controlReply, onControl(ctx, req));
      continue;
    }
    if (busy) {
      m.respond(messages.controlReply, { ok: false, message: `a ${busy.action} is already running on this host; ask again when it is done` });
      continue;
    }
    const work = req.action === 'prune' ? onPrune(ctx, req) : req.action === 'remove' ? onRemove(ctx, req) : onAdopt(ctx, req);
    busy = {
      action: req.action,
      done: work
        .then((reply) => void m.respond(messages.controlReply, reply))
        .finally(() => {
          busy = undefined;
        }),
    };
  }
  await busy?.done;
}

/** An adopt asked over the control channel: an unknown image of this host's image directory recorded as a save job. */
export async function onAdopt(ctx: ExecutorContext, req: Extract<ControlRequest, { action: 'adopt' }>): Promise<ControlReply> {
  ctx.log.info({ imagePath: req.imagePath }, 'adoption of an unknown image requested');
  try {
    const r = await adoptUnknown(ctx, { imagePath: req.imagePath });
    if (!r.ok) {
      ctx.log.warn({ imagePath: req.imagePath, rule: r.rule, ...(r.jobId ? { jobId: r.jobId } : {}) }, `adopt refused: ${r.message}`);
      return { ok: false, rule: r.rule, message: `${ctx.host}: adopt refused (${r.rule}): ${r.message}` };
    }
    return {
      ok: true,
      message: `${ctx.host}: ${r.imagePath} ${r.duplicate ? 'was already adopted' : 'adopted'} as save job ${r.jobId} of ${r.vm}; the verifier verifies it next`,
      adopted: { jobId: r.jobId, imagePath: r.imagePath, vm: r.vm, bytes: r.bytes, duplicate: r.duplicate },
    };
  } catch (err) {
    ctx.log.warn({ imagePath: req.imagePath, err: (err as Error).message }, 'adopt failed');
    return { ok: false, message: `adopt on ${ctx.host} failed: ${(err as Error).message}` };
  }
}

/** A remove asked over the control channel: an unknown file of this host's image directory deleted (or, on a dry run, checked). */
export async function onRemove(ctx: ExecutorContext, req: Extract<ControlRequest, { action: 'remove' }>): Promise<ControlReply> {
  ctx.log.info({ imagePath: req.imagePath, dryRun: req.dryRun }, 'remove of an unknown image requested');
  try {
    const r = await removeUnknown(ctx, { imagePath: req.imagePath, dryRun: req.dryRun });
    if (!r.ok) {
      ctx.log.warn({ imagePath: req.imagePath, rule: r.rule, ...(r.jobId ? { jobId: r.jobId } : {}) }, `remove refused: ${r.message}`);
      return { ok: false, rule: r.rule, message: `${ctx.host}: remove refused (${r.rule}): ${r.message}` };
    }
    return {
      ok: true,
      message: r.dryRun ? `dry run on ${ctx.host}: would remove ${r.imagePath} (${r.bytes} bytes); nothing removed` : `${ctx.host}: removed ${r.imagePath}, ${r.bytes} bytes freed`,
      removed: { imagePath: r.imagePath, bytes: r.bytes, dryRun: r.dryRun },
    };
  } catch (err) {
    ctx.log.warn({ imagePath: req.imagePath, err: (err as Error).message }, 'remove failed');
    return { ok: false, message: `remove on ${ctx.host} failed: ${(err as Error).message}` };
  }
}

export function onControl(ctx: Pick<ExecutorContext, 'inflight' | 'log'>, req: Extract<ControlRequest, { action: 'cancel' }>): ControlReply {
  const j = ctx.inflight.get(req.jobId);
  if (j) {
    ctx.log.info({ jobId: req.jobId, reason: req.reason, stage: j.stage }, 'cancel requested');
    j.ac.abort('cancelled');
    return { ok: true, message: `cancelling ${req.jobId} at stage ${j.stage}` };
  }
  return { ok: true, message: `${req.jobId} is not running here; its work item will be cancelled when it arrives (the log has the request)` };
}

/** A prune asked over the control channel: the plan for this host, applied unless `dryRun`. */
export async function onPrune(ctx: ExecutorContext, req: Extract<ControlRequest, { action: 'prune' }>): Promise<ControlReply> {
  ctx.log.info({ policy: req.policy, dryRun: req.dryRun }, 'prune requested');
  try {
    const r = await prune(ctx, { policy: req.policy, dryRun: req.dryRun });
    const plan = r.plan.map((p) => ({
      jobId: p.jobId,
      vm: p.vm,
      imagePath: p.imagePath,
      status: p.status,
      ...(p.bytes !== undefined ? { bytes: p.bytes } : {}),
      action: p.action,
      ...(p.action === 'delete' ? { rule: p.rule } : {}),
      reason: p.reason,
    }));
    const toDelete = plan.filter((p) => p.action === 'delete').length;
    const what = req.dryRun
      ? `dry run on ${ctx.host}: would delete ${toDelete} of ${plan.length} image(s); nothing deleted`
      : `${ctx.host}: deleted ${r.deleted} image(s), ${r.freedBytes} bytes freed; kept ${plan.length - toDelete}`;
    const errors = r.errors.length ? `; ${r.errors.length} could not be deleted: ${r.errors.map((e) => `${e.imagePath}: ${e.error}`).join('; ')}` : '';
    const cut = plan.length > PLAN_MAX ? ` (plan cut to ${PLAN_MAX} of ${plan.length} images)` : '';
    return { ok: r.errors.length === 0, message: `${what}${errors}${cut}`, plan: plan.slice(0, PLAN_MAX) };
  } catch (err) {
    ctx.log.warn({ err: (err as Error).message }, 'prune failed');
    return { ok: false, message: `prune on ${ctx.host} failed: ${(err as Error).message}` };
  }
}
