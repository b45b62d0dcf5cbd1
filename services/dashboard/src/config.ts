import { z } from 'zod';
import { BusEnv, busOptions, parseEnv, type BusOptions } from '@vmsave/bus';

const bool = z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => v === 'true' || v === '1' || v === 'yes');

/** Environment variables the dashboard reads: the shared bus ones plus its own. */
export const DashboardEnv = BusEnv.extend({
  /** Address to bind: localhost unless configured otherwise. */
  VMSAVE_DASHBOARD_HOST: z.string().min(1).default('127.0.0.1'),
  VMSAVE_DASHBOARD_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  /** When set, every request needs `Authorization: Bearer <token>` or `?token=<token>`. */
  VMSAVE_DASHBOARD_TOKEN: z.string().min(16, 'at least 16 characters').optional(),
  /**
   * Run the read-model projection in this process. Two projectors on one prefix race
   * (both skip applied sequences, but may interleave writes of one job): run exactly one.
   */
  VMSAVE_DASHBOARD_PROJECT: bool.default(true),
});

export interface DashboardConfig {
  bus: BusOptions;
  redisUrl: string;
  redisPrefix: string;
  host: string;
  port: number;
  token?: string;
  project: boolean;
}

/** Parse the dashboard's configuration once; the error names each bad variable and its rule. */
export function loadConfig(env: Record<string, string | undefined> = process.env): DashboardConfig {
  // An empty variable means "not set".
  const present = Object.fromEntries(Object.keys(DashboardEnv.shape).map((k) => [k, env[k] === '' ? undefined : env[k]]));
  const e = parseEnv(DashboardEnv, present, 'dashboard');
  return {
    bus: busOptions(e, 'dashboard'),
    redisUrl: e.REDIS_URL,
    redisPrefix: e.VMSAVE_REDIS_PREFIX,
    host: e.VMSAVE_DASHBOARD_HOST,
    port: e.VMSAVE_DASHBOARD_PORT,
    token: e.VMSAVE_DASHBOARD_TOKEN,
    project: e.VMSAVE_DASHBOARD_PROJECT,
  };
}
