import { z } from 'zod';
import { BusEnv, parseEnv } from '@vmsave/bus';
import { metricsEnv } from '@vmsave/metrics';

export const VerifierEnv = BusEnv.extend({
  /**
   * Hosts whose image directories this verifier can read (comma-separated), or `*` for all
   * (one machine, or shared storage). Images of other hosts are left to their own verifier.
   */
  VMSAVE_VERIFY_HOSTS: z.string().default('*'),
  /** Durable consumer name; verifiers for different hosts need different names. */
  VMSAVE_VERIFIER_NAME: z
    .string()
    .regex(/^[A-Za-z0-9_-]+$/)
    .default('verifier'),
  VMSAVE_VERIFY_CONCURRENCY: z.coerce.number().int().min(1).max(16).default(2),
  /**
   * Read rate of the content scrub, which re-reads every verified image of its hosts against its
   * seal (all RAM chunks) to find damage that appeared after the verdict; 0 turns it off.
   */
  VMSAVE_SCRUB_BYTES_PER_SEC: z.coerce
    .number()
    .int('a whole number of bytes per second')
    .min(0, 'at least 0 (0: no scrub)')
    .default(64 * 1024 * 1024),
  /** Pause between the end of one scrub pass over the verified images and the start of the next. */
  VMSAVE_SCRUB_INTERVAL_MS: z.coerce
    .number()
    .int()
    .min(100, 'at least 100')
    .max(30 * 24 * 3600 * 1000, 'at most 30 days')
    .default(3600 * 1000),
  /** `/metrics`: VMSAVE_METRICS_HOST (127.0.0.1) and VMSAVE_METRICS_PORT (9466; 0 = off). */
  ...metricsEnv('verifier'),
});
export type VerifierConfig = z.infer<typeof VerifierEnv>;

export function loadConfig(env: Record<string, string | undefined> = process.env): VerifierConfig {
  return parseEnv(VerifierEnv, env, 'verifier');
}
