import type { JobEvent } from '@vmsave/contracts';

/**
 * An optional observer of what the bus does, for a service's metrics (`@vmsave/metrics` builds
 * one: `ServiceMetrics.bus`); the bus itself depends on no metrics library. Each hook is called
 * synchronously where the thing happens and must not throw.
 */
export interface BusMetrics {
  /** An event this connection appended to the log (acknowledged, not a duplicate the server dropped). */
  eventPublished?(event: JobEvent): void;
  /** A consumed JetStream message that was delivered before (`msg.info.redelivered`). */
  redelivered?(stream: string, durable: string): void;
  /** A refused message parked in `vmsave.dlq.<service>`; `stored` is false when that publish failed. */
  deadLettered?(service: string, stored: boolean): void;
  /** A NATS connection status change (`disconnect`, `reconnect`, `close`, …). */
  connectionStatus?(type: string): void;
}
