import { commandForSubject, isDrainId, parseCommandSubject, partitionOf, subjects, upcast, type MessageDefinition } from '@vmsave/contracts';
import { ack, publishValidated, type Bus, type Logger, type MessageContext, type Outcome } from '@vmsave/bus';
import type { SchedulerState } from './state.ts';

/**
 * Where a command belongs: the VM partition whose scheduler handles it, or `bare` (a drain's,
 * handled by the `_global` holder), or `here` (this consumer handles it: its partition could not
 * be read, so admission answers it). Pure.
 *
 * - save: its VM's partition; restore: its image's (the client does not know the image's VM);
 * - cancel: its job's partition as the state knows it (`state.partitionOfJob`), a drain's
 *   cancel (`d-…`) the bare subject; a job this scheduler does not know yet: here.
 */
export function routeOf(raw: unknown, subject: string, state: Pick<SchedulerState, 'partitionOfJob'>): { partition: number } | 'bare' | 'here' {
  const c = parseCommandSubject(subject);
  const r = (typeof raw === 'object' && raw !== null ? raw : {}) as { vm?: unknown; image?: unknown; jobId?: unknown };
  switch (c?.kind) {
    case 'save':
      return typeof r.vm === 'string' ? { partition: partitionOf(r.vm) } : 'here';
    case 'restore':
      return typeof r.image === 'string' ? { partition: partitionOf(r.image) } : 'here';
    case 'cancel': {
      if (typeof r.jobId !== 'string') return 'here';
      if (isDrainId(r.jobId)) return 'bare';
      const p = state.partitionOfJob(r.jobId);
      return p === undefined ? 'here' : { partition: p };
    }
    default:
      return 'here';
  }
}

/**
 * Republishes commands on the subject of the scheduler that handles them: the same body (as
 * validated) and `Vmsave-Reply-To`, message id `fwd.<stream seq>` (a redelivered original is
 * dropped as a duplicate), acked only after the forwarded copy is stored. One chain: publishes go
 * out in arrival order, so per-VM order is kept.
 */
export class Forwarder {
  private chain: Promise<unknown> = Promise.resolve();
  forwarded = 0;

  constructor(
    private readonly bus: Bus,
    private readonly log: Logger,
  ) {}

  /** Forward to `vmsave.cmd.<kind>.<NN>` (`partition`) or to the bare subject of the kind (`'bare'`). Undefined: the body does not validate (admission answers it instead). */
  forward(raw: unknown, ctx: MessageContext, to: number | 'bare'): Promise<Outcome> | undefined {
    const c = parseCommandSubject(ctx.subject);
    const def = commandForSubject(ctx.subject) as MessageDefinition | undefined;
    if (!c || !def || c.kind === 'drain') return undefined;
    const body = upcast(raw);
    if (!def.schema.safeParse(body).success) return undefined;
    const subject = to === 'bare' ? subjects.cmd[c.kind] : subjects.cmd.partitioned(c.kind, to);
    if (subject === ctx.subject) return undefined;
    const replyTo = ctx.headers.get('Vmsave-Reply-To');
    const p = this.chain.then(async () => {
      await publishValidated(this.bus, def, subject, body, { msgId: `fwd.${ctx.seq}`, ...(replyTo ? { replyTo } : {}) });
      this.forwarded++;
      const r = raw as { requestId?: string; jobId?: string };
      if (this.log.isLevelEnabled('debug')) this.log.debug({ from: ctx.subject, to: subject, seq: ctx.seq, requestId: r.requestId, jobId: r.jobId }, 'command forwarded');
      return ack();
    });
    this.chain = p.catch(() => undefined);
    return p;
  }
}
