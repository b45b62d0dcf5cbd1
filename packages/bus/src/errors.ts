/**
 * Errors of the bus package.
 *
 *   BusError                  root: code, retryable, cause
 *   ├── BusValidationError    a message does not match its schema (never retryable)
 *   ├── BusPublishError       the server did not take a publish (retryable)
 *   └── BusRequestTimeout     no answer to a core request in time (retryable)
 */
export class BusError extends Error {
  override name = 'BusError';
  constructor(
    message: string,
    readonly code: string,
    readonly retryable: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export class BusValidationError extends BusError {
  override name = 'BusValidationError';
  constructor(
    message: string,
    readonly issues: string[],
    options?: { cause?: unknown },
  ) {
    super(message, 'invalid-message', false, options);
  }
}

export class BusPublishError extends BusError {
  override name = 'BusPublishError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'publish-failed', true, options);
  }
}

/** Whether an error thrown by a handler may succeed if the message is delivered again. */
export function isRetryable(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { retryable?: unknown }).retryable === true;
}

/** No answer within the time given (or no one listening). Retryable: the peer may come back. */
export class BusRequestTimeout extends BusError {
  override name = 'BusRequestTimeout';
  constructor(subject: string, timeoutMs: number, options?: { cause?: unknown }) {
    super(`no answer on ${subject} within ${timeoutMs} ms`, 'request-timeout', true, options);
  }
}
