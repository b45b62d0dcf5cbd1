import { headers as natsHeaders } from '@nats-io/nats-core';
import type { PubAck } from '@nats-io/jetstream';
import { JobEvent, subjects, DeadLetter, type MessageDefinition } from '@vmsave/contracts';
import { createHash } from 'node:crypto';
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
    const ack = await retryTransient(() => bus.js.publish(subjects.evt(parsed.jobId, parsed.type), data, { msgID: parsed.eventId, timeout: 10_000 }));
    if (!ack.duplicate) bus.options.metrics?.eventPublished?.(parsed);
    return ack;
  } catch (cause) {
    throw new BusPublishError(`publish of ${parsed.type} for ${parsed.jobId} failed: ${(cause as Error).message}`, { cause });
  }
}

/** Validate and publish on core NATS (ephemeral: progress, heartbeats). */
export function publishCore<S extends z.ZodType>(bus: Bus, def: MessageDefinition<S>, subject: string, value: z.input<S>): void {
  const { data } = encodeMessage(def.schema, value, def.name);
  bus.nc.publish(subject, data);
}

/** Room kept under the server's max payload for the publish's headers and protocol line. */
const DEAD_LETTER_HEADROOM = 1024;
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

/**
 * Park a refused message in `vmsave.dlq.<service>` with the reason; never throws. The letter
 * always carries the payload's size and sha256; a payload too large to fit under the server's
 * `max_payload` (base64 grows it by a third) is cut to a prefix and marked `payloadTruncated`, so
 * the letter itself is never refused. Returns whether the letter was stored.
 */
export async function deadLetter(bus: Bus, service: string, msg: { subject: string; data: Uint8Array; seq?: number }, reason: string): Promise<boolean> {
  try {
    const maxPayload = bus.nc.info?.max_payload || DEFAULT_MAX_PAYLOAD;
    const data = encodeDeadLetter(buildDeadLetter(service, msg, reason), maxPayload - DEAD_LETTER_HEADROOM);
    await bus.js.publish(subjects.dlq(service), data, { timeout: 10_000 });
    bus.options.metrics?.deadLettered?.(service, true);
    return true;
  } catch {
    bus.options.metrics?.deadLettered?.(service, false);
    return false;
  }
}

/** The whole letter (payload untruncated); `encodeDeadLetter` bounds it. */
export function buildDeadLetter(service: string, msg: { subject: string; data: Uint8Array; seq?: number }, reason: string): DeadLetter {
  let payload: string;
  let payloadEncoding: 'utf8' | 'base64' = 'utf8';
  try {
    payload = new TextDecoder('utf-8', { fatal: true }).decode(msg.data);
  } catch {
    payload = Buffer.from(msg.data).toString('base64');
    payloadEncoding = 'base64';
  }
  return {
    service,
    subject: msg.subject,
    reason: reason.slice(0, 4096),
    payload,
    payloadEncoding,
    payloadSize: msg.data.byteLength,
    payloadSha256: createHash('sha256').update(msg.data).digest('hex'),
    streamSeq: msg.seq,
    at: new Date().toISOString(),
  };
}

/** Serialize a letter in at most `maxBytes`, cutting its payload to a prefix (and marking it) when it does not fit. */
export function encodeDeadLetter(letter: DeadLetter, maxBytes: number): Uint8Array {
  const enc = new TextEncoder();
  const encode = (l: DeadLetter) => enc.encode(JSON.stringify(DeadLetter.parse(l)));
  const whole = encode(letter);
  if (whole.byteLength <= maxBytes) return whole;
  const empty = encode({ ...letter, payload: '', payloadTruncated: true }).byteLength;
  if (empty > maxBytes) throw new Error(`dead letter: even without its payload it is ${empty} bytes, over the ${maxBytes} allowed`);
  // JSON escaping makes the encoded size uneven per character: shrink the prefix until it fits.
  let keep = Math.floor((letter.payload.length * (maxBytes - empty)) / (whole.byteLength - empty));
  for (;;) {
    let payload = letter.payload.slice(0, keep);
    if (letter.payloadEncoding === 'base64') payload = payload.slice(0, payload.length - (payload.length % 4));
    else if (/[\uD800-\uDBFF]$/.test(payload)) payload = payload.slice(0, -1);
    const data = encode({ ...letter, payload, payloadTruncated: true });
    if (data.byteLength <= maxBytes) return data;
    keep = Math.floor(keep * 0.9);
  }
}
