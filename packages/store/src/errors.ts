/**
 * Errors of the Redis store.
 *
 *   StoreError              root: code, retryable, cause
 *   └── RedisConnectError   Redis refused or did not answer the first connection (code `auth`: a password is missing or wrong)
 */
export class StoreError extends Error {
  override name = 'StoreError';
  constructor(
    message: string,
    readonly code: string,
    readonly retryable: boolean,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
  }
}

export class RedisConnectError extends StoreError {
  override name = 'RedisConnectError';
  constructor(
    message: string,
    /** `auth` (NOAUTH, WRONGPASS: fix the URL's password) or `unreachable`. */
    code: 'auth' | 'unreachable',
    options: { cause?: unknown } = {},
  ) {
    super(message, code, code !== 'auth', options);
  }
}
