import { readFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { BusEnv, parseEnv } from '@vmsave/bus';

/** The CLI's own settings (the bus ones, plus the client role's password for a private NATS). */
export const CliEnv = BusEnv.extend({
  /** Password of the NATS `client` role, used when the server refuses anonymous clients and NATS_USER is unset. */
  VMSAVE_NATS_PASS_CLIENT: z.string().optional(),
  /** Where `npm run setup` keeps `env` (secrets); default `./.vmsave`. */
  VMSAVE_DATA_DIR: z.string().optional(),
  /** Admission answer timeout (ms). */
  VMSAVE_ADMISSION_TIMEOUT_MS: z.coerce.number().int().min(100).default(10_000),
});
export type CliConfig = z.infer<typeof CliEnv>;

/**
 * Parse the CLI's environment once. `.vmsave/env` (written by `npm run setup`) fills in the
 * client role's password only; variables already set win.
 */
export function loadCliConfig(env: Record<string, string | undefined> = process.env): CliConfig {
  const c = parseEnv(CliEnv, env, 'vmsave');
  if (!c.VMSAVE_NATS_PASS_CLIENT) {
    try {
      const text = readFileSync(path.join(path.resolve(c.VMSAVE_DATA_DIR ?? '.vmsave'), 'env'), 'utf8');
      const m = /^(?:export\s+)?VMSAVE_NATS_PASS_CLIENT\s*=\s*["']?([^"'\n]*)["']?\s*$/m.exec(text);
      if (m?.[1]) c.VMSAVE_NATS_PASS_CLIENT = m[1];
    } catch { /* no secrets file: anonymous */ }
  }
  return c;
}
