/**
 * Errors of a save or restore run.
 *
 *   OpError            root: stage (where it failed), code, retryable, cause (the QEMU/QMP/image error)
 *   └── OpCancelled    the run was cancelled on request (not a failure)
 */
export type OpStage = 'connect' | 'pause' | 'image' | 'migrate' | 'finalize' | 'resume' | 'prepare' | 'start-qemu' | 'restore' | 'deadline';

export class OpError extends Error {
  override name = 'OpError';
  constructor(
    message: string,
    readonly stage: OpStage,
    readonly code: string,
    readonly retryable: boolean,
    options: { cause?: unknown; vmResumed?: boolean; imageKept?: string; qemuStderr?: string } = {},
  ) {
    super(message, { cause: options.cause });
    this.vmResumed = options.vmResumed ?? false;
    this.imageKept = options.imageKept;
    this.qemuStderr = options.qemuStderr;
  }
  vmResumed: boolean;
  imageKept?: string;
  qemuStderr?: string;
}

export class OpCancelled extends OpError {
  override name = 'OpCancelled';
}

/** Code and retryability of any error thrown below us (QMP, QEMU, image, fs). */
export function classify(err: unknown): { code: string; retryable: boolean; message: string } {
  const e = err as { code?: unknown; retryable?: unknown; message?: unknown; errno?: unknown; cause?: unknown };
  const message = typeof e?.message === 'string' ? e.message : String(err);
  const sys = findSysCode(err);
  if (sys) return { code: sys, retryable: sys === 'EAGAIN' || sys === 'EBUSY', message };
  return {
    code: typeof e?.code === 'string' ? e.code : 'error',
    retryable: e?.retryable === true,
    message,
  };
}

/** A system error code (ENOSPC, EACCES, …) anywhere in the cause chain or the message. */
function findSysCode(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; cause?: unknown; message?: unknown } | undefined, i = 0; e && i < 8; e = e.cause as typeof e, i++) {
    if (typeof e.code === 'string' && /^E[A-Z]+$/.test(e.code)) return e.code;
    if (typeof e.message === 'string') {
      if (/No space left on device/i.test(e.message)) return 'ENOSPC';
      if (/Permission denied/i.test(e.message)) return 'EACCES';
      if (/Read-only file system/i.test(e.message)) return 'EROFS';
    }
  }
  return undefined;
}
