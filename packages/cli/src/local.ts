/** This host's executor directories and QEMU, as `vm`, offline `save`/`restore` and `demo` use them. */
import os from 'node:os';
import { loadConfig, VmRegistry, type ExecutorConfig } from '@vmsave/executor';
import { detectAccel, probeQemu, type Accel } from '@vmsave/qemu';
import type { QemuCapabilities } from '@vmsave/contracts';

export interface LocalHost {
  cfg: ExecutorConfig;
  vms: VmRegistry;
  accel: Accel;
  caps: QemuCapabilities;
  /** The raw probe (machine aliases). */
  machineAliases: Record<string, string>;
}

/** Same settings as the executor on this machine (VMSAVE_STATE_DIR, VMSAVE_VM_DIR, …, relative to the working directory). */
export function localConfig(env: Record<string, string | undefined> = process.env): ExecutorConfig {
  return loadConfig(env);
}

export async function localHost(env: Record<string, string | undefined> = process.env, opts: { qmpDir?: string } = {}): Promise<LocalHost> {
  const cfg = localConfig(env);
  const q = await probeQemu();
  const accel = await detectAccel();
  const vms = new VmRegistry(cfg.vmDir, opts.qmpDir ?? cfg.qmpDir, accel);
  await vms.init();
  return {
    cfg, vms, accel, machineAliases: q.machineAliases,
    caps: { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel },
  };
}

/** This machine's name as a bus host token (what the executor uses by default). */
export function localHostName(cfg: ExecutorConfig): string {
  return cfg.VMSAVE_HOST || os.hostname().replace(/[^A-Za-z0-9_-]/g, '-');
}
