/** What `images adopt` and `images remove` do (its options: `../commands/images-manage.ts`). Loaded only when it runs. */
import { messages, subjects, type ControlReply } from '@vmsave/contracts';
import { BusRequestTimeout, requestValidated } from '@vmsave/bus';
import { fmtBytes } from '@vmsave/jobs';
import { bool, str, type Values } from '../options.ts';
import type { Ctx } from '../context.ts';
import { CliError, EXIT, UnreachableError, UsageError } from '../errors.ts';

/** How long `images remove` waits for the executor's answer (it reads the whole log first). */
const REMOVE_TIMEOUT_MS = 120_000;

/** Ask `host`'s executor, over `vmsave.ctl.<host>`, to adopt or remove the file `positionals[0]`. */
async function ask(ctx: Ctx, v: Values, positionals: string[], action: 'adopt' | 'remove'): Promise<ControlReply> {
  const host = str(v, 'host');
  if (!host) throw new UsageError(`images ${action}: --host is required (the host whose image directory holds the file)`);
  const imagePath = positionals[0];
  if (!imagePath) throw new UsageError(`images ${action}: give the PATH of the file (as \`images --unknown\` lists it)`);
  let subject: string;
  try {
    subject = subjects.control(host);
  } catch (err) {
    throw new UsageError(`--host: ${(err as Error).message}`);
  }
  const req = messages.controlRequest.schema.safeParse(action === 'remove' ? { action, imagePath, dryRun: bool(v, 'dry-run') } : { action, imagePath });
  if (!req.success) throw new UsageError(`images ${action}: ${req.error.issues.map((i) => `${i.path.join('.') || 'request'}: ${i.message}`).join('; ')}`);
  const bus = await ctx.bus();
  let reply: ControlReply;
  try {
    reply = await requestValidated(bus, messages.controlRequest, subject, req.data, messages.controlReply, { timeoutMs: REMOVE_TIMEOUT_MS });
  } catch (err) {
    if (err instanceof BusRequestTimeout) throw new UnreachableError(`no answer from the executor of ${host} (is it running, and is the host name right?)`);
    throw err;
  }
  return reply;
}

const answer = (ctx: Ctx, reply: ControlReply, bytes: number | undefined): number => {
  ctx.emit(reply);
  if (!ctx.json) ctx.say(bytes !== undefined ? `${reply.message} (${fmtBytes(bytes)})` : reply.message);
  if (!reply.ok) throw new CliError(reply.message, EXIT.error);
  return EXIT.ok;
};

/** `images remove PATH --host H [--dry-run]`: the host's executor deletes an unknown file of its image directory. */
export async function remove(ctx: Ctx, v: Values, positionals: string[]): Promise<number> {
  const reply = await ask(ctx, v, positionals, 'remove');
  return answer(ctx, reply, reply.removed?.bytes);
}

/** `images adopt PATH --host H`: the host's executor records an unknown image of its image directory as a save job. */
export async function adopt(ctx: Ctx, v: Values, positionals: string[]): Promise<number> {
  const reply = await ask(ctx, v, positionals, 'adopt');
  return answer(ctx, reply, reply.adopted?.bytes);
}
