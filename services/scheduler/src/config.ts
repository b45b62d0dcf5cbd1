import { z } from 'zod';
import { BusEnv, parseEnv } from '@vmsave/bus';
import { metricsEnv } from '@vmsave/metrics';

const ms = (def: number) => z.coerce.number().int().min(1).default(def);

export const SchedulerEnv = BusEnv.extend({
  /** Concurrent jobs per host unless the host announces its own limit. */
  VMSAVE_HOST_LIMIT: z.coerce.number().int().min(1).max(64).default(2),
  VMSAVE_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(20).default(3),
  VMSAVE_RETRY_BASE_MS: ms(2000),
  VMSAVE_RETRY_MAX_MS: ms(60_000),
  /** A job whose executor sent no heartbeat naming it for this long is lost. */
  VMSAVE_HEARTBEAT_TIMEOUT_MS: ms(15_000),
  VMSAVE_HOST_OFFLINE_MS: ms(30_000),
  VMSAVE_LEASE_TTL_MS: ms(30_000),
  /**
   * Time to live of a scheduler's VM-partition leases (`ownership.ts`): a dead scheduler's
   * partitions are taken within about this long. Must stay below VMSAVE_LEASE_TTL_MS, so a
   * takeover renews running jobs' VM leases before they lapse. Default: 15000 (a burst's event-loop
   * stalls of a few seconds lapsed 5 s leases; docs/scheduler.md), or half of
   * VMSAVE_LEASE_TTL_MS when that is shorter.
   */
  VMSAVE_PARTITION_TTL_MS: z.coerce.number().int().min(1).optional(),
  /** This scheduler's name in leases and logs (default `scheduler-<pid>-<random>`). */
  VMSAVE_SCHEDULER_ID: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/, 'VMSAVE_SCHEDULER_ID: letters, digits, . _ : - (max 128), starting with a letter or digit')
    .optional(),
  /** How long past its deadline a silent job may run before the scheduler fails it. */
  VMSAVE_DEADLINE_GRACE_MS: ms(30_000),
  VMSAVE_TICK_MS: ms(1000),
  /** Commands admitted at once (fetched in batches, their events published without waiting for each other's acks). */
  VMSAVE_ADMISSION_WINDOW: z.coerce.number().int().min(1).max(4096).default(256),
  /**
   * A completed save with no verdict this long after `SaveCompleted` is verified again
   * (`VerificationOverdue` notice 1); still none after as long again, it is raised (notice 2).
   */
  VMSAVE_VERDICT_TIMEOUT_MS: ms(120_000),
  /** A snapshot of the folded state (Redis, `snapshot.ts`) after this many log events; 0 = no snapshots (full replay at start). */
  VMSAVE_SNAPSHOT_EVERY: z.coerce.number().int().min(0).default(200_000),
  /** …or this long after the previous one, if events came since. */
  VMSAVE_SNAPSHOT_INTERVAL_MS: ms(300_000),
  /** `/metrics`: VMSAVE_METRICS_HOST (127.0.0.1) and VMSAVE_METRICS_PORT (9464; 0 = off). */
  ...metricsEnv('scheduler'),
});
export type SchedulerConfig = Omit<z.infer<typeof SchedulerEnv>, 'VMSAVE_PARTITION_TTL_MS'> & { VMSAVE_PARTITION_TTL_MS: number };

/** Parse the scheduler's settings once; the error names the variable and the rule. */
export function loadConfig(env: Record<string, string | undefined> = process.env): SchedulerConfig {
  const parsed = parseEnv(SchedulerEnv, env, 'scheduler');
  const cfg = { ...parsed, VMSAVE_PARTITION_TTL_MS: parsed.VMSAVE_PARTITION_TTL_MS ?? Math.max(1, Math.min(15_000, Math.floor(parsed.VMSAVE_LEASE_TTL_MS / 2))) };
  if (cfg.VMSAVE_PARTITION_TTL_MS >= cfg.VMSAVE_LEASE_TTL_MS) {
    throw new Error(
      `scheduler configuration: VMSAVE_PARTITION_TTL_MS: must be below VMSAVE_LEASE_TTL_MS (${cfg.VMSAVE_PARTITION_TTL_MS} ≥ ${cfg.VMSAVE_LEASE_TTL_MS}), so a takeover comes before running jobs' VM leases lapse`,
    );
  }
  return cfg;
}
