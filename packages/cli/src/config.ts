import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { BusEnv, parseEnv } from '@vmsave/bus';

/**
 * This host as the local commands (`vm`, offline `save --qmp` / `restore --local`, `demo`) see
 * it: the executor's directories and host name, read from the same variables the executor reads.
 */
export const LocalEnv = z.object({
  /** This host's name, recorded in the images an offline save writes (default: the host name). */
  VMSAVE_HOST: z
    .string()
    .regex(/^[A-Za-z0-9_-][A-Za-z0-9_:-]{0,127}$/, 'letters, digits, _ - : only')
    .optional(),
  /** Base directory; the three below default to subdirectories of it. */
  VMSAVE_STATE_DIR: z.string().default(path.join('.vmsave', 'executor')),
  VMSAVE_QMP_DIR: z.string().optional(),
  VMSAVE_IMAGE_DIR: z.string().optional(),
  VMSAVE_VM_DIR: z.string().optional(),
});

export interface LocalConfig extends z.infer<typeof LocalEnv> {
  /** VMSAVE_HOST, or this machine's name as a bus host token. */
  host: string;
  /** Absolute. */
  stateDir: string;
  qmpDir: string;
  imageDir: string;
  vmDir: string;
  /** Where detached QEMUs started from here write their stderr. */
  logDir: string;
}

/** This host's executor directories (relative to the working directory) and name; the error names the variable and the rule. */
export function loadLocalConfig(env: Record<string, string | undefined> = process.env): LocalConfig {
  const c = parseEnv(LocalEnv, env, 'vmsave');
  const stateDir = path.resolve(c.VMSAVE_STATE_DIR);
  return {
    ...c,
    host: c.VMSAVE_HOST ?? os.hostname().replace(/[^A-Za-z0-9_-]/g, '-'),
    stateDir,
    qmpDir: path.resolve(c.VMSAVE_QMP_DIR ?? path.join(stateDir, 'qmp')),
    imageDir: path.resolve(c.VMSAVE_IMAGE_DIR ?? path.join(stateDir, 'images')),
    vmDir: path.resolve(c.VMSAVE_VM_DIR ?? path.join(stateDir, 'vms')),
    logDir: path.join(stateDir, 'logs'),
  };
}

/** The CLI's own settings (the bus ones, plus the client role's password for a private NATS). */
export const CliEnv = BusEnv.extend({
  /** Password of the NATS `client` role, used when the server refuses anonymous clients and NATS_USER is unset. */
  VMSAVE_NATS_PASS_CLIENT: z.string().optional(),
  /** Where `npm run setup` keeps `env` (secrets); default `./.vmsave`. */
  VMSAVE_DATA_DIR: z.string().optional(),
  /** Admission answer timeout (ms). */
  VMSAVE_ADMISSION_TIMEOUT_MS: z.coerce.number().int().min(100).default(10_000),
  ...LocalEnv.shape,
});
export type CliConfig = z.infer<typeof CliEnv>;

/**
 * Parse the CLI's environment once. `.vmsave/env` (written by `npm run setup`) fills in the
 * client role's password only, `.vmsave/nats.url` (written by `npm start`) NATS_URL only;
 * variables already set win.
 */
export function loadCliConfig(env: Record<string, string | undefined> = process.env): CliConfig {
  const c = parseEnv(CliEnv, env, 'vmsave');
  // NATS_URL unset: `npm start` writes `.vmsave/nats.url` while it runs vmsave's own NATS on
  // another port, because the default one accepts anonymous clients (docs/operations.md).
  if (!env.NATS_URL) {
    try {
      const url = readFileSync(path.join(path.resolve(c.VMSAVE_DATA_DIR ?? '.vmsave'), 'nats.url'), 'utf8').trim();
      if (url) c.NATS_URL = url;
    } catch {
      /* no such file: the default URL */
    }
  }
  if (!c.VMSAVE_NATS_PASS_CLIENT) {
    try {
      const text = readFileSync(path.join(path.resolve(c.VMSAVE_DATA_DIR ?? '.vmsave'), 'env'), 'utf8');
      const m = /^(?:export\s+)?VMSAVE_NATS_PASS_CLIENT\s*=\s*["']?([^"'\n]*)["']?\s*$/m.exec(text);
      if (m?.[1]) c.VMSAVE_NATS_PASS_CLIENT = m[1];
    } catch {
      /* no secrets file: anonymous */
    }
  }
  return c;
}
