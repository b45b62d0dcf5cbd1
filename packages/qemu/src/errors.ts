/**
 * Errors raised while starting QEMU and driving migrations. One root; every
 * error names the stage it happened in, keeps its cause (often a QmpError),
 * and says whether retrying the whole operation can help.
 *
 * ```
 * QemuError                         code                  retryable
 *  ├── QemuLaunchError              LAUNCH_FAILED         no    QEMU exited or never opened its QMP socket (stderr kept)
 *  ├── QemuProbeError               PROBE_FAILED          no    could not learn what this QEMU binary supports
 *  ├── QemuStateError               BAD_STATE             no    VM/migration state does not allow the request
 *  ├── QemuUnsupportedError         UNSUPPORTED           no    this QEMU lacks a feature asked for (mapped-ram, direct-io)
 *  ├── QemuInvalidArgumentError     INVALID_ARGUMENT      no    caller passed something unusable
 *  └── MigrationError               (one of the below)
 *       ├── MigrationFailedError    MIGRATION_FAILED      no    QEMU refused or reported `failed`; its reason verbatim
 *       ├── MigrationCancelledError MIGRATION_CANCELLED   no    status became `cancelled` without us asking
 *       ├── MigrationStalledError   MIGRATION_STALLED     yes   no progress, or QEMU stopped answering, past the deadline
 *       ├── MigrationAbortedError   MIGRATION_ABORTED     no    the caller's AbortSignal fired (migration cancelled)
 *       └── QemuExitedError         QEMU_EXITED           yes   QMP connection lost mid-migration (QEMU died; stderr kept)
 * ```
 */

export type QemuErrorCode =
  | 'LAUNCH_FAILED'
  | 'PROBE_FAILED'
  | 'BAD_STATE'
  | 'UNSUPPORTED'
  | 'INVALID_ARGUMENT'
  | 'MIGRATION_FAILED'
  | 'MIGRATION_CANCELLED'
  | 'MIGRATION_STALLED'
  | 'MIGRATION_ABORTED'
  | 'QEMU_EXITED';

/** Where in a launch or migration an error happened. */
export type QemuStage = 'launch' | 'probe' | 'runstate' | 'prepare' | 'add-fd' | 'set-capabilities' | 'set-parameters' | 'migrate' | 'transfer' | 'cleanup';

export interface QemuErrorOptions {
  cause?: unknown;
  /** Tail of QEMU's stderr, when known: after a failed incoming migration the real reason is only there. */
  stderr?: string;
}

export class QemuError extends Error {
  override readonly name: string = 'QemuError';
  readonly code: QemuErrorCode;
  readonly retryable: boolean;
  readonly stage: QemuStage;
  readonly stderr: string | undefined;

  constructor(message: string, code: QemuErrorCode, stage: QemuStage, retryable: boolean, options?: QemuErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.stage = stage;
    this.retryable = retryable;
    this.stderr = options?.stderr;
  }
}

export class QemuLaunchError extends QemuError {
  override readonly name = 'QemuLaunchError';
  constructor(message: string, options?: QemuErrorOptions) {
    super(withStderr(message, options?.stderr), 'LAUNCH_FAILED', 'launch', false, options);
  }
}

export class QemuProbeError extends QemuError {
  override readonly name = 'QemuProbeError';
  constructor(message: string, options?: QemuErrorOptions) {
    super(withStderr(message, options?.stderr), 'PROBE_FAILED', 'probe', false, options);
  }
}

export class QemuStateError extends QemuError {
  override readonly name = 'QemuStateError';
  constructor(message: string, stage: QemuStage, options?: QemuErrorOptions) {
    super(message, 'BAD_STATE', stage, false, options);
  }
}

export class QemuUnsupportedError extends QemuError {
  override readonly name = 'QemuUnsupportedError';
  constructor(message: string, options?: QemuErrorOptions) {
    super(message, 'UNSUPPORTED', 'prepare', false, options);
  }
}

export class QemuInvalidArgumentError extends QemuError {
  override readonly name = 'QemuInvalidArgumentError';
  constructor(message: string) {
    super(message, 'INVALID_ARGUMENT', 'prepare', false);
  }
}

export type MigrationDirection = 'save' | 'restore';

export class MigrationError extends QemuError {
  override readonly name: string = 'MigrationError';
  readonly direction: MigrationDirection;
  /** QEMU's own words (`error-desc`, a QMP error's desc, or the stderr line), verbatim. */
  readonly qemuReason: string | undefined;

  constructor(
    message: string,
    code: QemuErrorCode,
    stage: QemuStage,
    retryable: boolean,
    direction: MigrationDirection,
    qemuReason: string | undefined,
    options?: QemuErrorOptions,
  ) {
    super(withStderr(message, options?.stderr), code, stage, retryable, options);
    this.direction = direction;
    this.qemuReason = qemuReason;
  }
}

export class MigrationFailedError extends MigrationError {
  override readonly name = 'MigrationFailedError';
  constructor(direction: MigrationDirection, stage: QemuStage, qemuReason: string, options?: QemuErrorOptions) {
    super(`${direction} failed: ${qemuReason}`, 'MIGRATION_FAILED', stage, false, direction, qemuReason, options);
  }
}

export class MigrationCancelledError extends MigrationError {
  override readonly name = 'MigrationCancelledError';
  constructor(direction: MigrationDirection, options?: QemuErrorOptions) {
    super(`${direction} was cancelled in QEMU`, 'MIGRATION_CANCELLED', 'transfer', false, direction, undefined, options);
  }
}

export class MigrationStalledError extends MigrationError {
  override readonly name = 'MigrationStalledError';
  constructor(direction: MigrationDirection, stage: QemuStage, detail: string, options?: QemuErrorOptions) {
    super(`${direction} stalled: ${detail}`, 'MIGRATION_STALLED', stage, true, direction, undefined, options);
  }
}

export class MigrationAbortedError extends MigrationError {
  override readonly name = 'MigrationAbortedError';
  constructor(direction: MigrationDirection, stage: QemuStage, reason: unknown) {
    super(`${direction} aborted`, 'MIGRATION_ABORTED', stage, false, direction, undefined, { cause: reason });
  }
}

export class QemuExitedError extends MigrationError {
  override readonly name = 'QemuExitedError';
  constructor(direction: MigrationDirection, stage: QemuStage, qemuReason: string | undefined, options?: QemuErrorOptions) {
    super(`QEMU went away during ${direction}${qemuReason ? `: ${qemuReason}` : ''}`, 'QEMU_EXITED', stage, true, direction, qemuReason, options);
  }
}

function withStderr(message: string, stderr: string | undefined): string {
  const lines = (stderr ?? '')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !/^\S*: warning:/.test(line));
  if (lines.length === 0) return message;
  return `${message}\n  QEMU stderr:\n  ${lines.slice(-5).join('\n  ')}`;
}
