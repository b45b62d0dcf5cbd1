import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { BusEnv, parseEnv } from '@vmsave/bus';
import { metricsEnv } from '@vmsave/metrics';
import { savePoints, type SavePoint } from '@vmsave/ops';

const bool = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');

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
  VMSAVE_WARM_VMS: z
    .string()
    .default('')
    .transform((v, ctx) => {
      const names = v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      for (const n of names) if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(n)) ctx.addIssue({ code: 'custom', message: `"${n}" is not a VM name` });
      return names;
    }),
  VMSAVE_ANNOUNCE_MS: z.coerce.number().int().min(100).default(10_000),
  VMSAVE_HEARTBEAT_MS: z.coerce.number().int().min(100).default(2000),
  /** VM names (comma-separated) started at boot when defined and not running; they outlive the executor. */
  VMSAVE_AUTOSTART: z
    .string()
    .default('')
    .transform((v, ctx) => {
      const names = v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      for (const n of names) if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(n)) ctx.addIssue({ code: 'custom', message: `"${n}" is not a VM name` });
      return names;
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
