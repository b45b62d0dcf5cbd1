import { z } from 'zod';
import { BusEnv, parseEnv } from '@vmsave/bus';

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
});
export type VerifierConfig = z.infer<typeof VerifierEnv>;

export function loadConfig(env: Record<string, string | undefined> = process.env): VerifierConfig {
  return parseEnv(VerifierEnv, env, 'verifier');
}
