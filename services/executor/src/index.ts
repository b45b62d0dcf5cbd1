export { saveVm, type SaveVmOptions, type SaveVmResult } from './ops/save.ts';
export { restoreImage, type RestoreImageOptions, type RestoreImageResult } from './ops/restore.ts';
export { OpError, OpCancelled, classify, type OpStage } from './ops/errors.ts';
