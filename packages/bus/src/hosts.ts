import { DeliverPolicy } from '@nats-io/jetstream';
import { HostAnnouncement, streams } from '@vmsave/contracts';
import type { Bus } from './connection.ts';
import { decodeMessage } from './validate.ts';
import { BusValidationError } from './errors.ts';
import { retryTransient } from './retry.ts';

/**
 * The latest announcement of every host (the stream keeps one per subject), then, with
 * `follow`, each new one. Invalid entries are skipped.
 */
export async function* readHosts(bus: Bus, opts: { follow?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<HostAnnouncement> {
  const info = await retryTransient(() => bus.jsm.streams.info(streams.hosts.name), { signal: opts.signal });
  if (!opts.follow && info.state.messages === 0) return;
  const consumer = await retryTransient(() => bus.js.consumers.get(streams.hosts.name, { deliver_policy: DeliverPolicy.LastPerSubject }), { signal: opts.signal });
  const messages = await consumer.consume();
  const stop = () => void messages.close();
  opts.signal?.addEventListener('abort', stop, { once: true });
  // An abort that came while the consumer was being set up.
  if (opts.signal?.aborted) stop();
  try {
    for await (const m of messages) {
      try {
        yield decodeMessage(HostAnnouncement, m.data, m.subject);
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
