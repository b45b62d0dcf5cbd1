import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { BusEnv, parseEnv } from '@vmsave/bus';
import { metricsEnv } from '@vmsave/metrics';
import { savePoints, type SavePoint } from '@vmsave/ops';
import { parseDurationMs } from '@vmsave/jobs';

const bool = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');

/** A comma-separated list of VM names (`VMSAVE_WARM_VMS`, `VMSAVE_AUTOSTART`), each checked. */
const vmNameList = () =>
  z
    .string()
    .default('')
    .transform((v, ctx) => {
      const names = v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      for (const n of names) if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(n)) ctx.addIssue({ code: 'custom', message: `"${n}" is not a VM name` });
      return names;
    });

export const ExecutorEnv = BusEnv.extend({
  /** This host's name on the bus (`vmsave.work.<host>`). */
  VMSAVE_HOST: z
    .string()
    .regex(/^[A-Za-z0-9_-][A-Za-z0-9_:-]{0,127}$/, 'letters, digits, _ - : only')
    .default(os.hostname().replace(/[^A-Za-z0-9_-]/g, '-')),
  /** Base directory; the three below default to subdirectories of it. */
  VMSAVE_STATE_DIR: z.string().default(path.resolve('.vmsave', 'executor')),
  VMSAVE_QMP_DIR: z.string().optional(),
  VMSAVE_IMAGE_DIR: z.string().optional(),
  VMSAVE_VM_DIR: z.string().optional(),
  VMSAVE_SHARED_IMAGE_DIR: bool.default(false),
  VMSAVE_MAX_CONCURRENT: z.coerce.number().int().min(1).max(64).default(2),
  VMSAVE_KEEP_PARTIAL: bool.default(false),
  /** Cap on each save's write rate in bytes/s, so saves leave disk bandwidth to the VMs (0: unlimited). */
  VMSAVE_SAVE_MAX_BANDWIDTH: z.coerce.number().int().min(0).default(0),
  /**
   * Fault injection for the fault suite, never set in production: at each listed point of a save
   * (before-migrate, after-completed) the executor creates `<state>/jobs/<jobId>.hold.<point>` and
   * waits until that file is removed, so a test can kill or restart something exactly there.
   */
  VMSAVE_FAILPOINTS: z
    .string()
    .default('')
    .transform((v, ctx) => {
      const points = v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      for (const p of points) if (!(savePoints as readonly string[]).includes(p)) ctx.addIssue({ code: 'custom', message: `"${p}" is not a failpoint (${savePoints.join(', ')})` });
      return points as SavePoint[];
    }),
  /**
   * Warm restore pool: QEMUs kept waiting (`-incoming defer`) per VM shape this executor restored
   * recently (or named in VMSAVE_WARM_VMS). Default 0: a waiting QEMU opens the shape's host
   * resources (disk images, tap devices, sockets in its arguments) a second time while the VM
   * runs, which only the operator knows to be harmless.
   */
  VMSAVE_WARM_POOL: z.coerce.number().int().min(0).max(8).default(0),
  /** Bound on the summed RSS of the waiting QEMUs, in MiB (a waiting QEMU holds no guest RAM: ~20–40 MiB each). */
  VMSAVE_WARM_POOL_MAX_MIB: z.coerce.number().int().min(16).default(256),
  /** VM names (comma-separated) whose shapes are kept warm from the start, as well as the ones restored. */
  VMSAVE_WARM_VMS: vmNameList(),
  /**
   * `save`: on SIGTERM save every VM this host runs (a save job each, through the scheduler) within
   * VMSAVE_SHUTDOWN_BUDGET_MS, and restore them at the next start (shutdown-save.ts). Default `off`.
   */
  VMSAVE_ON_SHUTDOWN: z.enum(['off', 'save'], { error: 'VMSAVE_ON_SHUTDOWN: off or save' }).default('off'),
  /** Time for all shutdown saves together, ms; a VM not saved by then is named and keeps running until QEMU dies. */
  VMSAVE_SHUTDOWN_BUDGET_MS: z.coerce.number().int().min(1000).max(3_600_000).default(60_000),
  /** Format of the shutdown saves (`auto`: sparse when the host's QEMU has mapped-ram). */
  VMSAVE_SHUTDOWN_FORMAT: z.enum(['auto', 'sparse', 'legacy']).default('auto'),
  VMSAVE_ANNOUNCE_MS: z.coerce.number().int().min(100).default(10_000),
  VMSAVE_HEARTBEAT_MS: z.coerce.number().int().min(100).default(2000),
  /** VM names (comma-separated) started at boot when defined and not running; they outlive the executor. */
  VMSAVE_AUTOSTART: vmNameList(),
  /** Quota of the image directory in bytes (suffixes K, M, G, T: powers of 1024); a save that would pass it is refused (rule `quota`). Unset: none. */
  VMSAVE_IMAGE_QUOTA: z
    .string()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v === '') return undefined;
      const m = /^(\d+(?:\.\d+)?)([KMGT]i?B?)?$/i.exec(v.trim());
      if (!m) {
        ctx.addIssue({ code: 'custom', message: `"${v}" is not a size (bytes, or with K, M, G, T: e.g. 500G)` });
        return undefined;
      }
      const power = m[2] ? 'KMGT'.indexOf(m[2][0]!.toUpperCase()) + 1 : 0;
      return Math.floor(Number(m[1]) * 1024 ** power);
    }),
  /** Retention (lifecycle.ts): keep the newest N verified images of each VM on this host (unset: no such rule). */
  VMSAVE_RETENTION_KEEP_LAST: z.coerce.number().int().min(1).optional(),
  /** Retention: keep images younger than this (`7d`, `12h`, `30m`, or ms; unset: no such rule). */
  VMSAVE_RETENTION_MAX_AGE: z
    .string()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v === '') return undefined;
      const ms = parseDurationMs(v);
      if (ms === undefined) ctx.addIssue({ code: 'custom', message: `"${v}" is not a duration (e.g. 7d, 12h, 30m, 90s or milliseconds)` });
      return ms;
    }),
  /** How often the periodic prune runs when a retention rule is set. */
  VMSAVE_RETENTION_INTERVAL: z
    .string()
    .default('1h')
    .transform((v, ctx) => {
      const ms = parseDurationMs(v);
      if (ms === undefined || ms < 1000) ctx.addIssue({ code: 'custom', message: `"${v}" is not a duration of at least 1s (e.g. 1h, 15m)` });
      return ms ?? 3_600_000;
    }),
  /**
   * Copy verified images into the bus's object store (replicate.ts): `bus` for every save of this
   * host that does not say `replicate: none`, `none` (default) only for saves asking `replicate: bus`.
   */
  VMSAVE_REPLICATE: z.enum(['bus', 'none'], { error: 'VMSAVE_REPLICATE: bus or none' }).default('none'),
  /** At start, verified saves of this long ago are still uploaded when the log says they are not yet (`7d`, `12h`, or ms). */
  VMSAVE_REPLICATE_LOOKBACK: z
    .string()
    .default('7d')
    .transform((v, ctx) => {
      const ms = parseDurationMs(v);
      if (ms === undefined) ctx.addIssue({ code: 'custom', message: `"${v}" is not a duration (e.g. 7d, 12h, 30m)` });
      return ms ?? 7 * 24 * 3_600_000;
    }),
  /** `/metrics`: VMSAVE_METRICS_HOST (127.0.0.1) and VMSAVE_METRICS_PORT (9465; 0 = off). */
  ...metricsEnv('executor'),
});

export interface ExecutorConfig extends z.infer<typeof ExecutorEnv> {
  qmpDir: string;
  imageDir: string;
  vmDir: string;
  jobsDir: string;
}

/** Parse the executor's settings once; the error names the variable and the rule. */
export function loadConfig(env: Record<string, string | undefined> = process.env): ExecutorConfig {
  const c = parseEnv(ExecutorEnv, env, 'executor');
  const base = path.resolve(c.VMSAVE_STATE_DIR);
  return {
    ...c,
    qmpDir: path.resolve(c.VMSAVE_QMP_DIR ?? path.join(base, 'qmp')),
    imageDir: path.resolve(c.VMSAVE_IMAGE_DIR ?? path.join(base, 'images')),
    vmDir: path.resolve(c.VMSAVE_VM_DIR ?? path.join(base, 'vms')),
    jobsDir: path.join(base, 'jobs'),
  };
}
