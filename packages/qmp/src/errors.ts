/**
 * Errors raised by the QMP client. One root, every leaf says whether retrying
 * the whole operation (usually on a fresh connection) can help.
 *
 * ```
 * QmpError                      code            retryable
 *  ├── QmpConnectError          CONNECT         yes   socket absent or refused (no QEMU listening)
 *  │    └── QmpBusyError        CONNECT         yes   QEMU listens but serves another client (no greeting)
 *  ├── QmpProtocolError         PROTOCOL        no    malformed or unexpected message
 *  ├── QmpCommandError          COMMAND         no    QEMU answered {"error": {class, desc}}
 *  ├── QmpTimeoutError          TIMEOUT         yes   no answer within the deadline
 *  ├── QmpAbortedError          ABORTED         no    the caller's AbortSignal fired
 *  └── QmpDisconnectedError     DISCONNECTED    yes   connection closed or lost;
 *                               INTERRUPTED     yes   (a call that was pending when it went)
 * ```
 */

export type QmpErrorCode = 'CONNECT' | 'PROTOCOL' | 'COMMAND' | 'TIMEOUT' | 'ABORTED' | 'DISCONNECTED' | 'INTERRUPTED';

export interface QmpErrorOptions {
  cause?: unknown;
}

export class QmpError extends Error {
  override readonly name: string = 'QmpError';
  readonly code: QmpErrorCode;
  readonly retryable: boolean;

  constructor(message: string, code: QmpErrorCode, retryable: boolean, options?: QmpErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = retryable;
  }
}

export class QmpConnectError extends QmpError {
  override readonly name: string = 'QmpConnectError';
  readonly socketPath: string;

  constructor(socketPath: string, message: string, options?: QmpErrorOptions) {
    super(`cannot connect to QMP socket ${socketPath}: ${message}`, 'CONNECT', true, options);
    this.socketPath = socketPath;
  }
}

/**
 * The socket has a QEMU behind it, but it does not greet us: QMP serves one client at a time and
 * another one holds it (or its connection backlog is full). Unlike a plain QmpConnectError this
 * says the VM is there.
 */
export class QmpBusyError extends QmpConnectError {
  override readonly name = 'QmpBusyError';
}

export class QmpProtocolError extends QmpError {
  override readonly name = 'QmpProtocolError';
  /** The offending text received from QEMU, truncated. */
  readonly received: string | undefined;

  constructor(message: string, received?: string, options?: QmpErrorOptions) {
    super(message, 'PROTOCOL', false, options);
    this.received = received === undefined ? undefined : received.slice(0, 1024);
  }
}

export class QmpCommandError extends QmpError {
  override readonly name = 'QmpCommandError';
  readonly command: string;
  readonly args: Readonly<Record<string, unknown>> | undefined;
  /** QEMU's error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`. */
  readonly errorClass: string;
  /** QEMU's human-readable reason, verbatim. */
  readonly desc: string;

  constructor(command: string, args: Record<string, unknown> | undefined, errorClass: string, desc: string) {
    super(`QMP ${command} failed: ${desc} (${errorClass})`, 'COMMAND', false);
    this.command = command;
    this.args = args;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

export class QmpTimeoutError extends QmpError {
  override readonly name = 'QmpTimeoutError';
  readonly command: string;
  readonly timeoutMs: number;

  constructor(command: string, timeoutMs: number) {
    super(`QMP ${command} got no answer within ${timeoutMs} ms`, 'TIMEOUT', true);
    this.command = command;
    this.timeoutMs = timeoutMs;
  }
}

export class QmpAbortedError extends QmpError {
  override readonly name = 'QmpAbortedError';
  readonly command: string | undefined;

  constructor(command: string | undefined, reason: unknown) {
    super(command === undefined ? 'QMP operation aborted' : `QMP ${command} aborted`, 'ABORTED', false, { cause: reason });
    this.command = command;
  }
}

export class QmpDisconnectedError extends QmpError {
  override readonly name = 'QmpDisconnectedError';
  /** The command that was pending when the connection went, if any. */
  readonly command: string | undefined;

  constructor(message: string, options?: QmpErrorOptions & { command?: string; interrupted?: boolean }) {
    super(message, options?.interrupted ? 'INTERRUPTED' : 'DISCONNECTED', true, options);
    this.command = options?.command;
  }
}
