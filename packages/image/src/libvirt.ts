/**
 * libvirt's QEMU save image (`virsh save`, managed save): a 92-byte header in host byte
 * order, the domain XML (+ cookie + slack), then the QEMU stream at 92 + data_len.
 * Pure parsing; the verifier does the reads.
 */
import { ImageFormatError, ImageTruncatedError, ImageVersionError } from './errors.ts';

export const LIBVIRT_HEADER_SIZE = 92;
export const LIBVIRT_MAGIC_COMPLETE = 'LibvirtQemudSave';
export const LIBVIRT_MAGIC_PARTIAL = 'LibvirtQemudPart';
export const LIBVIRT_FORMATS = ['raw', 'gzip', 'bzip2', 'xz', 'lzop', 'zstd', 'sparse'] as const;
export type LibvirtFormat = (typeof LIBVIRT_FORMATS)[number];
/** Largest XML + cookie region this reader will load (libvirt's own limit is 10 MiB of XML). */
export const LIBVIRT_MAX_DATA = 64 * 1024 * 1024;

export interface LibvirtHeader {
  complete: boolean;
  version: number;
  /** Bytes of XML + cookie + padding after the header. */
  dataLength: number;
  wasRunning: boolean;
  formatCode: number;
  format: LibvirtFormat | undefined;
  /** Offset of the cookie inside the data region (0: none). */
  cookieOffset: number;
  /** True when the fields were written in the other byte order (the version read > 2). */
  byteSwapped: boolean;
  /** Absolute offset of the QEMU stream: 92 + dataLength (not aligned). */
  streamOffset: number;
}

export function hasLibvirtMagic(buf: Uint8Array): boolean {
  const m = Buffer.from(buf.subarray(0, 16)).toString('latin1');
  return m === LIBVIRT_MAGIC_COMPLETE || m === LIBVIRT_MAGIC_PARTIAL;
}

/** Decode and bounds-check a libvirt header. Throws ImageFormatError / ImageVersionError / ImageTruncatedError. */
export function decodeLibvirtHeader(buf: Uint8Array, fileSize: number): LibvirtHeader {
  if (buf.length < LIBVIRT_HEADER_SIZE || fileSize < LIBVIRT_HEADER_SIZE) {
    throw new ImageTruncatedError(`file has ${Math.min(buf.length, fileSize)} bytes, less than libvirt's ${LIBVIRT_HEADER_SIZE}-byte header`);
  }
  const b = Buffer.from(buf.buffer, buf.byteOffset, LIBVIRT_HEADER_SIZE);
  if (!hasLibvirtMagic(b)) throw new ImageFormatError('not a libvirt save image');
  let byteSwapped = false;
  let version = b.readUInt32LE(16);
  if (version > 2) {
    byteSwapped = true;
    version = b.readUInt32BE(16);
  }
  const rd = (off: number): number => (byteSwapped ? b.readUInt32BE(off) : b.readUInt32LE(off));
  if (version < 1 || version > 2) throw new ImageVersionError(version, [1, 2]);
  const dataLength = rd(20);
  const formatCode = rd(28);
  const cookieOffset = rd(32);
  if (LIBVIRT_HEADER_SIZE + dataLength > fileSize) {
    throw new ImageTruncatedError(`libvirt data_len ${dataLength} runs past the end of the ${fileSize}-byte file`);
  }
  if (cookieOffset > dataLength) throw new ImageFormatError(`libvirt cookieOffset ${cookieOffset} is outside the ${dataLength}-byte data region`);
  return {
    complete: b.toString('latin1', 0, 16) === LIBVIRT_MAGIC_COMPLETE,
    version,
    dataLength,
    wasRunning: rd(24) !== 0,
    formatCode,
    format: LIBVIRT_FORMATS[formatCode],
    cookieOffset,
    byteSwapped,
    streamOffset: LIBVIRT_HEADER_SIZE + dataLength,
  };
}

function cString(b: Buffer, from: number): string {
  const nul = b.indexOf(0, from);
  return b.toString('utf8', from, nul < 0 ? b.length : nul);
}

/** Split the data region into the domain XML and the cookie (both NUL-terminated in the file). */
export function parseLibvirtData(data: Uint8Array, header: LibvirtHeader): { xml: string; cookie?: string } {
  const b = Buffer.from(data.buffer, data.byteOffset, data.length);
  const xml = cString(b, 0);
  const cookie = header.cookieOffset > 0 && header.cookieOffset < b.length ? cString(b, header.cookieOffset) : undefined;
  return cookie ? { xml, cookie } : { xml };
}

/** What the domain XML says that a verifier can show, found with simple, bounded patterns. */
export function domainSummary(xml: string): { name?: string; uuid?: string; memoryKiB?: number; machine?: string } {
  const pick = (re: RegExp): string | undefined => re.exec(xml)?.[1];
  const out: { name?: string; uuid?: string; memoryKiB?: number; machine?: string } = {};
  const name = pick(/<name>([^<]{1,256})<\/name>/);
  const uuid = pick(/<uuid>([^<]{1,64})<\/uuid>/);
  const mem = /<memory(?:\s+unit=['"](\w+)['"])?[^>]*>(\d{1,20})<\/memory>/.exec(xml);
  const machine = pick(/<type[^>]*\smachine=['"]([^'"]{1,64})['"]/);
  if (name) out.name = name;
  if (uuid) out.uuid = uuid;
  if (mem) {
    const unit = (mem[1] ?? 'KiB').toLowerCase();
    const factor: Record<string, number> = {
      b: 1 / 1024,
      bytes: 1 / 1024,
      k: 1,
      kib: 1,
      m: 1024,
      mib: 1024,
      g: 1024 ** 2,
      gib: 1024 ** 2,
      kb: 1000 / 1024,
      mb: 1e6 / 1024,
      gb: 1e9 / 1024,
    };
    out.memoryKiB = Math.round(Number(mem[2]) * (factor[unit] ?? 1));
  }
  if (machine) out.machine = machine;
  return out;
}

/** Leading magic bytes of each compressor libvirt can pipe the stream through. */
const COMPRESSOR_MAGIC: Partial<Record<LibvirtFormat, number[]>> = {
  gzip: [0x1f, 0x8b],
  bzip2: [0x42, 0x5a, 0x68],
  xz: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],
  lzop: [0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a],
  zstd: [0x28, 0xb5, 0x2f, 0xfd],
};

/** True/false when the bytes do/don't start with the compressor's magic; undefined for uncompressed formats. */
export function compressorMagicMatches(format: LibvirtFormat, bytes: Uint8Array): boolean | undefined {
  const m = COMPRESSOR_MAGIC[format];
  if (!m) return undefined;
  return m.every((v, i) => bytes[i] === v);
}

/** Build a libvirt header (for tests and tools that wrap a stream the way libvirt does). Little-endian. */
export function encodeLibvirtHeader(h: {
  complete: boolean;
  dataLength: number;
  wasRunning: boolean;
  formatCode: number;
  cookieOffset: number;
  version?: number;
  bigEndian?: boolean;
}): Buffer {
  const b = Buffer.alloc(LIBVIRT_HEADER_SIZE);
  b.write(h.complete ? LIBVIRT_MAGIC_COMPLETE : LIBVIRT_MAGIC_PARTIAL, 0, 'latin1');
  const w = (v: number, off: number): number => (h.bigEndian ? b.writeUInt32BE(v, off) : b.writeUInt32LE(v, off));
  w(h.version ?? 2, 16);
  w(h.dataLength, 20);
  w(h.wasRunning ? 1 : 0, 24);
  w(h.formatCode, 28);
  w(h.cookieOffset, 32);
  return b;
}
