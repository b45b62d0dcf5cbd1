import { QmpError, type QmpClient } from '@vmsave/qmp';
import { QemuStateError } from './errors.ts';

/** QEMU's run state, as `query-status` reports it (e.g. running, paused, prelaunch, postmigrate, inmigrate). */
export interface VmStatus {
  status: string;
  running: boolean;
}

export async function queryStatus(qmp: QmpClient, options: { signal?: AbortSignal } = {}): Promise<VmStatus> {
  return qmp.execute<VmStatus>('query-status', undefined, options);
}

/** Stops the vCPUs if they run. Returns whether they were running (to resume on failure). */
export async function pauseIfRunning(qmp: QmpClient, options: { signal?: AbortSignal } = {}): Promise<boolean> {
  const { running } = await queryStatus(qmp, options);
  if (!running) return false;
  await qmp.execute('stop', undefined, options);
  return true;
}

/**
 * Runs the vCPUs. Works from `paused`, `prelaunch` and `postmigrate` (where a
 * completed save leaves the VM). Refuses while an incoming migration is
 * pending (`inmigrate`), where `cont` would only be queued by QEMU. `incomingCompleted`: skip the
 * `query-status` (see below).
 */
export async function resume(qmp: QmpClient, options: { signal?: AbortSignal; incomingCompleted?: boolean } = {}): Promise<void> {
  const call = { signal: options.signal };
  // `incomingCompleted`: the caller saw this QEMU's incoming migration complete (restoreFromFds
  // returned), so it is paused or already running, never `inmigrate`, and `cont` is harmless on a
  // running VM: one round trip instead of two.
  const { status, running } = options.incomingCompleted ? { status: 'paused', running: false } : await queryStatus(qmp, call);
  if (running) return;
  if (status === 'inmigrate') throw new QemuStateError('cannot resume a VM that is waiting for an incoming migration', 'runstate');
  try {
    await qmp.execute('cont', undefined, call);
  } catch (error) {
    if (error instanceof QmpError) {
      throw new QemuStateError(`cannot resume the VM from ${status}: ${error.message}`, 'runstate', { cause: error });
    }
    throw error;
  }
}
