import { headers as natsHeaders } from '@nats-io/nats-core';
import type { PubAck } from '@nats-io/jetstream';
import { JobEvent, subjects, DeadLetter, type MessageDefinition } from '@vmsave/contracts';
import type { z } from 'zod';
import type { Bus } from './connection.ts';
import { BusPublishError } from './errors.ts';
import { encodeMessage } from './validate.ts';
import { retryTransient } from './retry.ts';

/**
 * Validate and publish to a JetStream subject. `msgId` becomes `Nats-Msg-Id`: the server drops
 * a second publish with the same id inside the stream's duplicate window (`ack.duplicate`).
 */
export async function publishValidated<S extends z.ZodType>(
  bus: Bus,
  def: MessageDefinition<S>,
  subject: string,
  value: z.input<S>,
  opts: { msgId?: string; replyTo?: string; timeoutMs?: number } = {},
): Promise<{ ack: PubAck; value: z.infer<S> }> {
  const { value: parsed, data } = encodeMessage(def.schema, value, def.name);
  let h: ReturnType<typeof natsHeaders> | undefined;
  if (opts.replyTo) {
    h = natsHeaders();
    h.set('Vmsave-Reply-To', opts.replyTo);
  }
  try {
    // Retrying is safe only with a msgID (the server drops the duplicate); without one, publish once.
    const publish = () => bus.js.publish(subject, data, { msgID: opts.msgId, headers: h, timeout: opts.timeoutMs ?? 10_000 });
    const ack = opts.msgId ? await retryTransient(publish) : await publish();
    return { ack, value: parsed };
  } catch (cause) {
    throw new BusPublishError(`publish to ${subject} failed: ${(cause as Error).message}`, { cause });
  }
}

/** Publish one event to the log at `vmsave.evt.<jobId>.<type>`, deduplicated by its event id. */
export async function publishEvent(bus: Bus, event: JobEvent): Promise<PubAck> {
  const parsed = JobEvent.parse(event);
  const data = new TextEncoder().encode(JSON.stringify(parsed));
  try {
    return await retryTransient(() => bus.js.publish(subjects.evt(parsed.jobId, parsed.type), data, { msgID: parsed.eventId, timeout: 10_000 }));
  } catch (cause) {
    throw new BusPublishError(`publish of ${parsed.type} for ${parsed.jobId} failed: ${(cause as Error).message}`, { cause });
  }
}

/** Validate and publish on core NATS (ephemeral: progress, heartbeats). */
export function publishCore<S extends z.ZodType>(bus: Bus, def: MessageDefinition<S>, subject: string, value: z.input<S>): void {
  const { data } = encodeMessage(def.schema, value, def.name);
  bus.nc.publish(subject, data);
}

/** Park a refused message in `vmsave.dlq.<service>` with the reason; never throws. */
export async function deadLetter(bus: Bus, service: string, msg: { subject: string; data: Uint8Array; seq?: number }, reason: string): Promise<boolean> {
  let payload: string;
  let payloadEncoding: 'utf8' | 'base64' = 'utf8';
  try {
    payload = new TextDecoder('utf-8', { fatal: true }).decode(msg.data);
  } catch {
    payload = Buffer.from(msg.data).toString('base64');
    payloadEncoding = 'base64';
  }
  const letter: DeadLetter = {
    service,
    subject: msg.subject,
    reason: reason.slice(0, 4096),
    payload,
    payloadEncoding,
    streamSeq: msg.seq,
    at: new Date().toISOString(),
  };
  try {
    await bus.js.publish(subjects.dlq(service), new TextEncoder().encode(JSON.stringify(DeadLetter.parse(letter))), { timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}
