import { z } from 'zod';
import { EventMaxAge } from '@vmsave/contracts';
import type { BusOptions } from './connection.ts';

/**
 * The bus settings every service reads: NATS_URL (comma-separated for a cluster), NATS_USER,
 * NATS_PASS, NATS_INBOX_PREFIX (default `_INBOX.<NATS_USER>`, the only inboxes a vmsave user may
 * subscribe to), NATS_REPLICAS.
 */
export const BusEnv = z.object({
  NATS_URL: z.string().min(1).default('nats://127.0.0.1:4222'),
  NATS_USER: z.string().optional(),
  NATS_PASS: z.string().optional(),
  NATS_INBOX_PREFIX: z
    .string()
    .regex(/^_INBOX(\.[A-Za-z0-9_:-]+)*$/, '_INBOX then dot-separated tokens of letters, digits, _ - : (no wildcard)')
    .optional(),
  NATS_REPLICAS: z.coerce.number().int().min(1).max(5).default(1),
  REDIS_URL: z.string().min(1).default('redis://127.0.0.1:6379'),
  VMSAVE_REDIS_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, _ and - only')
    .default('vmsave'),
  /** The event log's retention (`ensureStreams`); absent: the stream's is left as it is (a new one keeps all). */
  VMSAVE_EVENT_MAX_AGE: EventMaxAge.optional(),
});

/** Parse environment variables with a zod object schema; the error names each variable and its rule. */
export function parseEnv<S extends z.ZodType>(schema: S, env: Record<string, string | undefined>, service: string): z.infer<S> {
  const r = schema.safeParse(env);
  if (!r.success) throw new Error(`${service} configuration: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return r.data;
}

export function busOptions(c: z.infer<typeof BusEnv>, name: string): BusOptions {
  return { servers: c.NATS_URL, user: c.NATS_USER, pass: c.NATS_PASS, inboxPrefix: c.NATS_INBOX_PREFIX, replicas: c.NATS_REPLICAS, eventMaxAgeMs: c.VMSAVE_EVENT_MAX_AGE, name };
}
