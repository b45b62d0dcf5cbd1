import type { Msg, Subscription } from '@nats-io/nats-core';
import type { MessageDefinition } from '@vmsave/contracts';
import type { z } from 'zod';
import type { Bus } from './connection.ts';
import { BusRequestTimeout, BusValidationError } from './errors.ts';
import { decodeMessage, encodeMessage } from './validate.ts';

/** One message received on core NATS, validated against its definition. */
export interface Received<T> {
  subject: string;
  value: T;
  /** Answer a request (core request/reply), validated against `def`. */
  respond<S extends z.ZodType>(def: MessageDefinition<S>, value: z.input<S>): boolean;
}

export interface SubscribeOptions {
  /** Stop after this many messages (valid or not). */
  max?: number;
  /** Unsubscribe when aborted; the iteration then ends. */
  signal?: AbortSignal;
  /** Called for a message that fails validation (it is skipped). Default: ignored. */
  onInvalid?: (err: BusValidationError, subject: string) => void;
}

/** A typed core NATS subscription: iterate it for validated messages, `unsubscribe()` to end it. */
export interface TypedSubscription<T> extends AsyncIterable<Received<T>> {
  readonly subject: string;
  unsubscribe(): void;
}

const respondWith =
  (m: Msg) =>
  <S extends z.ZodType>(def: MessageDefinition<S>, value: z.input<S>): boolean =>
    m.respond(encodeMessage(def.schema, value, def.name).data);

/**
 * Subscribe on core NATS (ephemeral subjects: heartbeats, progress, control, answers) and receive
 * only messages that validate against `def`; invalid ones go to `onInvalid` and are skipped.
 *
 * @example
 * const sub = subscribeValidated(bus, messages.heartbeat, subjects.heartbeatAll, { signal });
 * for await (const { value } of sub) seen.set(value.host, value.at);
 */
export function subscribeValidated<S extends z.ZodType>(bus: Bus, def: MessageDefinition<S>, subject: string, opts: SubscribeOptions = {}): TypedSubscription<z.infer<S>> {
  const sub: Subscription = bus.nc.subscribe(subject, opts.max !== undefined ? { max: opts.max } : {});
  const onAbort = () => sub.unsubscribe();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted) sub.unsubscribe();
  return {
    subject,
    unsubscribe: () => sub.unsubscribe(),
    async *[Symbol.asyncIterator]() {
      try {
        for await (const m of sub) {
          let value: z.infer<S>;
          try {
            value = decodeMessage(def.schema, m.data, `${def.name} on ${m.subject}`);
          } catch (err) {
            if (err instanceof BusValidationError) opts.onInvalid?.(err, m.subject);
            else throw err;
            continue;
          }
          yield { subject: m.subject, value, respond: respondWith(m) };
        }
      } finally {
        opts.signal?.removeEventListener('abort', onAbort);
        sub.unsubscribe();
      }
    },
  };
}

/**
 * Core NATS request/reply, validated both ways: `req` describes what is sent, `reply` what must
 * come back. Throws `BusRequestTimeout` when nobody answers in time, `BusValidationError` on a
 * malformed answer.
 *
 * @example
 * const r = await requestValidated(bus, messages.controlRequest, subjects.control(host), { action: 'cancel', jobId, reason }, messages.controlReply);
 */
export async function requestValidated<Q extends z.ZodType, R extends z.ZodType>(
  bus: Bus,
  req: MessageDefinition<Q>,
  subject: string,
  value: z.input<Q>,
  reply: MessageDefinition<R>,
  opts: { timeoutMs?: number } = {},
): Promise<z.infer<R>> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const { data } = encodeMessage(req.schema, value, req.name);
  let m: Msg;
  try {
    m = await bus.nc.request(subject, data, { timeout: timeoutMs });
  } catch (cause) {
    throw new BusRequestTimeout(subject, timeoutMs, { cause });
  }
  return decodeMessage(reply.schema, m.data, `${reply.name} from ${subject}`);
}

/**
 * Wait for the single answer to something published with a reply subject (the admission answer
 * on `Vmsave-Reply-To`): subscribe first with `awaitAnswer`, publish with `answer.inbox`, then
 * `await answer.value` (undefined after `timeoutMs`).
 */
export function awaitAnswer<S extends z.ZodType>(
  bus: Bus,
  def: MessageDefinition<S>,
  opts: { timeoutMs?: number; inbox?: string } = {},
): { inbox: string; value: Promise<z.infer<S> | undefined>; cancel(): void } {
  const inbox = opts.inbox ?? bus.newInbox();
  const sub = subscribeValidated(bus, def, inbox, { max: 1 });
  const timer = setTimeout(() => sub.unsubscribe(), opts.timeoutMs ?? 10_000);
  const value = (async () => {
    try {
      for await (const { value: v } of sub) return v;
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  })();
  return {
    inbox,
    value,
    cancel: () => {
      clearTimeout(timer);
      sub.unsubscribe();
    },
  };
}
