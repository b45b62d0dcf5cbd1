/**
 * Errors of `@vmsave/image`.
 *
 * ```text
 * ImageError                      root: every error this package throws
 * ├── ImageExistsError            createImage: the path already exists (O_EXCL refused)
 * ├── ImageIoError                a system call failed (open, read, write, fdatasync); retryable
 * ├── ImageFormatError            the bytes are not a well-formed image
 * │   ├── ImageTruncatedError     a length or offset points past the end of the file
 * │   ├── ImageVersionError       a format version this reader does not know
 * │   └── ImageChecksumError      header + descriptor checksum mismatch
 * ├── DescriptorError             the descriptor is not valid JSON or fails its schema
 * │                               (also: a new descriptor does not fit the reserved room)
 * └── ImageStateError             the operation does not fit the image's state
 *                                 (finalizing an image that is already complete, …)
 * ```
 *
 * Expected outcomes are not errors: `verifyImage` returns failed checks and
 * `checkRestorable` returns refusals; neither throws for a malformed file.
 */

export type ImageErrorCode = 'IMAGE_EXISTS' | 'IMAGE_IO' | 'IMAGE_FORMAT' | 'IMAGE_TRUNCATED' | 'IMAGE_VERSION' | 'IMAGE_CHECKSUM' | 'IMAGE_DESCRIPTOR' | 'IMAGE_STATE';

export interface ImageErrorOptions {
  cause?: unknown;
  /** Path of the image concerned, when there is one. */
  path?: string;
}

/** Root of every error thrown by this package. */
export class ImageError extends Error {
  override readonly name: string = 'ImageError';
  readonly code: ImageErrorCode;
  /** True when the same call may succeed if tried again (I/O hiccup), false when the input is at fault. */
  readonly retryable: boolean;
  readonly path: string | undefined;

  constructor(code: ImageErrorCode, message: string, retryable: boolean, options: ImageErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = retryable;
    this.path = options.path;
  }
}

/** `createImage` refused to overwrite an existing file. */
export class ImageExistsError extends ImageError {
  override readonly name = 'ImageExistsError';
  constructor(path: string, options: ImageErrorOptions = {}) {
    super('IMAGE_EXISTS', `image ${path} already exists; vmsave never overwrites an image`, false, { ...options, path });
  }
}

/** A system call on the image failed. Retryable except for errors that will not go away by themselves. */
export class ImageIoError extends ImageError {
  override readonly name = 'ImageIoError';
  /** The errno name (`EIO`, `ENOSPC`, …) when known. */
  readonly errno: string | undefined;
  constructor(message: string, options: ImageErrorOptions & { errno?: string } = {}) {
    const permanent = ['ENOENT', 'EACCES', 'EPERM', 'EISDIR', 'ENOTDIR', 'EINVAL', 'EROFS'];
    super('IMAGE_IO', message, !permanent.includes(options.errno ?? ''), options);
    this.errno = options.errno;
  }
}

/** The bytes are not a well-formed image. Never retryable. */
export class ImageFormatError extends ImageError {
  override readonly name: string = 'ImageFormatError';
  constructor(message: string, options: ImageErrorOptions & { code?: ImageErrorCode } = {}) {
    super(options.code ?? 'IMAGE_FORMAT', message, false, options);
  }
}

/** A length or offset in the image points past the end of the file. */
export class ImageTruncatedError extends ImageFormatError {
  override readonly name = 'ImageTruncatedError';
  constructor(message: string, options: ImageErrorOptions = {}) {
    super(message, { ...options, code: 'IMAGE_TRUNCATED' });
  }
}

/** The image's format version is not one this reader knows. */
export class ImageVersionError extends ImageFormatError {
  override readonly name = 'ImageVersionError';
  readonly version: number;
  constructor(version: number, supported: readonly number[], options: ImageErrorOptions = {}) {
    super(`image format version ${version} is not supported (this reader knows ${supported.join(', ')})`, {
      ...options,
      code: 'IMAGE_VERSION',
    });
    this.version = version;
  }
}

/** The checksum over header and descriptor does not match. */
export class ImageChecksumError extends ImageFormatError {
  override readonly name = 'ImageChecksumError';
  constructor(message: string, options: ImageErrorOptions = {}) {
    super(message, { ...options, code: 'IMAGE_CHECKSUM' });
  }
}

/** The descriptor is not valid JSON, fails its schema, or does not fit the reserved room. */
export class DescriptorError extends ImageError {
  override readonly name = 'DescriptorError';
  constructor(message: string, options: ImageErrorOptions = {}) {
    super('IMAGE_DESCRIPTOR', message, false, options);
  }
}

/** The operation does not fit the image's state (e.g. finalizing a complete image). */
export class ImageStateError extends ImageError {
  override readonly name = 'ImageStateError';
  constructor(message: string, options: ImageErrorOptions = {}) {
    super('IMAGE_STATE', message, false, options);
  }
}

/** Wrap a Node system error into an ImageIoError (keeps errno and cause). */
export function ioError(what: string, path: string, err: unknown): ImageIoError {
  const errno = typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
  const reason = err instanceof Error ? err.message : String(err);
  return new ImageIoError(`${what} ${path}: ${reason}`, { cause: err, path, ...(errno ? { errno } : {}) });
}
