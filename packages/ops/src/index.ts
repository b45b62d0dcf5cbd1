/**
 * @vmsave/ops — one VM's save and restore on this host, on top of `@vmsave/qemu` and
 * `@vmsave/image`: what the executor runs for a job and the CLI runs offline. No bus, no
 * environment: every setting (directories, accelerator, bandwidth cap, host name) is an option.
 */
export { saveVm, savePoints, type SaveVmOptions, type SaveVmResult, type SavePoint, type LiveSaveResult } from './save.ts';
export {
  restoreImage,
  startRestoreHead,
  discardRestoreHead,
  type RestoreHead,
  type RestoreImageOptions,
  type RestoreImageResult,
  type ContentGate,
  type RestoreTimings,
} from './restore.ts';
export { OpError, OpCancelled, classify, type OpStage } from './errors.ts';
export { VmRegistry, type VmRegistryOptions } from './vms.ts';
export { JobJournal, type JobRecord } from './journal.ts';
export { recoverInterrupted, type RecoveryResult } from './recover.ts';
