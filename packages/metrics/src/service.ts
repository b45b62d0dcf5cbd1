import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { JobEvent } from '@vmsave/contracts';
import { METRICS, type CounterKey, type GaugeKey, type HistogramKey, type LabelsOf, type MetricDefinition, type MetricKey } from './definitions.ts';
import type { MetricsSettings, MetricsService } from './env.ts';
import { serveMetrics, type MetricsLog, type MetricsServer } from './server.ts';

/**
 * What `@vmsave/bus` calls when it publishes, redelivers, dead-letters or reconnects (its
 * `BusMetrics` interface, matched structurally: the bus depends on no metrics library).
 */
export interface BusHooks {
  eventPublished(event: JobEvent): void;
  redelivered(stream: string, durable: string): void;
  deadLettered(service: string, stored: boolean): void;
  connectionStatus(type: string): void;
}

/**
 * One service's metrics: a registry with Node's default process metrics, the vmsave metrics it
 * exports (from {@link METRICS}, created on first use), the bus hooks, and the `/metrics` server.
 *
 * @example
 * const metrics = new ServiceMetrics('verifier');
 * const bus = await Bus.connect({ ...busOptions(cfg, 'verifier'), log, metrics: metrics.bus });
 * await metrics.serve(cfg, log);
 */
export class ServiceMetrics {
  readonly registry = new Registry();
  private server: MetricsServer | undefined;

  constructor(readonly service: MetricsService) {
    this.registry.setDefaultLabels({ service });
    collectDefaultMetrics({ register: this.registry });
    // The bus metrics exist (at 0) from the start, so a dashboard shows 0 rather than nothing.
    this.counter('busRedeliveries');
    this.counter('busDeadLetters');
    this.counter('busReconnects');
    this.counter('busDisconnects');
    this.gauge('busConnected').set(1);
  }

  counter<K extends CounterKey>(key: K): Counter<LabelsOf<K>> {
    return this.metric(key, (d) => new Counter({ name: d.name, help: d.help, labelNames: d.labelNames, registers: [this.registry] })) as Counter<LabelsOf<K>>;
  }

  gauge<K extends GaugeKey>(key: K, collect?: (this: Gauge<LabelsOf<K>>) => void | Promise<void>): Gauge<LabelsOf<K>> {
    const c = collect as ((this: Gauge) => void | Promise<void>) | undefined;
    return this.metric(key, (d) => new Gauge({ name: d.name, help: d.help, labelNames: d.labelNames, registers: [this.registry], ...(c ? { collect: c } : {}) })) as Gauge<
      LabelsOf<K>
    >;
  }

  histogram<K extends HistogramKey>(key: K): Histogram<LabelsOf<K>> {
    return this.metric(key, (d) => {
      const buckets = d.type === 'histogram' ? [...d.buckets] : undefined;
      return new Histogram({ name: d.name, help: d.help, labelNames: d.labelNames, buckets, registers: [this.registry] });
    }) as Histogram<LabelsOf<K>>;
  }

  private metric(key: MetricKey, make: (d: MetricDefinition & { labelNames: string[] }) => Counter | Gauge | Histogram): unknown {
    const d = METRICS[key] as MetricDefinition;
    return this.registry.getSingleMetric(d.name) ?? make({ ...d, labelNames: [...d.labelNames] } as MetricDefinition & { labelNames: string[] });
  }

  /**
   * The hooks to give `Bus.connect({ metrics })`. Counting from the events a service publishes:
   * every event by type; the scheduler's admissions (…Requested / …Rejected); the verifier's
   * verdicts and their checks. A hook never throws into the bus.
   */
  readonly bus: BusHooks = {
    eventPublished: (e) =>
      guard(() => {
        this.counter('eventsPublished').inc({ type: e.type });
        observeAdmissionAndVerdict(this, e);
      }),
    redelivered: (stream, durable) => guard(() => this.counter('busRedeliveries').inc({ stream, consumer: durable })),
    deadLettered: (_service, stored) => guard(() => this.counter('busDeadLetters').inc({ stored: String(stored) })),
    connectionStatus: (type) =>
      guard(() => {
        if (type === 'disconnect') {
          this.counter('busDisconnects').inc();
          this.gauge('busConnected').set(0);
        } else if (type === 'reconnect') {
          this.counter('busReconnects').inc();
          this.gauge('busConnected').set(1);
        } else if (type === 'close') this.gauge('busConnected').set(0);
      }),
  };

  /** Start `/metrics` on `VMSAVE_METRICS_HOST:VMSAVE_METRICS_PORT` (port 0: off); see {@link serveMetrics}. */
  async serve(settings: MetricsSettings, log: MetricsLog): Promise<MetricsServer | undefined> {
    this.server = await serveMetrics(this.registry, { host: settings.VMSAVE_METRICS_HOST, port: settings.VMSAVE_METRICS_PORT, log });
    return this.server;
  }

  async close(): Promise<void> {
    await this.server?.close();
    this.server = undefined;
  }

  /** The exposition text (what `/metrics` serves). */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}

function guard(fn: () => void): void {
  try {
    fn();
  } catch {
    // A metric must never break the bus; a label mistake shows as a missing series.
  }
}

function observeAdmissionAndVerdict(m: ServiceMetrics, e: JobEvent): void {
  switch (e.type) {
    case 'SaveRequested':
    case 'RestoreRequested':
      m.counter('admissions').inc({ kind: e.type === 'SaveRequested' ? 'save' : 'restore', outcome: 'accepted', rule: 'none' });
      return;
    case 'SaveRejected':
    case 'RestoreRejected':
      m.counter('admissions').inc({ kind: e.type === 'SaveRejected' ? 'save' : 'restore', outcome: 'rejected', rule: e.data.rule });
      return;
    case 'ImageVerified':
    case 'ImageRejected':
      m.counter('verifications').inc({ outcome: e.type === 'ImageVerified' ? 'verified' : 'rejected' });
      for (const c of e.data.checks) m.counter('verificationChecks').inc({ check: c.name, status: c.status });
      return;
    default:
  }
}
