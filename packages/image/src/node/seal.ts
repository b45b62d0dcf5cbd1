/**
 * The image seal on a file: `sealImage` (at save, before the magic flips) and `checkSeal` (restore
 * gate, `verify --content`, the scrub). The layout and the checks are pure (../seal.ts); this
 * module brings the file reads, SEEK_DATA hole detection, zlib's CRC-32 and the worker threads
 * that read and hash the RAM chunks (seal-worker.ts).
 */
import { readSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import type { SealSummary } from '@vmsave/contracts';
import { crc32HasherOf } from '../crc32.ts';
import { decodeDescriptor, encodeDescriptor, type ImageDescriptor, type ImageSeal } from '../descriptor.ts';
import { DescriptorError, ImageError, ImageStateError, ioError } from '../errors.ts';
import { FLAG_DIRECT_IO, type ImageHeader } from '../header.ts';
import { readHeaderAndDescriptor } from '../read.ts';
import { openReadOnly } from './file-source.ts';
import {
  DEFAULT_CHUNK_BYTES,
  MAX_CHUNK_BYTES,
  checkSealSource,
  placeholderSeal,
  sealStream,
  sealSummary,
  type SealCheck,
  type SealHasher,
  type SealHead,
  type SealLayout,
  type SealRunOptions,
  type SealScope,
  type SealSource,
  type SealStreamOptions,
} from '../seal.ts';
import { seekData } from './extents.ts';
import { crc32ChunksInWorkers, crc32ChunksLent, SEAL_WORKERS } from './seal-worker.ts';
import { updateDescriptor } from './image.ts';

/** zlib's CRC-32 (IEEE 802.3 polynomial; native, SIMD in Node's zlib): the seal's checksum. */
export const crc32Hasher: SealHasher = crc32HasherOf(crc32);

/** Where the header keeps its flags (docs/image-format.md, header). */
const HEADER_FLAGS_OFFSET = 20;

/** How the RAM chunks are read. */
export interface SealReadOptions {
  /** Worker threads for the RAM chunks (default SEAL_WORKERS; 0: this thread). A paced check uses none. */
  workers?: number;
  /** Read the RAM chunks with O_DIRECT (on the workers); default: when the header says the image was saved with direct IO. */
  directRead?: boolean;
}

/** Fewer data chunks than this are hashed in the calling thread (starting a worker costs ~10–40 ms). */
const MIN_WORKER_CHUNKS = 8;
/** Largest chunk lent to the calling thread (the lent-chunk pool holds workers + 3 of them). */
const MAX_LENT_CHUNK_BYTES = 64 * 1024 * 1024;
const be32 = (v: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, false);
  return b;
};

/**
 * A read-only SealSource over a file: `readTransient` reads go into a ring of five reused buffers
 * (the seal has at most four in use: three reads in flight, one being hashed), holes found with
 * SEEK_DATA; RAM data chunks (CRC-32, at least MIN_WORKER_CHUNKS of them) read and hashed on
 * SEAL_WORKERS worker threads (`workers: 0`: in this thread), or lent to this thread from them
 * (`lendChunks`: buffered reads only, so not for an image to be read with O_DIRECT).
 */
export async function openSealSource(path: string, o: SealReadOptions = {}): Promise<SealSource & { close(): Promise<void> }> {
  const { fh, size } = await openReadOnly(path);
  const ring: Array<Buffer | undefined> = new Array(5).fill(undefined);
  let next = 0;
  const headerSaysDirect = (): boolean => {
    const flags = Buffer.alloc(4);
    return readSync(fh.fd, flags, 0, 4, HEADER_FLAGS_OFFSET) === 4 && (flags.readUInt32LE(0) & FLAG_DIRECT_IO) !== 0;
  };
  return {
    size,
    read: (position, length) => readInto(position, length, false),
    readTransient: (position, length) => readInto(position, length, true),
    isHole(start, end) {
      const data = seekData(fh.fd, start);
      return data === undefined || data >= end;
    },
    digestChunks(chunks, hasher, onChunk, signal) {
      const workers = o.workers ?? SEAL_WORKERS;
      if (hasher.algorithm !== 'crc32' || workers < 1 || chunks.length < MIN_WORKER_CHUNKS) return undefined;
      return (async () => {
        // A direct-IO save left the pages out of the page cache: read them with O_DIRECT too.
        let direct = o.directRead;
        if (direct === undefined) {
          const flags = Buffer.alloc(4);
          await fh.read(flags, 0, 4, HEADER_FLAGS_OFFSET);
          direct = (flags.readUInt32LE(0) & FLAG_DIRECT_IO) !== 0;
        }
        const run: { workers: number; signal?: AbortSignal; direct: boolean } = { workers, direct };
        if (signal) run.signal = signal;
        await crc32ChunksInWorkers(path, chunks, (k, crc, bytesRead) => onChunk(k, be32(crc), bytesRead), run);
      })().catch((err: unknown) => {
        if (signal?.aborted) throw err;
        throw ioError('cannot read', path, err);
      });
    },
    lendChunks(chunks, hasher, onChunk, signal) {
      const workers = o.workers ?? SEAL_WORKERS;
      if (hasher.algorithm !== 'crc32' || workers < 1 || chunks.length < MIN_WORKER_CHUNKS) return undefined;
      if (chunks.some(([s, e]) => e - s > MAX_LENT_CHUNK_BYTES)) return undefined;
      // A direct-IO image is read with O_DIRECT, into buffers of the workers' own.
      if (o.directRead ?? headerSaysDirect()) return undefined;
      const run: { workers: number; signal?: AbortSignal } = { workers };
      if (signal) run.signal = signal;
      return crc32ChunksLent(path, chunks, (k, crc, bytesRead, data, release) => onChunk(k, { digest: be32(crc), bytesRead, data, release }), run).catch((err: unknown) => {
        if (signal?.aborted) throw err;
        throw ioError('cannot read', path, err);
      });
    },
    close: async () => {
      await fh.close().catch(() => {});
    },
  };
  async function readInto(position: number, length: number, transient: boolean): Promise<Uint8Array> {
    const len = Math.max(0, Math.min(length, size - position));
    if (len === 0 || position < 0) return new Uint8Array(0);
    let buf: Buffer;
    if (transient) {
      const slot = next++ % ring.length;
      let have = ring[slot];
      if (!have || have.length < len) {
        have = Buffer.allocUnsafe(len);
        ring[slot] = have;
      }
      buf = have;
    } else buf = Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      let n: number;
      try {
        ({ bytesRead: n } = await fh.read(buf, done, len - done, position + done));
      } catch (err) {
        throw ioError('cannot read', path, err);
      }
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  }
}

/**
 * The chunk size of a new seal of `layout` in this image: 4 MiB, doubled until the sealed
 * descriptor fits the room before the stream. Throws DescriptorError when none up to 1 GiB does.
 */
export function sealChunkBytes(path: string, header: Pick<ImageHeader, 'streamOffset' | 'descriptorOffset'>, descriptor: ImageDescriptor, layout: SealLayout): number {
  const room = header.streamOffset - header.descriptorOffset;
  let chunkBytes = DEFAULT_CHUNK_BYTES;
  const fits = (cb: number): boolean => encodeDescriptor({ ...descriptor, seal: placeholderSeal(layout, cb, crc32Hasher) }).length <= room;
  while (!fits(chunkBytes)) {
    if (chunkBytes >= MAX_CHUNK_BYTES) {
      throw new DescriptorError(
        `the seal does not fit the ${room} bytes reserved for the descriptor even with ${MAX_CHUNK_BYTES}-byte chunks: create the image with more reserveBytes`,
        { path },
      );
    }
    chunkBytes *= 2;
  }
  return chunkBytes;
}

export interface SealImageResult {
  seal: ImageSeal;
  summary: SealSummary;
  bytesRead: number;
  durationMs: number;
  /**
   * Where the stream walk read the stream from: `chunks` (a legacy image in one read), `file`,
   * `follow` (a seal follower read and walked the stream while QEMU wrote it: `startSealFollower`).
   */
  walk: 'chunks' | 'file' | 'follow';
  /** Set by a follower's `finish`: stream bytes it had read and hashed before QEMU completed. */
  followedBytes?: number;
}

export interface SealImageOptions extends SealReadOptions {
  signal?: AbortSignal;
  /** Bytes processed of the total (which grows by the state region's size once the walk found it). */
  onProgress?(done: number, total: number): void;
  /**
   * A legacy image's stream is walked out of the chunks the workers read for the checksums, so
   * its pages are read once (default: true; it needs workers). false: walk the file first, then
   * read the chunks (the two-pass path; the same seal, for measurement).
   */
  onePass?: boolean;
}

/**
 * Seal an image QEMU has finished writing, before `finalizeImage`: checksum its RAM chunks (holes
 * not read) and its device-state region, and write the seal into the descriptor
 * (`updateDescriptor`). The chunk size starts at 4 MiB and doubles until the seal fits the
 * descriptor room. Throws ImageStateError for a complete image, ImageFormatError when the stream
 * is not complete and well-formed, DescriptorError when no seal fits, ImageIoError; an abort
 * rejects with the signal's reason. The RAM chunks are read and hashed on `workers` threads
 * (default SEAL_WORKERS; 0: in this thread); a legacy stream is walked out of their buffers
 * (`onePass`), so its pages are read from the file once.
 */
export async function sealImage(path: string, o: SealImageOptions = {}): Promise<SealImageResult> {
  const t0 = performance.now();
  const src = await openSealSource(path, o);
  let sealed: { seal: ImageSeal; bytesRead: number; walk: 'chunks' | 'file' };
  let descriptorInput: ReturnType<typeof decodeDescriptor>;
  try {
    const { header, descBytes } = await readHeaderAndDescriptor(src, path);
    if (header.complete) throw new ImageStateError(`image ${path} is already complete (VMSVDONE): seal it before finalizeImage`, { path });
    const descriptor = decodeDescriptor(descBytes);
    const chunkBytesFor = (layout: SealLayout): number => sealChunkBytes(path, header, descriptor, layout);
    const run: SealStreamOptions = {};
    if (o.signal) run.signal = o.signal;
    if (o.onProgress) run.onProgress = o.onProgress;
    if (o.onePass !== undefined) run.onePass = o.onePass;
    sealed = await sealStream(src, header, crc32Hasher, chunkBytesFor, run);
    descriptorInput = { ...descriptor, seal: sealed.seal };
  } catch (err) {
    if (err instanceof ImageError || o.signal?.aborted) throw err;
    throw ioError('cannot seal', path, err);
  } finally {
    await src.close();
  }
  await updateDescriptor(path, descriptorInput);
  return { seal: sealed.seal, summary: sealSummary(sealed.seal), bytesRead: sealed.bytesRead, durationMs: performance.now() - t0, walk: sealed.walk };
}

export interface CheckSealOptions extends SealRunOptions, SealReadOptions {
  scope: SealScope;
  /**
   * The image's header and descriptor as the caller already read them (`readImage(path)`, an
   * `ImageInfo`, will do; a restore's head): not read again. The caller vouches that they are this
   * file's as it is now (a restore compares the file's fingerprint); the seal is still checked
   * against the file's size and bytes.
   */
  head?: SealHead;
}

/**
 * Check an image file against its seal: `state` reads the device-state region and the reserved
 * room only, `full` every RAM chunk too (holes not read). `maxBytesPerSec` paces the reads (the
 * scrub). `head`: the header and descriptor already read by the caller, not read again. Never
 * throws for a damaged or missing file (a failed check); an abort rejects.
 */
export async function checkSeal(path: string, o: CheckSealOptions): Promise<SealCheck> {
  const t0 = performance.now();
  let src: (SealSource & { close(): Promise<void> }) | undefined;
  try {
    src = await openSealSource(path, o);
    // One algorithm exists (crc32); a seal naming another is reported as malformed.
    return await checkSealSource(src, { ...o, hasher: crc32Hasher });
  } catch (err) {
    if (o.signal?.aborted) throw err;
    return {
      sealed: false,
      ok: false,
      scope: o.scope,
      checks: [
        { name: 'seal.present', status: 'fail', detail: `cannot read the image: ${(err as Error)?.message ?? String(err)}` },
        { name: 'seal.reserved', status: 'skip', detail: 'not reached' },
        { name: 'seal.state', status: 'skip', detail: 'not reached' },
        { name: 'seal.ram', status: 'skip', detail: 'not reached' },
      ],
      bytesRead: 0,
      durationMs: performance.now() - t0,
      mismatches: [],
    };
  } finally {
    await src?.close();
  }
}
