/**
 * The image seal (docs/image-format.md, "Seal"): checksums of a vmsave image's QEMU stream, in
 * fixed RAM chunks (holes not read) and over the device-state region, kept in the descriptor.
 *
 * Pure: it reads through a {@link SealSource} and hashes with a {@link SealHasher} it is given;
 * `sealImage` / `checkSeal` in node/seal.ts open the file and bring zlib's CRC-32.
 */
import type { SealSummary } from '@vmsave/contracts';
import type { ImageDescriptor, ImageSeal } from './descriptor.ts';
import { decodeDescriptor } from './descriptor.ts';
import { ChunkFeed } from './chunk-feed.ts';
import { ImageError, ImageFormatError } from './errors.ts';
import type { ImageHeader } from './header.ts';
import { hasVmsaveMagic } from './header.ts';
import { hasLibvirtMagic } from './libvirt.ts';
import { readHeaderAndDescriptor } from './read.ts';
import type { ByteSource, Range } from './source.ts';
import { walkStream, type StreamWalk } from './stream.ts';
import type { SealHasher } from './crc32.ts';

export type { ImageSeal } from './descriptor.ts';
export type { SealHasher } from './crc32.ts';

/** The checks a seal check gives (a subset of the verifier's `CheckName`s). */
export type SealCheckName = 'seal.present' | 'seal.reserved' | 'seal.state' | 'seal.ram';
/** One seal check, shaped like the verifier's `VerifyCheck`. */
export interface SealCheckItem {
  name: SealCheckName;
  status: 'pass' | 'warn' | 'fail' | 'skip';
  detail: string;
}

export const SEAL_VERSION = 1;
const MiB = 1024 * 1024;
/** RAM chunk size of a new seal (grown by powers of two when the descriptor room is too small). */
export const DEFAULT_CHUNK_BYTES = 4 * MiB;
/** Largest chunk size a seal may use. */
export const MAX_CHUNK_BYTES = 1024 * MiB;
/** RAM chunk reads kept in flight while one chunk is hashed. */
const READ_AHEAD = 3;
/** Largest single read of the state region or of the reserved room. */
const STATE_READ_BYTES = 4 * MiB;
/** The state region is looked at for holes in pieces of this size (one SEEK_DATA each). */
const STATE_HOLE_GRAIN = 64 * 1024;

/** A ByteSource that may say a range is a hole (reads as zeros without being stored), so it is not read. */
export interface SealSource extends ByteSource {
  /** True when [start, end) holds no data at all (SEEK_DATA finds none before `end`). */
  isHole?(start: number, end: number): boolean | Promise<boolean>;
  /**
   * Like `read`, but the bytes may be overwritten by the fifth `readTransient` call after this one
   * (a file source reuses its buffers); the seal hashes each result before then (at most three
   * reads are in flight while one result is hashed).
   */
  readTransient?(position: number, length: number): Promise<Uint8Array>;
  /**
   * The digests of data chunks (no holes among them) computed elsewhere, e.g. on worker threads:
   * `onChunk(k, digest, bytesRead)` for the k-th of `chunks`, in any order. Returns undefined when
   * it will not (another algorithm, too few chunks): the seal then reads and hashes them itself.
   */
  digestChunks?(chunks: readonly Range[], hasher: SealHasher, onChunk: (k: number, digest: Uint8Array, bytesRead: number) => void, signal?: AbortSignal): Promise<void> | undefined;
  /**
   * Like `digestChunks`, but each chunk's bytes are lent with its digest, so that the caller can
   * parse them too (a legacy stream's records: the one-pass seal): `onChunk(k, chunk)`, in any
   * order; `chunk.data` (the bytes read) stays valid until `chunk.release()`, which the caller
   * calls once. The source promises what {@link ChunkFeed} needs: chunks taken in index order, each
   * into a buffer of its own, and while fewer than two are lent the lowest not yet handed on is
   * being read. Undefined when it will not (the seal then walks the stream first).
   */
  lendChunks?(chunks: readonly Range[], hasher: SealHasher, onChunk: (k: number, chunk: LentChunk) => void, signal?: AbortSignal): Promise<void> | undefined;
}

/** A data chunk's digest and its bytes, lent by `SealSource.lendChunks`. */
export interface LentChunk {
  digest: Uint8Array;
  bytesRead: number;
  data: Uint8Array;
  release(): void;
}

/** Where the seal's two regions lie in an image (absolute offsets). */
export interface SealLayout {
  streamOffset: number;
  streamLength: number;
  /** Device state: read and hashed as one. */
  state: Range[];
  /** RAM: hashed in chunks. */
  ram: Range[];
}

export interface SealRunOptions {
  signal?: AbortSignal;
  /** Bytes processed (holes included) of the total to process. */
  onProgress?(done: number, total: number): void;
  /** Cap on the bytes actually read per second (holes are free); 0 or absent: no cap. */
  maxBytesPerSec?: number;
}

export type SealScope = 'state' | 'full';

export interface SealMismatch {
  region: 'state' | 'ram' | 'reserved';
  start: number;
  end: number;
}

/** The result of checking an image against its seal. */
export interface SealCheck {
  /** The image carries a seal. */
  sealed: boolean;
  /** No check failed (an unsealed image is ok: nothing to compare with). */
  ok: boolean;
  scope: SealScope;
  /** `seal.present`, `seal.reserved`, `seal.state`, `seal.ram` (`skip` for scope `state`). */
  checks: SealCheckItem[];
  bytesRead: number;
  durationMs: number;
  /** Regions whose content differs from the seal (at most 1000 RAM chunks listed). */
  mismatches: SealMismatch[];
  summary?: SealSummary;
}

const human = (n: number): string =>
  n >= 1024 ** 3 ? `${(n / 1024 ** 3).toFixed(2)} GiB` : n >= MiB ? `${(n / MiB).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
const hex = (b: Uint8Array): string => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
const abortError = (signal: AbortSignal): unknown => signal.reason ?? Object.assign(new Error('the operation was aborted'), { name: 'AbortError' });

/** Number of chunks `ranges` are cut into. */
export function chunkCount(ranges: readonly Range[], chunkBytes: number): number {
  return ranges.reduce((n, [s, e]) => n + Math.ceil(Math.max(0, e - s) / chunkBytes), 0);
}

/** The chunks of `ranges`, each at most `chunkBytes` (the last of a range may be shorter). */
export function* chunksOf(ranges: readonly Range[], chunkBytes: number): Generator<Range> {
  for (const [s, e] of ranges) for (let p = s; p < e; p += chunkBytes) yield [p, Math.min(e, p + chunkBytes)];
}

/**
 * The seal layout of a walked, complete stream in a `size`-byte image.
 * Sparse (mapped-ram): RAM is every block's pages region `[pagesOffset, pagesOffset + usedLength)`;
 * state is every other stream byte. Legacy: RAM is the whole stream; state is the stream before
 * the RAM START section plus everything after the last RAM section (device sections, EOF, the
 * JSON description). Throws ImageFormatError when the walk did not reach a complete stream.
 */
export function sealLayout(header: Pick<ImageHeader, 'streamOffset'>, size: number, walk: StreamWalk): SealLayout {
  if (!walk.complete || walk.problems.length > 0 || !walk.ram) {
    const p = walk.problems[0];
    throw new ImageFormatError(`cannot seal: the QEMU stream is not complete and well-formed${p ? ` (${p.check}: ${p.detail})` : ''}`);
  }
  const streamOffset = header.streamOffset;
  const streamLength = size - streamOffset;
  if (!walk.mappedRam) {
    const state: Range[] = [];
    if (walk.ram.startOffset > streamOffset) state.push([streamOffset, walk.ram.startOffset]);
    if (size > walk.ram.sectionsEnd) state.push([walk.ram.sectionsEnd, size]);
    return { streamOffset, streamLength, state, ram: streamLength > 0 ? [[streamOffset, size]] : [] };
  }
  const ram = walk.ram.blocks
    .filter((b) => b.mappedRam && b.usedLength > 0)
    .map((b): Range => [b.mappedRam!.pagesOffset, b.mappedRam!.pagesOffset + b.usedLength])
    .sort((a, b) => a[0] - b[0]);
  const state: Range[] = [];
  let pos = streamOffset;
  for (const [s, e] of ram) {
    if (s < pos) throw new ImageFormatError(`cannot seal: pages region [${s}, ${e}) overlaps the stream before it (offset ${pos})`);
    if (s > pos) state.push([pos, s]);
    pos = e;
  }
  if (size > pos) state.push([pos, size]);
  return { streamOffset, streamLength, state, ram };
}

/** A seal with the right shape and zero digests, to size the descriptor before hashing. */
export function placeholderSeal(layout: SealLayout, chunkBytes: number, hasher: Pick<SealHasher, 'algorithm' | 'digestBytes'>): ImageSeal {
  const zeroHex = '0'.repeat(hasher.digestBytes * 2);
  return {
    version: SEAL_VERSION,
    algorithm: hasher.algorithm,
    chunkBytes,
    streamLength: layout.streamLength,
    state: { ranges: layout.state.map(([s, e]) => [s, e]), digest: zeroHex },
    ram: {
      ranges: layout.ram.map(([s, e]) => [s, e]),
      digests: Buffer.alloc(chunkCount(layout.ram, chunkBytes) * hasher.digestBytes).toString('base64'),
      digest: zeroHex,
    },
  };
}

/** What the events carry about a seal. */
export function sealSummary(seal: ImageSeal): SealSummary {
  return {
    algorithm: seal.algorithm,
    chunkBytes: seal.chunkBytes,
    chunks: chunkCount(seal.ram.ranges, seal.chunkBytes),
    stateDigest: seal.state.digest,
    ramDigest: seal.ram.digest,
  };
}

/** Paces reads to `maxBytesPerSec`, reports progress, honours the abort signal. */
class Pacer {
  private readonly t0 = performance.now();
  bytesRead = 0;
  done = 0;
  constructor(
    private readonly o: SealRunOptions,
    public total: number,
  ) {}
  check(): void {
    if (this.o.signal?.aborted) throw abortError(this.o.signal);
  }
  /** Paced runs (`maxBytesPerSec`) wait in `step`; the others may count without waiting. */
  get paced(): boolean {
    return (this.o.maxBytesPerSec ?? 0) > 0;
  }
  get signal(): AbortSignal | undefined {
    return this.o.signal;
  }
  stepSync(processed: number, read: number): void {
    this.done += processed;
    this.bytesRead += read;
    this.o.onProgress?.(this.done, this.total);
  }
  async step(processed: number, read: number): Promise<void> {
    this.done += processed;
    this.bytesRead += read;
    this.o.onProgress?.(this.done, this.total);
    const rate = this.o.maxBytesPerSec;
    if (rate && rate > 0 && read > 0) {
      const wait = this.t0 + (this.bytesRead / rate) * 1000 - performance.now();
      if (wait > 0) await sleep(wait, this.o.signal);
    }
    this.check();
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (): void => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    };
    const t = setTimeout(done, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(abortError(signal!));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function readExact(src: SealSource, start: number, end: number): Promise<Uint8Array> {
  return src.readTransient ? src.readTransient(start, end - start) : src.read(start, end - start);
}

/** One digest over every byte of `ranges`, in order (a short read is hashed as it is: a mismatch). */
async function hashState(src: SealSource, ranges: readonly Range[], hasher: SealHasher, pacer: Pacer): Promise<Uint8Array> {
  const h = hasher.stream();
  const zeros = h.zeros && src.isHole ? h.zeros.bind(h) : undefined;
  for (const [s, e] of chunksOf(ranges, STATE_READ_BYTES)) {
    if (!zeros) {
      const data = await readExact(src, s, e);
      h.update(data);
      await pacer.step(e - s, data.length);
      continue;
    }
    // The state ranges of a sparse image are mostly alignment holes: a hole is hashed as zeros
    // without reading it (same digest), the data between holes is read in one piece.
    let from = s;
    let read = 0;
    let short = false;
    const readTo = async (to: number) => {
      const data = await readExact(src, from, to);
      h.update(data);
      read += data.length;
      short = data.length < to - from;
    };
    for (let at = s; at < e && !short; ) {
      const end = Math.min(e, at + STATE_HOLE_GRAIN);
      if (await src.isHole!(at, end)) {
        if (from < at) await readTo(at);
        if (short) break;
        zeros(end - at);
        from = end;
      }
      at = end;
    }
    if (!short && from < e) await readTo(e);
    await pacer.step(e - s, read);
  }
  return h.digest();
}

/**
 * The digest of every RAM chunk, in order: a chunk that is entirely a hole is not read (its digest
 * is that of zeros); the next chunk is read while one is hashed.
 */
/** The digest of `len` zero bytes (a hole), computed once per length. */
function zeroDigester(hasher: SealHasher): (len: number) => Uint8Array {
  const zeroDigests = new Map<number, Uint8Array>();
  return (len) => {
    let d = zeroDigests.get(len);
    if (!d) {
      d = hasher.digest(new Uint8Array(len));
      zeroDigests.set(len, d);
    }
    return d;
  };
}

async function hashChunks(
  src: SealSource,
  ranges: readonly Range[],
  chunkBytes: number,
  hasher: SealHasher,
  pacer: Pacer,
  onChunk: (i: number, digest: Uint8Array, chunk: Range) => void,
): Promise<void> {
  const zeroDigest = zeroDigester(hasher);
  if (src.digestChunks && !pacer.paced) {
    // Holes found here (SEEK_DATA), the data chunks hashed elsewhere (worker threads); the
    // results are handed on in chunk order.
    const all = [...chunksOf(ranges, chunkBytes)];
    const digests: Array<Uint8Array | undefined> = new Array(all.length);
    const read = new Array<number>(all.length).fill(0);
    const data: number[] = [];
    for (let i = 0; i < all.length; i++) {
      const [s, e] = all[i]!;
      if (await src.isHole?.(s, e)) digests[i] = zeroDigest(e - s);
      else data.push(i);
    }
    let emitted = 0;
    const emit = (): void => {
      for (; emitted < all.length && digests[emitted]; emitted++) {
        const chunk = all[emitted]!;
        onChunk(emitted, digests[emitted]!, chunk);
        pacer.stepSync(chunk[1] - chunk[0], read[emitted]!);
      }
    };
    const running = src.digestChunks(
      data.map((i) => all[i]!),
      hasher,
      (k, digest, bytesRead) => {
        const i = data[k]!;
        digests[i] = digest;
        read[i] = bytesRead;
        emit();
      },
      pacer.signal,
    );
    if (running) {
      emit();
      await running;
      pacer.check();
      if (emitted !== all.length) throw new Error(`seal: ${all.length - emitted} RAM chunk(s) were not hashed`);
      return;
    }
  }
  const load = async ([s, e]: Range): Promise<Uint8Array | undefined> => ((await src.isHole?.(s, e)) ? undefined : readExact(src, s, e));
  const chunks = chunksOf(ranges, chunkBytes);
  // Up to READ_AHEAD reads in flight while one chunk is hashed: two cores copy from the page cache at once.
  const queue: Array<{ chunk: Range; data: Promise<Uint8Array | undefined> }> = [];
  const refill = (): void => {
    while (queue.length < READ_AHEAD) {
      const n = chunks.next();
      if (n.done) return;
      const data = load(n.value);
      // Keep a rejected read-ahead from being reported as unhandled when an earlier chunk throws first.
      data.catch(() => {});
      queue.push({ chunk: n.value, data });
    }
  };
  refill();
  for (let i = 0; queue.length > 0; i++) {
    const { chunk, data: pending } = queue.shift()!;
    const data = await pending;
    refill();
    const len = chunk[1] - chunk[0];
    onChunk(i, data === undefined ? zeroDigest(len) : data.length === len ? hasher.digest(data) : hasher.digest(padTo(data, len)), chunk);
    await pacer.step(len, data?.length ?? 0);
  }
}

/** A short read (file truncated under us) compared as if the missing bytes were 0xff..., never equal to a full read. */
function padTo(data: Uint8Array, len: number): Uint8Array {
  const out = new Uint8Array(len + 1).fill(0xff);
  out.set(data);
  return out;
}

/**
 * Compute the seal of `layout` in `src`. `chunkBytes` must be what `placeholderSeal` was sized with.
 * Returns the seal and the bytes it read.
 */
export async function computeSeal(
  src: SealSource,
  layout: SealLayout,
  chunkBytes: number,
  hasher: SealHasher,
  o: SealRunOptions = {},
): Promise<{ seal: ImageSeal; bytesRead: number }> {
  const total = [...layout.state, ...layout.ram].reduce((n, [s, e]) => n + (e - s), 0);
  const pacer = new Pacer(o, total);
  pacer.check();
  const stateDigest = await hashState(src, layout.state, hasher, pacer);
  const packed = new Uint8Array(chunkCount(layout.ram, chunkBytes) * hasher.digestBytes);
  await hashChunks(src, layout.ram, chunkBytes, hasher, pacer, (i, d) => packed.set(d, i * hasher.digestBytes));
  return { seal: buildSeal(layout, chunkBytes, hasher, stateDigest, packed), bytesRead: pacer.bytesRead };
}

/**
 * The seal of `layout` when its RAM chunk digests are already known (`packed`: one digest per chunk
 * of `chunkBytes`, in order; a seal follower took them while QEMU wrote the stream): only the state
 * ranges are read. The same seal as `computeSeal` gives for the same bytes. Throws RangeError when
 * `packed` does not hold one digest per chunk.
 */
export async function sealWithChunkDigests(
  src: SealSource,
  layout: SealLayout,
  chunkBytes: number,
  hasher: SealHasher,
  packed: Uint8Array,
  o: SealRunOptions = {},
): Promise<{ seal: ImageSeal; bytesRead: number }> {
  const want = chunkCount(layout.ram, chunkBytes) * hasher.digestBytes;
  if (packed.length !== want) throw new RangeError(`${packed.length} bytes of chunk digests, ${want} expected`);
  const pacer = new Pacer(
    o,
    layout.state.reduce((n, [s, e]) => n + (e - s), 0),
  );
  pacer.check();
  const stateDigest = await hashState(src, layout.state, hasher, pacer);
  return { seal: buildSeal(layout, chunkBytes, hasher, stateDigest, packed), bytesRead: pacer.bytesRead };
}

function buildSeal(layout: SealLayout, chunkBytes: number, hasher: SealHasher, stateDigest: Uint8Array, packed: Uint8Array): ImageSeal {
  return {
    version: SEAL_VERSION,
    algorithm: hasher.algorithm,
    chunkBytes,
    streamLength: layout.streamLength,
    state: { ranges: layout.state.map(([s, e]) => [s, e]), digest: hex(stateDigest) },
    ram: { ranges: layout.ram.map(([s, e]) => [s, e]), digests: Buffer.from(packed).toString('base64'), digest: hex(hasher.digest(packed)) },
  };
}

export interface SealStreamOptions extends SealRunOptions {
  /**
   * A legacy stream is walked out of the chunks the checksums are computed from, so its pages
   * are read once (default, when the source lends chunks: `SealSource.lendChunks`); false walks
   * it from the file first, then reads the chunks (the two-pass path, kept for measurement).
   */
  onePass?: boolean;
}

/** How a stream was sealed: `walk` says where the stream walk read the stream from. */
export interface StreamSealResult {
  seal: ImageSeal;
  bytesRead: number;
  /** `chunks`: from the chunk pass's buffers (one read of the pages); `file`: from the file, before the chunks. */
  walk: 'chunks' | 'file';
}

/**
 * Seal the QEMU stream of an image: walk it, lay the seal out (`sealLayout`), take the chunk size
 * `chunkBytesFor(layout)` gives (the smallest whose seal fits the descriptor; it throws when none
 * does) and hash. A legacy stream's RAM is the whole stream, known before the walk: its chunks are
 * read first and the walk parses its records out of their buffers (one read of every page; see
 * {@link ChunkFeed}); the seal is the same as the two-pass one, byte for byte. Throws
 * ImageFormatError when the stream is not complete and well-formed; an abort rejects with the
 * signal's reason. Progress: the total grows by the state region's size once the walk found it.
 */
export async function sealStream(
  src: SealSource,
  header: Pick<ImageHeader, 'streamOffset' | 'format'>,
  hasher: SealHasher,
  chunkBytesFor: (layout: SealLayout) => number,
  o: SealStreamOptions = {},
): Promise<StreamSealResult> {
  if (header.format === 'legacy' && o.onePass !== false && src.lendChunks && !((o.maxBytesPerSec ?? 0) > 0)) {
    const r = await sealLegacyOnePass(src, header, hasher, chunkBytesFor, o);
    if (r) return r;
  }
  const walk = await walkStream(src, header.streamOffset);
  const layout = sealLayout(header, src.size, walk);
  return { ...(await computeSeal(src, layout, chunkBytesFor(layout), hasher, o)), walk: 'file' };
}

/** The one-pass legacy seal; undefined when the source lends no chunks (the caller walks first). */
async function sealLegacyOnePass(
  src: SealSource,
  header: Pick<ImageHeader, 'streamOffset'>,
  hasher: SealHasher,
  chunkBytesFor: (layout: SealLayout) => number,
  o: SealRunOptions,
): Promise<StreamSealResult | undefined> {
  const size = src.size;
  const streamOffset = header.streamOffset;
  if (!(size > streamOffset)) return undefined;
  const ram: Range[] = [[streamOffset, size]];
  // The chunk size is chosen before the walk found the two state ranges: with each of their
  // unknown offsets (RAM start, RAM end) replaced by the size, which has as many digits or more,
  // the descriptor is at least as long as the real one. A real layout that would fit a smaller
  // chunk is hashed again with it below (so the seal is the two-pass one).
  const bound: SealLayout = {
    streamOffset,
    streamLength: size - streamOffset,
    state: [
      [streamOffset, size],
      [size, size],
    ],
    ram,
  };
  let chunkBytes: number;
  try {
    chunkBytes = chunkBytesFor(bound);
  } catch {
    return undefined;
  }
  const pacer = new Pacer(o, size - streamOffset);
  pacer.check();
  const all = [...chunksOf(ram, chunkBytes)];
  const digests: Array<Uint8Array | undefined> = new Array(all.length);
  const read = new Array<number>(all.length).fill(0);
  const data: number[] = [];
  const zeroDigest = zeroDigester(hasher);
  for (let i = 0; i < all.length; i++) {
    const [s, e] = all[i]!;
    if (await src.isHole?.(s, e)) digests[i] = zeroDigest(e - s);
    else data.push(i);
  }
  const feed = new ChunkFeed(
    src,
    data.map((i) => all[i]!),
  );
  // The workers stop on the caller's abort, and when the walk found the stream unsealable.
  const stop = new AbortController();
  const onAbort = (): void => stop.abort(abortError(o.signal!));
  o.signal?.addEventListener('abort', onAbort, { once: true });
  let emitted = 0;
  let walked = false;
  // In chunk order; the last chunk is counted once the walk is done (and the total known).
  const emit = (): void => {
    for (; emitted < all.length && digests[emitted] && (walked || emitted < all.length - 1); emitted++) {
      const [s, e] = all[emitted]!;
      pacer.stepSync(e - s, read[emitted]!);
    }
  };
  // Set when the chunk pass failed on its own (a read error), not stopped by us or by the caller.
  const pool: { error?: { err: unknown } } = {};
  try {
    const running = src.lendChunks!(
      data.map((i) => all[i]!),
      hasher,
      (k, chunk) => {
        const i = data[k]!;
        digests[i] = chunk.digest;
        read[i] = chunk.bytesRead;
        feed.lend(k, chunk.data, () => chunk.release());
        emit();
      },
      stop.signal,
    );
    if (!running) return undefined;
    const done = running.then(
      () => undefined,
      (err: unknown) => {
        if (!stop.signal.aborted) pool.error = { err };
        feed.fail(err);
      },
    );
    emit();
    let walk: StreamWalk;
    try {
      walk = await walkStream(feed, streamOffset);
    } finally {
      feed.finish();
    }
    const stopPool = async (): Promise<void> => {
      if (!stop.signal.aborted) stop.abort(new Error('the seal stopped its chunk pass'));
      await done;
    };
    if (o.signal?.aborted || pool.error) {
      await stopPool();
      if (o.signal?.aborted) throw abortError(o.signal);
      throw pool.error!.err;
    }
    if (!walk.complete || walk.problems.length > 0 || !walk.ram) {
      await stopPool();
      sealLayout(header, size, walk); // throws ImageFormatError, naming the first problem
    }
    const layout = sealLayout(header, size, walk);
    const want = chunkBytesFor(layout);
    if (walk.mappedRam || want !== chunkBytes) {
      // Not the layout the chunks were cut for (a mapped-ram stream in a legacy image, or a seal
      // that fits smaller chunks): hash again for this one.
      await stopPool();
      pacer.check();
      return { ...(await computeSeal(src, layout, want, hasher, o)), walk: 'chunks' };
    }
    walked = true;
    pacer.total += layout.state.reduce((n, [s, e]) => n + (e - s), 0);
    emit();
    await done;
    const failed = pool.error as { err: unknown } | undefined; // set while awaiting
    if (failed) throw failed.err;
    pacer.check();
    if (emitted !== all.length) throw new Error(`seal: ${all.length - emitted} RAM chunk(s) were not hashed`);
    const packed = new Uint8Array(all.length * hasher.digestBytes);
    for (let i = 0; i < all.length; i++) packed.set(digests[i]!, i * hasher.digestBytes);
    const stateDigest = await hashState(src, layout.state, hasher, pacer);
    return { seal: buildSeal(layout, chunkBytes, hasher, stateDigest, packed), bytesRead: pacer.bytesRead, walk: 'chunks' };
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    if (!stop.signal.aborted) stop.abort(new Error('the seal ended'));
  }
}

/** What is wrong with a seal's own structure (before any data is read); empty when it is sound. */
export function sealProblems(seal: ImageSeal, header: Pick<ImageHeader, 'streamOffset'>, hasher: SealHasher): string[] {
  const p: string[] = [];
  if (seal.algorithm !== hasher.algorithm) p.push(`algorithm "${seal.algorithm}" is not the one this reader checks ("${hasher.algorithm}")`);
  const start = header.streamOffset;
  const end = start + seal.streamLength;
  const sorted = (name: string, ranges: readonly Range[]): void => {
    let pos = start;
    for (const [s, e] of ranges) {
      if (s < pos || e <= s || e > end) {
        p.push(`${name} range [${s}, ${e}) is empty, out of order or outside the stream [${start}, ${end})`);
        return;
      }
      pos = e;
    }
  };
  sorted('state', seal.state.ranges);
  sorted('ram', seal.ram.ranges);
  // Together the two regions must cover every byte of the stream.
  const all = [...seal.state.ranges, ...seal.ram.ranges].sort((a, b) => a[0] - b[0]);
  let covered = start;
  for (const [s, e] of all) {
    if (s > covered) break;
    covered = Math.max(covered, e);
  }
  if (covered < end) p.push(`the state and RAM ranges leave stream bytes from offset ${covered} unsealed`);
  const want = chunkCount(seal.ram.ranges, seal.chunkBytes) * hasher.digestBytes;
  const have = Buffer.from(seal.ram.digests, 'base64');
  if (have.length !== want) p.push(`${have.length} bytes of chunk digests, ${want} expected for ${chunkCount(seal.ram.ranges, seal.chunkBytes)} chunks`);
  else if (hex(hasher.digest(have)) !== seal.ram.digest) p.push('the chunk digests do not match their own digest (ram.digest)');
  return p;
}

export interface CheckSealOptions extends SealRunOptions {
  scope: SealScope;
  hasher: SealHasher;
  /**
   * The image's header and descriptor as the caller already read and checked them (`readImage`'s
   * `ImageInfo` will do): they are not read again. The caller vouches that they are this file's
   * (e.g. a restore that compares the file's fingerprint); the seal's ranges are still checked
   * against the file's size.
   */
  head?: SealHead;
}

/** The part of an image's head a seal check needs: `ImageInfo`'s header and descriptor. */
export interface SealHead {
  header: ImageHeader;
  descriptor: ImageDescriptor;
}

/**
 * Check an image read through `src` against its seal. Never throws for a damaged image (only for
 * an abort): an unreadable header is a failed `seal.present`, an image without a seal is
 * `sealed: false` with `seal.present` `warn` (not a failure).
 */
export async function checkSealSource(src: SealSource, o: CheckSealOptions): Promise<SealCheck> {
  const t0 = performance.now();
  const checks: SealCheckItem[] = [];
  const mismatches: SealMismatch[] = [];
  let bytesRead = 0;
  const result = (sealed: boolean, seal?: ImageSeal): SealCheck => {
    for (const name of ['seal.present', 'seal.reserved', 'seal.state', 'seal.ram'] as const) {
      const unsealed = checks.some((c) => c.name === 'seal.present' && (c.status === 'warn' || c.status === 'skip'));
      if (!checks.some((c) => c.name === name)) checks.push({ name, status: 'skip', detail: unsealed ? 'the image has no seal' : 'not reached: an earlier seal check failed' });
    }
    const r: SealCheck = { sealed, ok: !checks.some((c) => c.status === 'fail'), scope: o.scope, checks, bytesRead, durationMs: performance.now() - t0, mismatches };
    if (seal) r.summary = sealSummary(seal);
    return r;
  };

  let header: ImageHeader;
  let descriptor: ImageDescriptor;
  if (o.head) {
    header = o.head.header;
    descriptor = o.head.descriptor;
  } else {
    try {
      const head = await src.read(0, 16);
      if (hasLibvirtMagic(head)) {
        checks.push({ name: 'seal.present', status: 'skip', detail: 'a libvirt save image: it carries no seal' });
        return result(false);
      }
      if (!hasVmsaveMagic(head)) {
        checks.push({
          name: 'seal.present',
          status: 'fail',
          detail: `not a vmsave image: the file starts with ${JSON.stringify(Buffer.from(head).toString('latin1'))}, not VMSVDONE or VMSVPART`,
        });
        return result(false);
      }
      const r = await readHeaderAndDescriptor(src);
      header = r.header;
      descriptor = decodeDescriptor(r.descBytes);
      bytesRead += r.descBytes.length + 128;
    } catch (err) {
      if (o.signal?.aborted) throw abortError(o.signal);
      const what = err instanceof ImageError ? err.message : String((err as Error)?.message ?? err);
      checks.push({ name: 'seal.present', status: 'fail', detail: `the header or descriptor cannot be trusted, so neither can a seal in it: ${what}` });
      return result(false);
    }
  }
  const seal = descriptor.seal;
  if (!seal) {
    checks.push({
      name: 'seal.present',
      status: 'warn',
      detail: 'the image has no seal (saved before sealing existed, or the save did not seal it): its content cannot be compared with what was written',
    });
    return result(false);
  }
  const problems = sealProblems(seal, header, o.hasher);
  if (problems.length) {
    checks.push({ name: 'seal.present', status: 'fail', detail: `the seal is malformed: ${problems.join('; ')}` });
    return result(true, seal);
  }
  const chunks = chunkCount(seal.ram.ranges, seal.chunkBytes);
  checks.push({
    name: 'seal.present',
    status: 'pass',
    detail: `${seal.algorithm} seal v${seal.version}: state ${seal.state.ranges.length} range(s), RAM ${chunks} chunk(s) of ${human(seal.chunkBytes)}`,
  });

  const stateBytes = seal.state.ranges.reduce((n, [s, e]) => n + (e - s), 0);
  const ramBytes = seal.ram.ranges.reduce((n, [s, e]) => n + (e - s), 0);
  const reservedStart = header.descriptorOffset + header.descriptorLength;
  const pacer = new Pacer(o, header.streamOffset - reservedStart + stateBytes + (o.scope === 'full' ? ramBytes : 0));
  pacer.check();
  try {
    // seal.reserved: the room between the descriptor and the stream is all zero.
    let firstBad = -1;
    let lastBad = -1;
    for (const [s, e] of chunksOf([[reservedStart, header.streamOffset]], STATE_READ_BYTES)) {
      const data = (await src.isHole?.(s, e)) ? undefined : await src.read(s, e - s);
      if (data) {
        for (let i = 0; i < data.length; i++) {
          if (data[i] !== 0) {
            if (firstBad < 0) firstBad = s + i;
            lastBad = s + i;
          }
        }
        if (data.length < e - s && firstBad < 0) firstBad = s + data.length;
      }
      await pacer.step(e - s, data?.length ?? 0);
    }
    if (firstBad >= 0) {
      mismatches.push({ region: 'reserved', start: firstBad, end: lastBad + 1 });
      checks.push({
        name: 'seal.reserved',
        status: 'fail',
        detail: `the reserved room [${reservedStart}, ${header.streamOffset}) after the descriptor must be zero but holds data in [${firstBad}, ${lastBad + 1}): the image was modified or damaged there`,
      });
    } else checks.push({ name: 'seal.reserved', status: 'pass', detail: `${human(header.streamOffset - reservedStart)} of reserved room after the descriptor, all zero` });

    const sizeOk = src.size === header.streamOffset + seal.streamLength;
    const sizeDetail = `the file is ${src.size} bytes but was sealed at ${header.streamOffset + seal.streamLength}: it was truncated or extended since the save`;

    // seal.state
    if (!sizeOk) {
      mismatches.push({ region: 'state', start: Math.min(src.size, header.streamOffset + seal.streamLength), end: Math.max(src.size, header.streamOffset + seal.streamLength) });
      checks.push({ name: 'seal.state', status: 'fail', detail: sizeDetail });
    } else {
      const digest = hex(await hashState(src, seal.state.ranges, o.hasher, pacer));
      if (digest === seal.state.digest) {
        checks.push({
          name: 'seal.state',
          status: 'pass',
          detail: `${human(stateBytes)} of stream outside RAM (configuration, RAM headers, bitmaps, device sections, description): ${seal.algorithm} ${digest} as sealed`,
        });
      } else {
        const first = seal.state.ranges[0];
        const last = seal.state.ranges[seal.state.ranges.length - 1];
        if (first && last) mismatches.push({ region: 'state', start: first[0], end: last[1] });
        checks.push({
          name: 'seal.state',
          status: 'fail',
          detail: `the device-state region (${seal.state.ranges.length} range(s), ${human(stateBytes)}) reads as ${seal.algorithm} ${digest}, sealed as ${seal.state.digest}: device state, bitmaps or stream metadata changed since the save — do not restore; save the VM again`,
        });
      }
    }

    // seal.ram
    if (o.scope !== 'full') checks.push({ name: 'seal.ram', status: 'skip', detail: 'RAM chunks not read (scope state); `verify --content` or a full check reads them' });
    else if (!sizeOk) checks.push({ name: 'seal.ram', status: 'fail', detail: sizeDetail });
    else {
      const packed = Buffer.from(seal.ram.digests, 'base64');
      const d = o.hasher.digestBytes;
      let bad = 0;
      let firstChunk: Range | undefined;
      await hashChunks(src, seal.ram.ranges, seal.chunkBytes, o.hasher, pacer, (i, digest, chunk) => {
        for (let k = 0; k < d; k++) {
          if (digest[k] !== packed[i * d + k]) {
            bad++;
            firstChunk ??= chunk;
            if (mismatches.length < 1000) mismatches.push({ region: 'ram', start: chunk[0], end: chunk[1] });
            return;
          }
        }
      });
      if (bad === 0) checks.push({ name: 'seal.ram', status: 'pass', detail: `${chunks} RAM chunk(s), ${human(ramBytes)}, match the seal (${seal.algorithm})` });
      else {
        checks.push({
          name: 'seal.ram',
          status: 'fail',
          detail: `${bad} of ${chunks} RAM chunk(s) differ from the seal, first [${firstChunk![0]}, ${firstChunk![1]}): guest memory in the image changed since the save (bit rot, a bad copy, punched holes) — a restore would give the guest wrong memory; save again`,
        });
      }
    }
  } catch (err) {
    if (o.signal?.aborted) throw abortError(o.signal);
    bytesRead += pacer.bytesRead;
    const name = (['seal.reserved', 'seal.state', 'seal.ram'] as const).find((n) => !checks.some((c) => c.name === n)) ?? 'seal.ram';
    checks.push({ name, status: 'fail', detail: `reading the image failed: ${(err as Error)?.message ?? String(err)}` });
    return result(true, seal);
  }
  bytesRead += pacer.bytesRead;
  return result(true, seal);
}
