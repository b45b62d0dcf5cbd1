import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, RetentionPolicy, StorageType, DiscardPolicy, type JetStreamClient, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import { createInbox, nanos } from '@nats-io/nats-core';
import { inboxPrefixOf, streamsWithEventMaxAge, SUBJECT_TOKEN, type StreamDefinition } from '@vmsave/contracts';
import { retryTransient } from './retry.ts';
import type { Logger } from './logger.ts';
import type { BusMetrics } from './metrics.ts';

export interface BusOptions {
  /** Comma-separated server URLs (a cluster: list every node). */
  servers: string;
  user?: string;
  pass?: string;
  /** Connection name shown by the server. */
  name: string;
  /**
   * Prefix of every inbox this connection creates (replies, JetStream API answers, pulled
   * messages). Default: `_INBOX.<user>` when a user is given (each vmsave user may subscribe only
   * below its own prefix), nats.js's `_INBOX` otherwise.
   */
  inboxPrefix?: string;
  /** JetStream replicas for the streams this connection creates (3 on a three-node cluster). */
  replicas?: number;
  /** Where connection changes (disconnect, reconnect) are logged. */
  log?: Logger;
  /** Counts publishes, redeliveries, dead letters and reconnects (`@vmsave/metrics`' `ServiceMetrics.bus`). */
  metrics?: BusMetrics;
  /**
   * The event log's max age `ensureStreams` applies (`VMSAVE_EVENT_MAX_AGE`; contracts'
   * `streamsWithEventMaxAge`): 0 keeps every event; absent leaves the stream's as it is.
   */
  eventMaxAgeMs?: number;
}

/**
 * A connected bus: the NATS connection, a JetStream client and manager.
 * Dispose it (`await using bus = await Bus.connect(...)`) to drain.
 *
 * @example
 * const bus = await Bus.connect({ servers: 'nats://127.0.0.1:4222', name: 'scheduler' });
 * await bus.ensureStreams();
 * await publishEvent(bus, makeEvent('SaveRequested', jobId, { request }, { source: 'scheduler' }));
 */
export class Bus implements AsyncDisposable {
  private constructor(
    readonly nc: NatsConnection,
    readonly js: JetStreamClient,
    readonly jsm: JetStreamManager,
    readonly options: BusOptions,
  ) {}

  private readonly reconnectListeners = new Set<() => void>();

  /** A new inbox subject under this connection's prefix (`_INBOX.<user>.<nuid>`), for answers to it. */
  newInbox(): string {
    return createInbox(this.inboxPrefix);
  }

  /** The prefix of this connection's inboxes (undefined: nats.js's `_INBOX`). */
  get inboxPrefix(): string | undefined {
    return inboxPrefixFor(this.options);
  }

  /** Called after every reconnect (the client may have missed core-NATS messages meanwhile). */
  onReconnect(fn: () => void): () => void {
    this.reconnectListeners.add(fn);
    return () => this.reconnectListeners.delete(fn);
  }

  private watchStatus(): void {
    void (async () => {
      for await (const s of this.nc.status()) {
        this.options.metrics?.connectionStatus?.(s.type);
        if (s.type === 'disconnect' || s.type === 'reconnect') this.options.log?.warn({ nats: s.type, server: (s as { server?: string }).server }, `NATS ${s.type}`);
        if (s.type === 'reconnect') for (const fn of this.reconnectListeners) fn();
      }
    })().catch(() => undefined);
  }

  static async connect(options: BusOptions): Promise<Bus> {
    const nc = await connect({
      servers: options.servers
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
      name: options.name,
      user: options.user,
      pass: options.pass,
      inboxPrefix: inboxPrefixFor(options),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      // No stack captured per request/publish: it halved the client CPU of a JetStream publish (docs/scheduler.md).
      noAsyncTraces: true,
    });
    const jsm = await jetstreamManager(nc);
    const bus = new Bus(nc, jetstream(nc), jsm, options);
    bus.watchStatus();
    return bus;
  }

  /** Create or update every vmsave stream; safe to call from every service at start. */
  async ensureStreams(defs: readonly StreamDefinition[] = streamsWithEventMaxAge(this.options.eventMaxAgeMs)): Promise<void> {
    // A forming cluster answers "no suitable peers" until every node has joined.
    for (const def of defs) await retryTransient(() => ensureStream(this.jsm, def, this.options.replicas ?? 1), { totalMs: 60_000 });
  }

  async close(): Promise<void> {
    if (!this.nc.isClosed()) await this.nc.drain().catch(() => this.nc.close());
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * The inbox prefix of a connection: `options.inboxPrefix`, else `_INBOX.<user>` (contracts'
 * `inboxPrefixOf`) when a user is given. A user name that is not one subject token has no
 * private prefix: then `inboxPrefix` must be given (`NATS_INBOX_PREFIX`), or the error says so.
 */
export function inboxPrefixFor(options: Pick<BusOptions, 'user' | 'inboxPrefix'>): string | undefined {
  if (options.inboxPrefix) return options.inboxPrefix;
  if (!options.user) return undefined;
  if (!SUBJECT_TOKEN.test(options.user)) {
    throw new TypeError(`NATS_USER "${options.user}" is not one subject token (letters, digits, _ - :): set NATS_INBOX_PREFIX to the inbox prefix its permissions allow`);
  }
  return inboxPrefixOf(options.user);
}

export function toStreamConfig(def: StreamDefinition, replicas: number): Partial<StreamConfig> & { name: string } {
  return {
    name: def.name,
    subjects: [...def.subjects],
    description: def.description,
    retention: def.retention === 'workqueue' ? RetentionPolicy.Workqueue : RetentionPolicy.Limits,
    storage: def.storage === 'file' ? StorageType.File : StorageType.Memory,
    duplicate_window: nanos(def.duplicateWindowMs),
    num_replicas: replicas,
    discard: DiscardPolicy.Old,
    ...(def.maxMsgsPerSubject ? { max_msgs_per_subject: def.maxMsgsPerSubject } : {}),
    // 0 is "keep every event" said explicitly; absent leaves an existing stream's max age as it is.
    ...(def.maxAgeMs !== undefined ? { max_age: nanos(def.maxAgeMs) } : {}),
    ...(def.allowDirect ? { allow_direct: true } : {}),
  };
}

export async function ensureStream(jsm: JetStreamManager, def: StreamDefinition, replicas: number): Promise<void> {
  const cfg = toStreamConfig(def, replicas);
  let maxAgeNs = 0;
  try {
    maxAgeNs = (await jsm.streams.info(def.name)).config.max_age ?? 0;
  } catch {
    try {
      await jsm.streams.add(cfg);
      return;
    } catch (err) {
      // Another service may have created it between our info and add.
      if (!/already in use|exists/i.test(String(err))) throw err;
    }
  }
  // Retention cannot change on an existing stream; everything else we own may be updated.
  const { retention: _r, storage: _s, ...updatable } = cfg;
  // A max age left as it is (no VMSAVE_EVENT_MAX_AGE here) keeps the dedupe window set with it:
  // JetStream refuses a window longer than the max age.
  if (def.maxAgeMs === undefined && maxAgeNs > 0) delete updatable.duplicate_window;
  await jsm.streams.update(def.name, updatable);
}
