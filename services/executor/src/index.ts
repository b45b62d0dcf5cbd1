export { saveVm, type SaveVmOptions, type SaveVmResult } from './ops/save.ts';
export { restoreImage, type RestoreImageOptions, type RestoreImageResult } from './ops/restore.ts';
export { OpError, OpCancelled, classify, type OpStage } from './ops/errors.ts';
export { loadConfig, ExecutorEnv, type ExecutorConfig } from './config.ts';
export { VmRegistry } from './vms.ts';
export { launchDetached, type DetachedLaunchOptions } from './detached.ts';
