/** This host's executor directories and QEMU, as `vm`, offline `save`/`restore` and `demo` use them. */
import { VmRegistry } from '@vmsave/ops';
import type { Accel } from '@vmsave/qemu';
import type { QemuCapabilities } from '@vmsave/contracts';
import { loadLocalConfig, type LocalConfig } from './config.ts';
import { accelOf, cachedProbe } from './host-caps.ts';

export interface LocalHost {
  cfg: LocalConfig;
  vms: VmRegistry;
  accel: Accel;
  caps: QemuCapabilities;
  /** The raw probe (machine aliases). */
  machineAliases: Record<string, string>;
}

/** Same directories and host name as the executor on this machine (VMSAVE_HOST, VMSAVE_STATE_DIR, VMSAVE_VM_DIR, …). */
export function localConfig(env: Record<string, string | undefined> = process.env): LocalConfig {
  return loadLocalConfig(env);
}

/**
 * The registry of this host's VMs, without probing QEMU: a VM started from it gets the detected
 * accelerator (`detectAccel`) when it starts. `qmpDir` overrides where the sockets go; the
 * detached QEMUs' logs stay in the state directory.
 */
export async function localRegistry(cfg: LocalConfig, opts: { qmpDir?: string; accel?: Accel } = {}): Promise<VmRegistry> {
  const vms = new VmRegistry({ vmDir: cfg.vmDir, qmpDir: opts.qmpDir ?? cfg.qmpDir, logDir: cfg.logDir, accel: opts.accel });
  await vms.init();
  return vms;
}

export async function localHost(env: Record<string, string | undefined> = process.env, opts: { qmpDir?: string } = {}): Promise<LocalHost> {
  const cfg = localConfig(env);
  // Cached in the state directory, keyed by the QEMU binary: probing starts a QEMU.
  const q = await cachedProbe(cfg.stateDir, env);
  const accel = accelOf(q);
  const vms = await localRegistry(cfg, { qmpDir: opts.qmpDir, accel });
  return {
    cfg,
    vms,
    accel,
    machineAliases: q.machineAliases,
    caps: { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel },
  };
}

/** This machine's name as a bus host token (VMSAVE_HOST when set, what the executor uses by default). */
export function localHostName(cfg: LocalConfig): string {
  return cfg.host;
}
