/**
 * Errors of the `vmsave` command; each maps to one exit code and is printed as one line.
 *
 *   CliError            root: exitCode, message (one line), cause
 *   ├── UsageError      bad arguments (2)
 *   ├── RejectedError   refused: admission rule, failed verification checks (3)
 *   ├── JobFailedError  a job or a local save/restore failed or was cancelled (4)
 *   └── UnreachableError the bus does not answer, or nothing answered a request (5)
 */
export const EXIT = {
  ok: 0,
  error: 1,
  usage: 2,
  rejected: 3,
  failed: 4,
  unreachable: 5,
} as const;

export class CliError extends Error {
  override name = 'CliError';
  constructor(
    message: string,
    readonly exitCode: number = EXIT.error,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
  }
}

export class UsageError extends CliError {
  override name = 'UsageError';
  constructor(
    message: string,
    readonly command?: string,
  ) {
    super(message, EXIT.usage);
  }
}

export class RejectedError extends CliError {
  override name = 'RejectedError';
  constructor(
    message: string,
    readonly rule?: string,
  ) {
    super(message, EXIT.rejected);
  }
}

export class JobFailedError extends CliError {
  override name = 'JobFailedError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, EXIT.failed, options);
  }
}

export class UnreachableError extends CliError {
  override name = 'UnreachableError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, EXIT.unreachable, options);
  }
}

/** One line: newlines folded, so a multi-line QEMU or zod message stays greppable. */
export function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, '; ').trim();
}
