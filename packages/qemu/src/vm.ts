import type { QmpClient } from '@vmsave/qmp';
import { QemuInvalidArgumentError } from './errors.ts';
import { detectAccel, type Accel } from './probe.ts';
import { qemuOptValue, spawnQemu, type SpawnQemuOptions, type VmProcess } from './process.ts';

/** What vmsave needs to (re)start a VM. */
export interface VmDefinition {
  name: string;
  uuid: string;
  /** Machine type, e.g. "q35" or "pc-q35-10.0". Restores should use the concrete type. */
  machine: string;
  memoryMiB: number;
  vcpus: number;
  /** Extra QEMU arguments (devices, backends), appended as given. */
  args: string[];
}

export interface LaunchOptions {
  qmpSocketPath: string;
  /** Start with `-incoming defer`, to receive a migration (restore). */
  incoming?: 'defer';
  /** Start with `-S` (vCPUs stopped, status `prelaunch`). */
  startPaused?: boolean;
  /** Default: {@link detectAccel}. */
  accel?: Accel;
  /** QEMU's working directory. */
  stateDir?: string;
  binary?: string;
  readyTimeoutMs?: number;
  stderrLimitBytes?: number;
  signal?: AbortSignal;
  /** See {@link SpawnQemuOptions.killWithParent}. Default false. */
  killWithParent?: boolean;
  /** QEMU outlives the caller, stderr to `logFile`: see {@link SpawnQemuOptions.detached}. */
  detached?: { logFile: string };
  /** Keep the readiness check's QMP session for `takeQmp()`: see {@link SpawnQemuOptions.keepQmp}. */
  keepQmp?: boolean;
  /** See {@link SpawnQemuOptions.onSession}. */
  onSession?(qmp: QmpClient): void;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MACHINE = /^[A-Za-z0-9._-]+$/;

/** The QEMU arguments for a definition (without the QMP socket). Pure. */
export function buildVmArgs(def: VmDefinition, options: { accel: Accel; incoming?: 'defer'; startPaused?: boolean }): string[] {
  if (!def.name) throw new QemuInvalidArgumentError('VM name is empty');
  if (!UUID.test(def.uuid)) throw new QemuInvalidArgumentError(`VM uuid ${JSON.stringify(def.uuid)} is not a UUID`);
  if (!MACHINE.test(def.machine)) throw new QemuInvalidArgumentError(`machine type ${JSON.stringify(def.machine)} is not valid`);
  if (!Number.isInteger(def.memoryMiB) || def.memoryMiB < 1) {
    throw new QemuInvalidArgumentError(`memoryMiB must be a positive integer, got ${def.memoryMiB}`);
  }
  if (!Number.isInteger(def.vcpus) || def.vcpus < 1) {
    throw new QemuInvalidArgumentError(`vcpus must be a positive integer, got ${def.vcpus}`);
  }
  const args = [
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-name',
    `guest=${qemuOptValue(def.name)}`,
    '-uuid',
    def.uuid,
    '-machine',
    `${def.machine},accel=${options.accel}`,
    '-m',
    `${def.memoryMiB}M`,
    '-smp',
    String(def.vcpus),
  ];
  // An incoming QEMU without -S starts the guest as soon as a live image (saved running) is loaded.
  if (options.startPaused || options.incoming === 'defer') args.push('-S');
  if (options.incoming === 'defer') args.push('-incoming', 'defer');
  args.push(...def.args);
  return args;
}

/**
 * Starts a VM from its definition and resolves once QEMU answers on its
 * QMP socket.
 * Dispose the returned handle to stop it.
 *
 * @example
 * ```ts
 * await using vm = await launchVm(def, { qmpSocketPath: '/run/vmsave/vm1.qmp', startPaused: true });
 * await using qmp = await vm.connectQmp();
 * ```
 */
export async function launchVm(def: VmDefinition, options: LaunchOptions): Promise<VmProcess> {
  const accel = options.accel ?? (await detectAccel(options.binary === undefined ? {} : { binary: options.binary }));
  const args = buildVmArgs(def, { accel, incoming: options.incoming, startPaused: options.startPaused });
  return spawnQemu(args, {
    qmpSocketPath: options.qmpSocketPath,
    binary: options.binary,
    cwd: options.stateDir,
    readyTimeoutMs: options.readyTimeoutMs,
    stderrLimitBytes: options.stderrLimitBytes,
    signal: options.signal,
    killWithParent: options.killWithParent,
    detached: options.detached,
    keepQmp: options.keepQmp,
    onSession: options.onSession,
  });
}
