/** `vmsave drain`: save every VM of a host through the bus, and with `--to` restore each one on the target. */
import { randomUUID } from 'node:crypto';
import { drainIdFor, DrainRequest, messages, subjects, type AdmissionReply } from '@vmsave/contracts';
import { awaitAnswer, publishValidated, readLog } from '@vmsave/bus';
import { describeDrainVm, describeEvent, drainRow, evolveDrain, foldDrain, initialDrainState, isDrainEvent, isDrainFinal, jobJson, type DrainState } from '@vmsave/jobs';
import { bool, oneOf, str, type Values } from '../options.ts';
import type { Ctx } from '../context.ts';
import { EXIT, JobFailedError, RejectedError, UnreachableError, UsageError } from '../errors.ts';

export async function drain(ctx: Ctx, v: Values): Promise<number> {
  const host = str(v, 'host');
  if (!host) throw new UsageError('drain: give --host NAME (the host to empty)');
  const parsed = DrainRequest.safeParse({
    requestId: str(v, 'request-id') ?? `cli-${randomUUID()}`,
    host,
    to: str(v, 'to'),
    after: str(v, 'after'),
    format: oneOf(v, 'format', ['legacy', 'sparse', 'auto'] as const),
    priority: oneOf(v, 'priority', ['high', 'normal', 'low'] as const),
    replicate: str(v, 'replicate'),
    requestedBy: `vmsave-cli@${process.env.USER ?? 'unknown'}`,
  });
  if (!parsed.success) throw new UsageError(`drain: ${parsed.error.issues.map((i) => `${i.path.length ? `--${i.path.join('.')}: ` : ''}${i.message}`).join('; ')}`);
  const req = parsed.data;
  const drainId = drainIdFor(req.requestId);
  const bus = await ctx.bus();
  const answer = awaitAnswer(bus, messages.admissionReply, { timeoutMs: ctx.cfg.VMSAVE_ADMISSION_TIMEOUT_MS });
  let duplicate = false;
  try {
    ({
      ack: { duplicate },
    } = await publishValidated(bus, messages.drainRequest, subjects.cmd.drain, req, { msgId: req.requestId, replyTo: answer.inbox }));
  } catch (err) {
    answer.cancel();
    throw err;
  }
  let a: AdmissionReply | undefined;
  if (duplicate) {
    // JetStream dropped the repeat: the scheduler never sees it, the log has the drain.
    answer.cancel();
    const s = await history(ctx, drainId);
    a = s.status === 'none' ? undefined : { outcome: 'accepted', requestId: req.requestId, jobId: drainId, duplicate: true };
  } else {
    a = await answer.value;
  }
  if (!a) throw new UnreachableError('no admission answer for the drain request: is the scheduler running?');
  if (a.outcome === 'rejected') throw new RejectedError(`drain rejected (${a.rule}${a.field ? `, ${a.field}` : ''}): ${a.message}`, a.rule);
  if (!bool(v, 'wait')) {
    ctx.emit({ outcome: 'accepted', jobId: drainId, requestId: req.requestId, duplicate: a.duplicate });
    ctx.say(drainId);
    return EXIT.ok;
  }
  ctx.note(`drain ${drainId} of ${host}${req.to ? ` to ${req.to}` : ''} accepted${a.duplicate ? ' (duplicate request: the existing drain)' : ''}`);
  const s = await follow(ctx, drainId);
  ctx.emit({ outcome: 'accepted', jobId: drainId, requestId: req.requestId, duplicate: a.duplicate, job: jobJson(drainRow(s)) });
  ctx.say(describeDrain(s));
  for (const vm of s.vms) ctx.say(`  ${describeDrainVm(vm)}`);
  if (s.status === 'failed' || s.status === 'cancelled') throw new JobFailedError(describeDrain(s));
  return EXIT.ok;
}

/** One line for a drain's state. */
function describeDrain(s: DrainState): string {
  return `drain ${s.drainId} ${s.status}${s.reason ? `: ${s.reason}` : ''}`;
}

/** A drain's state, folded from its history. */
async function history(ctx: Ctx, drainId: string): Promise<DrainState> {
  const events = (await (await ctx.client()).history(drainId)).filter(isDrainEvent);
  return foldDrain(events);
}

/** Follow a drain until it is over; one line per VM as it moves on. */
async function follow(ctx: Ctx, drainId: string): Promise<DrainState> {
  const bus = await ctx.bus();
  let s = initialDrainState();
  for await (const { event } of readLog(bus, { filter: subjects.evtOfJob(drainId), follow: true, signal: ctx.signal })) {
    s = evolveDrain(s, event);
    if (!ctx.json) ctx.note(`  ${event.type.padEnd(20)} ${describeEvent(event)}`);
    if (isDrainFinal(s)) return s;
  }
  throw new JobFailedError(`stopped following drain ${drainId} (last state: ${s.status})`);
}
