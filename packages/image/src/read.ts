/**
 * Reading a vmsave image's header and descriptor from any ByteSource, and comparing file
 * fingerprints. Pure: the file-opening wrappers live in node/image.ts.
 */
import type { ImageFingerprint } from '@vmsave/contracts';
import { decodeDescriptor, type ImageDescriptor } from './descriptor.ts';
import { ImageError } from './errors.ts';
import { HEADER_SIZE, decodeHeader, verifyHeaderChecksum, type ImageHeader } from './header.ts';
import { Cursor, type ByteSource } from './source.ts';

export interface ImageInfo {
  header: ImageHeader;
  descriptor: ImageDescriptor;
  /** Logical file size. */
  size: number;
}

/**
 * The header (bounds-checked against the source's size), its raw bytes and the descriptor bytes,
 * with the checksum verified. `path` only labels the errors. Throws typed ImageErrors.
 */
export async function readHeaderAndDescriptor(src: ByteSource, path?: string): Promise<{ header: ImageHeader; headerBuf: Uint8Array; descBytes: Uint8Array }> {
  const c = new Cursor(src, 0);
  const headerBuf = await src.read(0, HEADER_SIZE);
  const header = decodeHeader(headerBuf, src.size);
  c.seek(header.descriptorOffset);
  const descBytes = await c.bytes(header.descriptorLength);
  try {
    verifyHeaderChecksum(headerBuf, descBytes);
  } catch (err) {
    if (err instanceof ImageError && path) (err as { path: string | undefined }).path = path;
    throw err;
  }
  return { header, headerBuf, descBytes };
}

/** Read and check a vmsave image's header and descriptor from any ByteSource. Throws typed ImageErrors. */
export async function readImageFrom(src: ByteSource): Promise<ImageInfo> {
  const { header, descBytes } = await readHeaderAndDescriptor(src);
  return { header, descriptor: decodeDescriptor(descBytes), size: src.size };
}

/** Same file, unchanged: equal inode, size, mtime and ctime. */
export function sameFingerprint(a: ImageFingerprint, b: ImageFingerprint): boolean {
  return a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}
