import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, RetentionPolicy, StorageType, DiscardPolicy, type JetStreamClient, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import { nanos } from '@nats-io/nats-core';
import { allStreams, type StreamDefinition } from '@vmsave/contracts';

export interface BusOptions {
  /** Comma-separated server URLs (a cluster: list every node). */
  servers: string;
  user?: string;
  pass?: string;
  /** Connection name shown by the server. */
  name: string;
  /** JetStream replicas for the streams this connection creates (3 on a three-node cluster). */
  replicas?: number;
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

  static async connect(options: BusOptions): Promise<Bus> {
    const nc = await connect({
      servers: options.servers.split(',').map((s) => s.trim()).filter(Boolean),
      name: options.name,
      user: options.user,
      pass: options.pass,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
    });
    const jsm = await jetstreamManager(nc);
    return new Bus(nc, jetstream(nc), jsm, options);
  }

  /** Create or update every vmsave stream; safe to call from every service at start. */
  async ensureStreams(defs: readonly StreamDefinition[] = allStreams): Promise<void> {
    for (const def of defs) await ensureStream(this.jsm, def, this.options.replicas ?? 1);
  }

  async close(): Promise<void> {
    if (!this.nc.isClosed()) await this.nc.drain().catch(() => this.nc.close());
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
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
    ...(def.maxAgeMs ? { max_age: nanos(def.maxAgeMs) } : {}),
  };
}

export async function ensureStream(jsm: JetStreamManager, def: StreamDefinition, replicas: number): Promise<void> {
  const cfg = toStreamConfig(def, replicas);
  try {
    await jsm.streams.info(def.name);
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
  await jsm.streams.update(def.name, updatable);
}
