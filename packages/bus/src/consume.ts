import { AckPolicy, DeliverPolicy, type JsMsg, type ConsumerConfig } from '@nats-io/jetstream';
import { nanos } from '@nats-io/nats-core';
import { subjects } from '@vmsave/contracts';
import type { z } from 'zod';
import type { Bus } from './connection.ts';
import type { Logger } from './logger.ts';
import { BusValidationError, isRetryable } from './errors.ts';
import { decodeMessage } from './validate.ts';
import { deadLetter } from './publish.ts';
import { isTransient, retryTransient } from './retry.ts';

/** What a handler wants done with a message. Errors thrown map to these too (see `settle`). */
export type Outcome = { kind: 'ack' } | { kind: 'nak'; delayMs: number } | { kind: 'term'; reason: string };

export const ack = (): Outcome => ({ kind: 'ack' });
export const nak = (delayMs: number): Outcome => ({ kind: 'nak', delayMs });
export const term = (reason: string): Outcome => ({ kind: 'term', reason });

export interface MessageContext {
  subject: string;
  seq: number;
  /** Times this message was delivered (1 on first delivery). */
  deliveryCount: number;
  /** Extend the ack deadline while a long step runs (QMP migrate). */
  working(): void;
  headers: { get(name: string): string | undefined };
}

export interface ConsumerSpec<S extends z.ZodType> {
  stream: string;
  durable: string;
  /** One subject filter (NATS 2.9 servers accept only one per consumer). */
  filterSubject: string;
  /** Where a new durable starts: all messages (default) or only new ones. */
  deliverNew?: boolean;
  schema: S;
  /** Name used in dead letters (`vmsave.dlq.<service>`). */
  service: string;
  /** Ack wait; a handler that takes longer must call `ctx.working()`. */
  ackWaitMs?: number;
  maxDeliver?: number;
  /** How many messages may be handled at once. */
  concurrency?: number;
  handler: (msg: z.infer<S>, ctx: MessageContext) => Promise<Outcome>;
  /** Called for each message that failed validation, after it was dead-lettered (e.g. to answer a reply subject). */
  onInvalid?: (err: BusValidationError, ctx: MessageContext) => Promise<void> | void;
  log: Logger;
  signal?: AbortSignal;
}

const backoffMs = (deliveryCount: number) => Math.min(30_000, 500 * 2 ** Math.max(0, deliveryCount - 1));

/**
 * Consume a durable pull consumer until `signal` aborts. Every message is decoded and validated;
 * the outcome of each is mapped to ack / nak(delay) / term here and nowhere else:
 *   invalid payload            → dead letter + term
 *   handler → ack | nak | term → as asked (term also dead-letters, with the reason)
 *   handler throws retryable   → nak with exponential backoff
 *   handler throws otherwise   → dead letter + term
 * The loop itself never throws for a bad message; it ends only on abort or a closed connection.
 */
export async function runConsumer<S extends z.ZodType>(bus: Bus, spec: ConsumerSpec<S>): Promise<void> {
  const config: Partial<ConsumerConfig> = {
    durable_name: spec.durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: spec.deliverNew ? DeliverPolicy.New : DeliverPolicy.All,
    ack_wait: nanos(spec.ackWaitMs ?? 30_000),
    max_deliver: spec.maxDeliver ?? 20,
    filter_subject: spec.filterSubject,
  };
  const inflight = new Set<Promise<void>>();
  let slotFreed: (() => void) | undefined;
  const concurrency = spec.concurrency ?? 1;
  // The loop goes on until abort: when the consume iterator ends or fails by itself (the server
  // restarted, the consumer vanished), the consumer is ensured again and consumption resumes.
  let consuming = false;
  for (let attempt = 0; !spec.signal?.aborted; attempt++) {
    try {
      await retryTransient(
        async () => {
          try {
            await bus.jsm.consumers.info(spec.stream, spec.durable);
            await bus.jsm.consumers.update(spec.stream, spec.durable, { ack_wait: config.ack_wait, max_deliver: config.max_deliver });
          } catch (err) {
            if (isTransient(err)) throw err;
            await bus.jsm.consumers.add(spec.stream, config);
          }
        },
        { signal: spec.signal },
      );
      const consumer = await retryTransient(() => bus.js.consumers.get(spec.stream, spec.durable), { signal: spec.signal });
      const messages = await consumer.consume({ max_messages: Math.max(concurrency, 1) * 2 });
      consuming = true;
      const stop = () => void messages.close();
      spec.signal?.addEventListener('abort', stop, { once: true });
      if (spec.signal?.aborted) stop();
      try {
        for await (const m of messages) {
          // Stopped: what the iterator still buffers (fetched, never handed to a handler) goes back
          // to the stream at once, ahead of newer messages, instead of after the ack wait.
          if (spec.signal?.aborted) {
            m.nak();
            continue;
          }
          attempt = 0;
          const p = handleOne(bus, spec, m).finally(() => {
            inflight.delete(p);
            slotFreed?.();
          });
          inflight.add(p);
          // Wait for one handler to finish (one waiter, not a race over every message in flight).
          if (inflight.size >= concurrency) await new Promise<void>((r) => (slotFreed = r));
          slotFreed = undefined;
        }
      } finally {
        spec.signal?.removeEventListener('abort', stop);
      }
      if (spec.signal?.aborted || bus.nc.isClosed()) break;
      spec.log.warn({ stream: spec.stream, durable: spec.durable }, 'consumer stopped delivering; consuming again');
    } catch (err) {
      // A consumer that cannot be set up at all (permissions, bad config) is the caller's error.
      if (!consuming) throw err;
      if (spec.signal?.aborted || bus.nc.isClosed()) break;
      spec.log.warn({ err: (err as Error)?.message ?? String(err), stream: spec.stream, durable: spec.durable, attempt }, 'consumer failed; consuming again');
    }
    await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** attempt)));
  }
  await Promise.allSettled(inflight);
}

async function handleOne<S extends z.ZodType>(bus: Bus, spec: ConsumerSpec<S>, m: JsMsg): Promise<void> {
  if (m.info.redelivered) bus.options.metrics?.redelivered?.(spec.stream, spec.durable);
  const ctx: MessageContext = {
    subject: m.subject,
    seq: m.seq,
    deliveryCount: m.info.deliveryCount,
    working: () => m.working(),
    headers: { get: (name) => m.headers?.get(name) || undefined },
  };
  let outcome: Outcome;
  try {
    const value = decodeMessage(spec.schema, m.data, `${m.subject} #${m.seq}`);
    outcome = await spec.handler(value, ctx);
  } catch (err) {
    if (err instanceof BusValidationError) {
      const stored = await deadLetter(bus, spec.service, { subject: m.subject, data: m.data, seq: m.seq }, err.message);
      logDeadLetter(spec, m, stored, { issues: err.issues }, 'invalid message');
      // No reason on the TERM: NATS 2.9 ignores "+TERM <reason>" and redelivers (the reason is in the dead letter).
      m.term();
      await Promise.resolve(spec.onInvalid?.(err, ctx)).catch(() => undefined);
      return;
    }
    if (isRetryable(err)) {
      const delayMs = backoffMs(ctx.deliveryCount);
      outcome = nak(delayMs);
      spec.log.warn({ err, subject: m.subject, seq: m.seq, delayMs }, 'retryable failure, will redeliver');
    } else {
      outcome = term(`handler failed: ${(err as Error)?.message ?? String(err)}`);
      spec.log.error({ err, subject: m.subject, seq: m.seq }, 'handler failed');
    }
  }
  settle(bus, spec, m, outcome);
}

function settle<S extends z.ZodType>(bus: Bus, spec: ConsumerSpec<S>, m: JsMsg, outcome: Outcome): void {
  switch (outcome.kind) {
    case 'ack':
      m.ack();
      return;
    case 'nak':
      m.nak(outcome.delayMs);
      return;
    case 'term':
      void deadLetter(bus, spec.service, { subject: m.subject, data: m.data, seq: m.seq }, outcome.reason).then((stored) => {
        if (!stored) logDeadLetter(spec, m, stored, { reason: outcome.reason }, 'refused message');
      });
      // No reason on the TERM: NATS 2.9 ignores "+TERM <reason>" and redelivers (the reason is in the dead letter).
      m.term();
  }
}

/** Say whether the dead letter was really stored: a letter that could not be published is lost, and the log must not claim otherwise. */
function logDeadLetter<S extends z.ZodType>(spec: ConsumerSpec<S>, m: JsMsg, stored: boolean, extra: Record<string, unknown>, what: string): void {
  const fields = { ...extra, subject: m.subject, seq: m.seq, size: m.data.byteLength, dlq: subjects.dlq(spec.service) };
  if (stored) spec.log.warn(fields, `${what}, dead-lettered`);
  else spec.log.error(fields, `${what} terminated; its dead letter was NOT stored (publish to the dead-letter stream failed)`);
}
