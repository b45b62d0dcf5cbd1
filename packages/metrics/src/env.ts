import { z } from 'zod';

/** Each service's default `/metrics` port: distinct, so one host can run them all. */
export const DEFAULT_METRICS_PORTS = { scheduler: 9464, executor: 9465, verifier: 9466, dashboard: 9467 } as const;
export type MetricsService = keyof typeof DEFAULT_METRICS_PORTS;

/**
 * The variables a service reads for its `/metrics` endpoint, to spread into its `config.ts` schema:
 * `VMSAVE_METRICS_HOST` (default 127.0.0.1: localhost unless configured) and
 * `VMSAVE_METRICS_PORT` (default: the service's own port; 0 turns the endpoint off).
 */
export function metricsEnv(service: MetricsService) {
  return {
    VMSAVE_METRICS_HOST: z.string().min(1, 'an address to bind, e.g. 127.0.0.1 or 0.0.0.0').default('127.0.0.1'),
    VMSAVE_METRICS_PORT: z.coerce
      .number({ error: 'must be a port number' })
      .int('must be an integer')
      .min(0, 'a port from 0 (off) to 65535')
      .max(65535, 'a port from 0 (off) to 65535')
      .default(DEFAULT_METRICS_PORTS[service]),
  };
}

/** The parsed settings (`metricsEnv`'s fields of a service's config). */
export interface MetricsSettings {
  VMSAVE_METRICS_HOST: string;
  VMSAVE_METRICS_PORT: number;
}
