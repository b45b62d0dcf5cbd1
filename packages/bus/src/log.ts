import { DeliverPolicy } from '@nats-io/jetstream';
import { JobEvent, refuseMisplacedEvent, streams, subjects } from '@vmsave/contracts';
import type { Bus } from './connection.ts';
import { decodeMessage } from './validate.ts';
import { BusValidationError } from './errors.ts';
import { retryTransient } from './retry.ts';
import { resumable, type ResumableOptions } from './follow.ts';
import { followDirect, readDirect } from './direct.ts';

export interface LoggedEvent {
  seq: number;
  event: JobEvent;
}

export interface ReadLogOptions {
  /** First stream sequence to read (default 1). */
  fromSeq?: number;
  /** Subject filter (default every event); `subjects.evtOfJob(id)` for one job. */
  filter?: string;
  /** Keep following new events after reaching the end. */
  follow?: boolean;
  signal?: AbortSignal;
  /** Called for an entry that does not parse as an event (it is skipped, never fatal). */
  onInvalid?: (seq: number, err: BusValidationError) => void;
  /**
   * Called for an event that parses but is misplaced or forged (`refuseMisplacedEvent`): its
   * subject's type or job token differs from the event, or its `source` names a role that may not
   * emit its type (`EVENT_PUBLISHERS`). It is skipped, never folded; without this callback the
   * refusal is a process warning (`VmsaveRefusedEvent`).
   */
  onRefused?: (seq: number, reason: string, event: JobEvent) => void;
  /** With `follow`: told when the read is reopened after NATS went away (for a log line). */
  onResume?: ResumableOptions['onResume'];
  /**
   * How to read: `consumer`, an ephemeral ordered consumer (the services: scheduler, executor,
   * verifier); `direct`, direct gets plus a core subscription and no consumer at all (clients and
   * the dashboard, whose NATS users may create none; `direct.ts`). Default: `readsByConsumer(bus)`.
   */
  via?: 'direct' | 'consumer';
}

/**
 * Whether this connection reads the log with consumers by default: a service's connection (its
 * NATS user, or without users its connection name, is `scheduler`, `verifier`, `executor` or
 * `executor-<host>`). Every other connection (CLI, client library, dashboard) reads by direct get.
 */
export function readsByConsumer(bus: Pick<Bus, 'options'>): boolean {
  return /^(scheduler|verifier|executor(-.+)?)$/.test(bus.options.user ?? bus.options.name);
}

/**
 * Read the event log in order, with an ephemeral ordered consumer or by direct get (`via`). Without `follow` it ends
 * once it has read everything present when it started; with `follow` it goes on until `signal`
 * aborts, reopening the read where it stopped when NATS restarts (see `resumable`).
 */
export function readLog(bus: Bus, opts: ReadLogOptions = {}): AsyncGenerator<LoggedEvent> {
  if ((opts.via ?? (readsByConsumer(bus) ? 'consumer' : 'direct')) === 'direct') return readLogDirect(bus, opts);
  if (!opts.follow) return readLogOnce(bus, opts);
  return resumable(
    (after, signal) => readLogOnce(bus, { ...opts, signal, fromSeq: after === undefined ? opts.fromSeq : after + 1 }),
    (e) => e.seq,
    {
      signal: opts.signal,
      onResume: opts.onResume,
      reopenOn: (fn) => bus.onReconnect(fn),
    },
  );
}

async function* readLogDirect(bus: Bus, opts: ReadLogOptions): AsyncGenerator<LoggedEvent> {
  const filter = opts.filter ?? subjects.evtAll;
  const fromSeq = Math.max(1, opts.fromSeq ?? 1);
  const messages = opts.follow
    ? followDirect(bus, filter, fromSeq, { signal: opts.signal, onError: (err, attempt) => opts.onResume?.(err, attempt) })
    : readDirect(bus, { filter, fromSeq, signal: opts.signal });
  for await (const m of messages) {
    const event = decodeEvent(m.subject, m.seq, m.data, opts);
    if (event) yield { seq: m.seq, event };
  }
}

/** The event of a log entry, or undefined when it is invalid or refused (told to the callbacks). */
function decodeEvent(subject: string, seq: number, data: Uint8Array, opts: ReadLogOptions): JobEvent | undefined {
  let event: JobEvent | undefined;
  try {
    event = decodeMessage(JobEvent, data, `${subject} #${seq}`);
  } catch (err) {
    if (err instanceof BusValidationError) opts.onInvalid?.(seq, err);
    else throw err;
  }
  if (!event) return undefined;
  const refused = refuseMisplacedEvent(subject, event);
  if (refused === undefined) return event;
  if (opts.onRefused) opts.onRefused(seq, refused, event);
  else process.emitWarning(`event log: ${subject} #${seq} refused: ${refused}`, 'VmsaveRefusedEvent');
  return undefined;
}

async function* readLogOnce(bus: Bus, opts: ReadLogOptions): AsyncGenerator<LoggedEvent> {
  const filter = opts.filter ?? subjects.evtAll;
  const info = await retryTransient(() => bus.jsm.streams.info(streams.events.name), { signal: opts.signal });
  const lastSeq = info.state.last_seq;
  const fromSeq = Math.max(1, opts.fromSeq ?? 1);
  if (!opts.follow && (lastSeq === 0 || fromSeq > lastSeq)) return;
  const consumer = await retryTransient(
    () =>
      bus.js.consumers.get(streams.events.name, {
        filter_subjects: filter,
        ...(fromSeq > 1 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: fromSeq } : { deliver_policy: DeliverPolicy.All }),
      }),
    { signal: opts.signal },
  );
  // An empty match set would never deliver anything: check first.
  if (!opts.follow) {
    const ci = await retryTransient(() => consumer.info(true), { signal: opts.signal });
    if (ci.num_pending === 0) return;
  }
  const messages = await retryTransient(() => consumer.consume(), { signal: opts.signal });
  const stop = () => void messages.close();
  opts.signal?.addEventListener('abort', stop, { once: true });
  // An abort that came while the consumer was being set up.
  if (opts.signal?.aborted) stop();
  // An ordered consumer that resets (missed heartbeat, reconnect) can deliver a sequence again.
  let last = fromSeq - 1;
  try {
    for await (const m of messages) {
      if (m.seq <= last) continue;
      last = m.seq;
      const event = decodeEvent(m.subject, m.seq, m.data, opts);
      if (event) yield { seq: m.seq, event };
      if (!opts.follow) {
        if (m.seq >= lastSeq) break;
        // `pending` can read 0 while a pulled batch is still on its way (seen: a read from a
        // sequence above 1 ending a few events early), so over the whole log it is only believed
        // when the stream says nothing lies after this event.
        if (m.info.pending === 0) {
          if (filter !== subjects.evtAll) break;
          const now = await retryTransient(() => bus.jsm.streams.info(streams.events.name), { signal: opts.signal });
          if (now.state.last_seq <= m.seq) break;
        }
      }
    }
  } finally {
    opts.signal?.removeEventListener('abort', stop);
    await messages.close();
  }
}

/** Every event of one job, in order (misplaced or forged ones left out, see `ReadLogOptions.onRefused`). */
export async function eventsOfJob(bus: Bus, jobId: string, opts: Pick<ReadLogOptions, 'onRefused' | 'onInvalid' | 'via'> = {}): Promise<LoggedEvent[]> {
  const out: LoggedEvent[] = [];
  for await (const e of readLog(bus, { ...opts, filter: subjects.evtOfJob(jobId) })) out.push(e);
  return out;
}
