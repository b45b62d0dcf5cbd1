import { DeliverPolicy } from '@nats-io/jetstream';
import { HostAnnouncement, streams, subjects } from '@vmsave/contracts';
import type { Bus } from './connection.ts';
import { decodeMessage } from './validate.ts';
import { BusValidationError } from './errors.ts';
import { retryTransient } from './retry.ts';
import { resumable, type ResumableOptions } from './follow.ts';
import { followDirect, readDirect } from './direct.ts';
import { readsByConsumer } from './log.ts';

export interface ReadHostsOptions {
  /** Keep yielding new announcements until `signal` aborts (reopened after NATS restarts). */
  follow?: boolean;
  signal?: AbortSignal;
  /** With `follow`: told when the read is reopened after NATS went away (for a log line). */
  onResume?: ResumableOptions['onResume'];
  /**
   * `consumer` (an ordered consumer) or `direct` (direct gets, no consumer); default as `readLog`
   * (`readsByConsumer`). `direct` with `follow` subscribes to `vmsave.host.*` (the dashboard's
   * user may; the client's may not).
   */
  via?: 'direct' | 'consumer';
}

/**
 * The latest announcement of every host (the stream keeps one per subject), then, with
 * `follow`, each new one. Invalid entries are skipped.
 */
export async function* readHosts(bus: Bus, opts: ReadHostsOptions = {}): AsyncGenerator<HostAnnouncement> {
  if ((opts.via ?? (readsByConsumer(bus) ? 'consumer' : 'direct')) === 'direct') {
    // The stream keeps one announcement per host: everything stored is the latest of each.
    const o = { stream: streams.hosts.name, signal: opts.signal };
    const read = opts.follow
      ? followDirect(bus, subjects.hostAll, 1, { ...o, onError: (err, attempt) => opts.onResume?.(err, attempt) })
      : readDirect(bus, { ...o, filter: subjects.hostAll });
    for await (const m of read) {
      try {
        yield decodeMessage(HostAnnouncement, m.data, m.subject);
      } catch (err) {
        if (!(err instanceof BusValidationError)) throw err;
      }
    }
    return;
  }
  const read = opts.follow
    ? resumable(
        (after, signal) => readHostsOnce(bus, { ...opts, signal }, after),
        (h) => h.seq,
        { signal: opts.signal, onResume: opts.onResume, reopenOn: (fn) => bus.onReconnect(fn) },
      )
    : readHostsOnce(bus, opts, undefined);
  for await (const h of read) yield h.announcement;
}

/** One ordered consumer over the hosts stream: the latest per host, or everything after `after`. */
async function* readHostsOnce(bus: Bus, opts: ReadHostsOptions, after: number | undefined): AsyncGenerator<{ seq: number; announcement: HostAnnouncement }> {
  const info = await retryTransient(() => bus.jsm.streams.info(streams.hosts.name), { signal: opts.signal });
  if (!opts.follow && info.state.messages === 0) return;
  const start = after === undefined ? { deliver_policy: DeliverPolicy.LastPerSubject } : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: after + 1 };
  const consumer = await retryTransient(() => bus.js.consumers.get(streams.hosts.name, start), { signal: opts.signal });
  const messages = await retryTransient(() => consumer.consume(), { signal: opts.signal });
  const stop = () => void messages.close();
  opts.signal?.addEventListener('abort', stop, { once: true });
  // An abort that came while the consumer was being set up.
  if (opts.signal?.aborted) stop();
  try {
    for await (const m of messages) {
      try {
        yield { seq: m.seq, announcement: decodeMessage(HostAnnouncement, m.data, m.subject) };
      } catch (err) {
        if (!(err instanceof BusValidationError)) throw err;
      }
      if (!opts.follow && m.info.pending === 0) break;
    }
  } finally {
    opts.signal?.removeEventListener('abort', stop);
    await messages.close();
  }
}
