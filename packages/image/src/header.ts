/**
 * vmsave image header: pure encode/decode, no I/O. Layout in docs/image-format.md.
 *
 * The header is 128 bytes, little-endian. Its checksum (CRC-32C) covers header bytes
 * 8..123 followed by the descriptor bytes; the magic (bytes 0..7) is left out so that
 * flipping it from partial to complete is a single 8-byte write that needs no new checksum.
 */
import type { SaveFormat } from '@vmsave/contracts';
import { crc32c } from './crc32c.ts';
import { ImageChecksumError, ImageFormatError, ImageTruncatedError, ImageVersionError } from './errors.ts';

export const HEADER_SIZE = 128;
/** Magic while QEMU is writing (or after a failed save): never restorable. */
export const MAGIC_PARTIAL = 'VMSVPART';
/** Magic once QEMU finished and fdatasync succeeded. */
export const MAGIC_COMPLETE = 'VMSVDONE';
export const MAGIC_LENGTH = 8;
/** The header/format versions this package reads and writes. */
export const FORMAT_VERSION = 1;
export const SUPPORTED_VERSIONS: readonly number[] = [1];
/** The QEMU stream starts at a multiple of this. */
export const STREAM_ALIGNMENT = 4096;
/** Upper bound on a descriptor's length (a VmDefinition may carry up to 512 args of 4 KiB). */
export const MAX_DESCRIPTOR_LENGTH = 4 * 1024 * 1024;

export const FLAG_WAS_RUNNING = 1 << 0;
export const FLAG_DIRECT_IO = 1 << 1;
const KNOWN_FLAGS = FLAG_WAS_RUNNING | FLAG_DIRECT_IO;

const OFF = {
  magic: 0,
  version: 8,
  headerSize: 12,
  format: 16,
  reserved0: 17,
  channels: 18,
  flags: 20,
  descriptorOffset: 24,
  descriptorLength: 32,
  streamOffset: 40,
  reserved: 48,
  checksum: 124,
} as const;

const FORMAT_CODES: Record<SaveFormat, number> = { legacy: 0, sparse: 1 };

/** The decoded header of a vmsave image. */
export interface ImageHeader {
  /** True when the magic is `VMSVDONE`, false for `VMSVPART`. */
  complete: boolean;
  version: number;
  headerSize: number;
  format: SaveFormat;
  /** multifd channels QEMU used (0 when multifd was off). */
  channels: number;
  wasRunning: boolean;
  directIo: boolean;
  descriptorOffset: number;
  descriptorLength: number;
  /** Where the QEMU stream begins (multiple of 4096). */
  streamOffset: number;
  /** CRC-32C stored in the header. */
  checksum: number;
}

/** Fields a writer chooses; the rest follows from them. */
export type HeaderFields = Omit<ImageHeader, 'version' | 'headerSize' | 'checksum'>;

/** Checksum of a header buffer (its own checksum field and magic are not covered) plus the descriptor bytes. */
export function headerChecksum(header: Uint8Array, descriptor: Uint8Array): number {
  return crc32c(descriptor, crc32c(header.subarray(OFF.version, OFF.checksum)));
}

/** Encode a header (128 bytes) for the given descriptor bytes, checksum included. */
export function encodeHeader(fields: HeaderFields, descriptor: Uint8Array): Buffer {
  if (fields.descriptorLength !== descriptor.length) {
    throw new ImageFormatError(`descriptorLength ${fields.descriptorLength} does not match ${descriptor.length} descriptor bytes`);
  }
  if (!Number.isInteger(fields.channels) || fields.channels < 0 || fields.channels > 0xffff) {
    throw new ImageFormatError(`channel count ${fields.channels} does not fit 0..65535`);
  }
  const b = Buffer.alloc(HEADER_SIZE);
  b.write(fields.complete ? MAGIC_COMPLETE : MAGIC_PARTIAL, OFF.magic, 'latin1');
  b.writeUInt32LE(FORMAT_VERSION, OFF.version);
  b.writeUInt32LE(HEADER_SIZE, OFF.headerSize);
  b.writeUInt8(FORMAT_CODES[fields.format], OFF.format);
  b.writeUInt16LE(fields.channels, OFF.channels);
  b.writeUInt32LE((fields.wasRunning ? FLAG_WAS_RUNNING : 0) | (fields.directIo ? FLAG_DIRECT_IO : 0), OFF.flags);
  b.writeBigUInt64LE(BigInt(fields.descriptorOffset), OFF.descriptorOffset);
  b.writeBigUInt64LE(BigInt(fields.descriptorLength), OFF.descriptorLength);
  b.writeBigUInt64LE(BigInt(fields.streamOffset), OFF.streamOffset);
  b.writeUInt32LE(headerChecksum(b, descriptor), OFF.checksum);
  return b;
}

/** The 8 magic bytes for a state. */
export function magicBytes(complete: boolean): Buffer {
  return Buffer.from(complete ? MAGIC_COMPLETE : MAGIC_PARTIAL, 'latin1');
}

/** True when the buffer starts with either vmsave magic. */
export function hasVmsaveMagic(buf: Uint8Array): boolean {
  const m = Buffer.from(buf.subarray(0, MAGIC_LENGTH)).toString('latin1');
  return m === MAGIC_PARTIAL || m === MAGIC_COMPLETE;
}

function u64(b: Buffer, off: number, what: string): number {
  const v = b.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ImageFormatError(`header ${what} ${v} is absurdly large`);
  return Number(v);
}

/**
 * Decode and bounds-check a header. `fileSize` is the image's size: every offset and
 * length is checked against it before the caller may use them.
 * Throws ImageFormatError (bad magic, impossible layout), ImageVersionError, ImageTruncatedError.
 * Does not verify the checksum (it needs the descriptor): see `verifyHeaderChecksum`.
 */
export function decodeHeader(buf: Uint8Array, fileSize: number): ImageHeader {
  if (buf.length < HEADER_SIZE || fileSize < HEADER_SIZE) {
    throw new ImageTruncatedError(`file has ${Math.min(buf.length, fileSize)} bytes, less than the ${HEADER_SIZE}-byte vmsave header`);
  }
  const b = Buffer.from(buf.buffer, buf.byteOffset, HEADER_SIZE);
  if (!hasVmsaveMagic(b)) {
    throw new ImageFormatError(`not a vmsave image: magic ${JSON.stringify(b.toString('latin1', 0, 8))}, expected ${MAGIC_COMPLETE} or ${MAGIC_PARTIAL}`);
  }
  const complete = b.toString('latin1', 0, 8) === MAGIC_COMPLETE;
  const version = b.readUInt32LE(OFF.version);
  if (!SUPPORTED_VERSIONS.includes(version)) throw new ImageVersionError(version, SUPPORTED_VERSIONS);
  const headerSize = b.readUInt32LE(OFF.headerSize);
  if (headerSize !== HEADER_SIZE) throw new ImageFormatError(`header size field says ${headerSize}, version ${version} headers are ${HEADER_SIZE} bytes`);
  const formatCode = b.readUInt8(OFF.format);
  const format: SaveFormat | undefined = formatCode === 0 ? 'legacy' : formatCode === 1 ? 'sparse' : undefined;
  if (!format) throw new ImageFormatError(`unknown save format code ${formatCode} (0 legacy, 1 sparse)`);
  const flags = b.readUInt32LE(OFF.flags);
  if ((flags & ~KNOWN_FLAGS) !== 0) throw new ImageFormatError(`unknown flag bits 0x${(flags & ~KNOWN_FLAGS).toString(16)} in header`);
  const descriptorOffset = u64(b, OFF.descriptorOffset, 'descriptor offset');
  const descriptorLength = u64(b, OFF.descriptorLength, 'descriptor length');
  const streamOffset = u64(b, OFF.streamOffset, 'stream offset');
  if (descriptorOffset < HEADER_SIZE) throw new ImageFormatError(`descriptor offset ${descriptorOffset} overlaps the header`);
  if (descriptorLength > MAX_DESCRIPTOR_LENGTH) throw new ImageFormatError(`descriptor length ${descriptorLength} exceeds the ${MAX_DESCRIPTOR_LENGTH}-byte limit`);
  if (streamOffset % STREAM_ALIGNMENT !== 0) throw new ImageFormatError(`stream offset ${streamOffset} is not a multiple of ${STREAM_ALIGNMENT}`);
  if (descriptorOffset + descriptorLength > streamOffset) {
    throw new ImageFormatError(`descriptor [${descriptorOffset}, ${descriptorOffset + descriptorLength}) runs into the QEMU stream at ${streamOffset}`);
  }
  if (descriptorOffset + descriptorLength > fileSize) {
    throw new ImageTruncatedError(`descriptor ends at ${descriptorOffset + descriptorLength}, past the end of the ${fileSize}-byte file`);
  }
  if (streamOffset > fileSize) throw new ImageTruncatedError(`stream offset ${streamOffset} is past the end of the ${fileSize}-byte file`);
  return {
    complete,
    version,
    headerSize,
    format,
    channels: b.readUInt16LE(OFF.channels),
    wasRunning: (flags & FLAG_WAS_RUNNING) !== 0,
    directIo: (flags & FLAG_DIRECT_IO) !== 0,
    descriptorOffset,
    descriptorLength,
    streamOffset,
    checksum: b.readUInt32LE(OFF.checksum),
  };
}

/** Throw ImageChecksumError unless the header's checksum matches header + descriptor bytes. */
export function verifyHeaderChecksum(headerBuf: Uint8Array, descriptor: Uint8Array): void {
  const b = Buffer.from(headerBuf.buffer, headerBuf.byteOffset, HEADER_SIZE);
  const stored = b.readUInt32LE(OFF.checksum);
  const actual = headerChecksum(b, descriptor);
  if (stored !== actual) {
    throw new ImageChecksumError(
      `header/descriptor checksum mismatch: stored crc32c 0x${stored.toString(16).padStart(8, '0')}, computed 0x${actual.toString(16).padStart(8, '0')} — the header or descriptor was modified or damaged`,
    );
  }
}

/** Byte offset of the magic field (for the in-place flip). */
export const MAGIC_OFFSET = OFF.magic;
