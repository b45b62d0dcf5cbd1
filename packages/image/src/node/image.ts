/**
 * Writer and reader of vmsave image files (the file I/O around header.ts, descriptor.ts and read.ts).
 *
 * Life of an image: `createImage` (partial magic, descriptor) → `openStreamFds` → QEMU
 * writes the stream at `streamOffset` → `finalizeImage` (fdatasync, flip magic, fdatasync).
 */
import { closeSync, constants as C, open as openCb, promises as fsp } from 'node:fs';
import { promisify } from 'node:util';
import type { ImageFingerprint, SaveFormat } from '@vmsave/contracts';
import { decodeDescriptor, encodeDescriptor, type ImageDescriptor, type ImageDescriptorInput } from '../descriptor.ts';
import { DescriptorError, ImageError, ImageExistsError, ImageStateError, ioError } from '../errors.ts';
import { HEADER_SIZE, MAGIC_OFFSET, STREAM_ALIGNMENT, decodeHeader, encodeHeader, magicBytes, type ImageHeader } from '../header.ts';
import { readHeaderAndDescriptor, readImageFrom, type ImageInfo } from '../read.ts';
import type { ByteSource } from '../source.ts';
import { openFileSource } from './file-source.ts';

const openFd = promisify(openCb) as (path: string, flags: number) => Promise<number>;

/** Room reserved after the descriptor by default, so it can be rewritten in place with more content. */
export const DEFAULT_RESERVE_BYTES = 16 * 1024;

/**
 * Room the seal needs in the descriptor for a VM of `memoryMiB`: one 4-byte CRC per 4 MiB RAM chunk
 * (base64), for a stream up to 1 % larger than the RAM plus 256 MiB (legacy page headers, video RAM
 * and ROM blocks), one partial chunk per RAM block, and the ranges.
 */
export function sealReserveBytes(memoryMiB: number): number {
  const streamBytes = memoryMiB * 1024 * 1024 * 1.01 + 256 * 1024 * 1024;
  const chunks = Math.ceil(streamBytes / (4 * 1024 * 1024)) + 256;
  return Math.ceil((chunks * 4) / 3) * 4 + 16 * 1024;
}

export interface CreateImageOptions {
  format: SaveFormat;
  /** multifd channels QEMU will use (0 when multifd is off, i.e. legacy). */
  channels: number;
  directIo: boolean;
  wasRunning: boolean;
  descriptor: ImageDescriptorInput;
  /**
   * Extra bytes kept free after the descriptor for `updateDescriptor` (default 16 KiB plus the room
   * the seal needs for `descriptor.vm.memoryMiB`, see `sealReserveBytes`).
   */
  reserveBytes?: number;
  /** File mode for the new image (default 0o600: images hold guest memory). */
  mode?: number;
}

export interface CreatedImage {
  /** Where QEMU must start writing (`file:…,offset=streamOffset`). A multiple of 4096. */
  streamOffset: number;
  header: ImageHeader;
  descriptor: ImageDescriptor;
}

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

/**
 * Create a new image exclusively (O_CREAT|O_EXCL: never overwrites) with the partial magic,
 * the header and the descriptor; the file is extended to `streamOffset`.
 * Throws ImageExistsError, DescriptorError, ImageIoError. A file it created is removed on failure.
 *
 * @example
 * const { streamOffset } = await createImage('/var/lib/vmsave/web1.vmsave', {
 *   format: 'sparse', channels: 2, directIo: true, wasRunning: true, descriptor,
 * });
 * // migrate to file:/dev/fdset/N,offset=0x<streamOffset hex>
 */
export async function createImage(path: string, options: CreateImageOptions): Promise<CreatedImage> {
  const descBytes = encodeDescriptor(options.descriptor);
  const descriptor = decodeDescriptor(descBytes);
  if (descriptor.format !== options.format) {
    throw new DescriptorError(`descriptor says format "${descriptor.format}" but the image is created as "${options.format}"`, { path });
  }
  const reserve = options.reserveBytes ?? DEFAULT_RESERVE_BYTES + sealReserveBytes(descriptor.vm.memoryMiB);
  if (!Number.isSafeInteger(reserve) || reserve < 0) throw new DescriptorError(`reserveBytes ${reserve} must be a non-negative integer`, { path });
  const streamOffset = alignUp(HEADER_SIZE + descBytes.length + reserve, STREAM_ALIGNMENT);
  const fields = {
    complete: false,
    format: options.format,
    channels: options.channels,
    wasRunning: options.wasRunning,
    directIo: options.directIo,
    descriptorOffset: HEADER_SIZE,
    descriptorLength: descBytes.length,
    streamOffset,
  };
  const headerBuf = encodeHeader(fields, descBytes);

  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, C.O_WRONLY | C.O_CREAT | C.O_EXCL, options.mode ?? 0o600);
  } catch (err) {
    if ((err as { code?: string }).code === 'EEXIST') throw new ImageExistsError(path, { cause: err });
    throw ioError('cannot create', path, err);
  }
  try {
    await fh.write(headerBuf, 0, headerBuf.length, 0);
    await fh.write(descBytes, 0, descBytes.length, HEADER_SIZE);
    await fh.truncate(streamOffset);
    await fh.close();
  } catch (err) {
    await fh.close().catch(() => {});
    await fsp.unlink(path).catch(() => {});
    throw ioError('cannot write header of', path, err);
  }
  return { streamOffset, header: decodeHeader(headerBuf, streamOffset), descriptor };
}

export interface StreamFds {
  /** Opened without O_DIRECT: QEMU uses it for the unaligned stream metadata. */
  buffered: number;
  /** Opened separately with O_DIRECT (only when `directIo`): QEMU uses it for the aligned page regions. */
  direct?: number;
}

/**
 * Open two separately opened fds (not dup copies) on an image for QEMU's fdset: write-only for a
 * save, read-only for a restore (QEMU refuses O_RDWR fds), the second with O_DIRECT.
 * Never creates or truncates. The caller closes them (`closeStreamFds`).
 */
export async function openStreamFds(path: string, options: { mode: 'save' | 'restore'; directIo: boolean }): Promise<StreamFds> {
  const access = options.mode === 'save' ? C.O_WRONLY : C.O_RDONLY;
  const open = async (flags: number): Promise<number> => {
    try {
      return await openFd(path, flags);
    } catch (err) {
      throw ioError(`cannot open (${options.mode}${flags & C.O_DIRECT ? ', O_DIRECT' : ''})`, path, err);
    }
  };
  const buffered = await open(access);
  if (!options.directIo) return { buffered };
  try {
    return { buffered, direct: await open(access | C.O_DIRECT) };
  } catch (err) {
    closeSync(buffered);
    throw err;
  }
}

/** Close what `openStreamFds` opened; fds already closed (QEMU's `remove-fd` does not close ours, a crash may have) are skipped. */
export function closeStreamFds(fds: StreamFds | undefined): void {
  for (const fd of [fds?.buffered, fds?.direct]) {
    if (fd === undefined) continue;
    try {
      closeSync(fd);
    } catch {
      /* already closed */
    }
  }
}

/** Read and bounds-check a vmsave image header (the checksum is verified, which needs the descriptor bytes). */
export async function readImageHeader(path: string): Promise<ImageHeader> {
  const src = await openFileSource(path);
  try {
    return (await readHeaderAndDescriptor(src, path)).header;
  } finally {
    await src.close();
  }
}

/** Read a vmsave image's header and parsed descriptor. Throws ImageFormatError subclasses, DescriptorError, ImageIoError. */
export async function readImage(path: string): Promise<ImageInfo> {
  const src = await openFileSource(path);
  try {
    return await readImageFrom(src);
  } finally {
    await src.close();
  }
}

/** Open an image read-write and read its header (bounds-checked), for an in-place rewrite. */
async function openForRewrite(path: string): Promise<{ fh: fsp.FileHandle; size: number; header: ImageHeader; descBytes: Uint8Array }> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, C.O_RDWR);
  } catch (err) {
    throw ioError('cannot open', path, err);
  }
  try {
    const size = (await fh.stat()).size;
    const src: ByteSource = { size, read: async (p, l) => (await fh.read(Buffer.alloc(Math.max(0, Math.min(l, size - p))), 0, Math.max(0, Math.min(l, size - p)), p)).buffer };
    const { header, descBytes } = await readHeaderAndDescriptor(src, path);
    return { fh, size, header, descBytes };
  } catch (err) {
    await fh.close().catch(() => {});
    if (err instanceof ImageError) throw err;
    throw ioError('cannot read', path, err);
  }
}

/**
 * Mark an image complete: fdatasync the file (QEMU's writes included), flip the magic to
 * `VMSVDONE`, fdatasync again. Throws ImageStateError if it is already complete.
 */
export async function finalizeImage(path: string): Promise<ImageHeader> {
  const { fh, size, header } = await openForRewrite(path);
  try {
    if (header.complete) throw new ImageStateError(`image ${path} is already complete`, { path });
    if (size <= header.streamOffset) throw new ImageStateError(`image ${path} has no QEMU stream after offset ${header.streamOffset}: nothing to finalize`, { path });
    await fh.datasync();
    await fh.write(magicBytes(true), 0, 8, MAGIC_OFFSET);
    await fh.datasync();
    return { ...header, complete: true };
  } catch (err) {
    if (err instanceof ImageError) throw err;
    throw ioError('cannot finalize', path, err);
  } finally {
    await fh.close().catch(() => {});
  }
}

/**
 * Rewrite the descriptor in place within the room reserved before the stream, with a new
 * checksum; the magic (partial/complete) is kept. Throws DescriptorError when it does not fit.
 * The image's seal is kept when `input` has none (the stream it describes does not change);
 * `{ keepSeal: false }` drops it.
 */
export async function updateDescriptor(path: string, input: ImageDescriptorInput, o: { keepSeal?: boolean } = {}): Promise<ImageInfo> {
  const { fh, size, header, descBytes: oldBytes } = await openForRewrite(path);
  let descBytes: Buffer;
  let descriptor: ImageDescriptor;
  try {
    let full = input;
    if (input.seal === undefined && o.keepSeal !== false) {
      const old = (() => {
        try {
          return decodeDescriptor(oldBytes).seal;
        } catch {
          return undefined;
        }
      })();
      if (old) full = { ...input, seal: old };
    }
    descBytes = encodeDescriptor(full);
    descriptor = decodeDescriptor(descBytes);
  } catch (err) {
    await fh.close().catch(() => {});
    throw err;
  }
  try {
    if (descriptor.format !== header.format) {
      throw new DescriptorError(`new descriptor says format "${descriptor.format}" but the image is "${header.format}"`, { path });
    }
    const room = header.streamOffset - header.descriptorOffset;
    if (descBytes.length > room) {
      throw new DescriptorError(`new descriptor is ${descBytes.length} bytes; only ${room} are reserved before the stream at ${header.streamOffset}`, { path });
    }
    const padded = Buffer.alloc(Math.max(descBytes.length, header.descriptorLength));
    descBytes.copy(padded);
    const newHeader = encodeHeader({ ...header, descriptorLength: descBytes.length }, descBytes);
    await fh.write(padded, 0, padded.length, header.descriptorOffset);
    await fh.write(newHeader, 0, HEADER_SIZE, 0);
    await fh.datasync();
    return { header: decodeHeader(newHeader, size), descriptor, size };
  } catch (err) {
    if (err instanceof ImageError) throw err;
    throw ioError('cannot update descriptor of', path, err);
  } finally {
    await fh.close().catch(() => {});
  }
}

/**
 * The file's identity and last change (ImageFingerprint): taken by the verifier before and after
 * its checks, compared by the restore gate to trust that verification instead of reading again.
 */
export async function fingerprintImage(path: string): Promise<ImageFingerprint> {
  try {
    const st = await fsp.stat(path, { bigint: true });
    return { ino: String(st.ino), size: Number(st.size), mtimeNs: String(st.mtimeNs), ctimeNs: String(st.ctimeNs) };
  } catch (err) {
    throw ioError('stat', path, err);
  }
}
