/**
 * Errors of the client library (bus errors such as `BusPublishError` pass through unchanged).
 *
 *   ClientError          root: code, retryable, cause
 *   └── JobWaitTimeout   `waitForJob` ran out of time before its condition held (retryable: wait again)
 */
export class ClientError extends Error {
  override name = 'ClientError';
  constructor(
    message: string,
    readonly code: string,
    readonly retryable: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export class JobWaitTimeout extends ClientError {
  override name = 'JobWaitTimeout';
  constructor(
    readonly jobId: string,
    /** The job's status when the time ran out. */
    readonly lastStatus: string,
    readonly timeoutMs: number,
  ) {
    super(`timed out waiting for job ${jobId} (last state: ${lastStatus})`, 'wait-timeout', true);
  }
}
