/**
 * Random-access byte sources and a bounded cursor over them. Pure: the file-backed
 * source lives in node/file-source.ts.
 */

/** Something that can be read at any offset: a file, a Buffer. */
export interface ByteSource {
  /** Total size in bytes; nothing at or past it may be read. */
  readonly size: number;
  /** Read up to `length` bytes at `position`; fewer only at the end of the source. */
  read(position: number, length: number): Promise<Uint8Array>;
}

/** [start, end) byte ranges. */
export type Range = readonly [number, number];

/** The data extents of a region of a file (SEEK_DATA/SEEK_HOLE), as a file-backed source reports them. */
export interface ExtentScan {
  /** Data extents clipped to the scanned range, in order. */
  extents: Range[];
  /** False when the filesystem does not support SEEK_DATA/SEEK_HOLE. */
  supported: boolean;
  /** True when more than `maxExtents` were found and the scan stopped. */
  truncated: boolean;
}

/**
 * A ByteSource that can also say how it is stored, for the verifier's allocation checks. A file
 * (node/verify.ts) gives both; a plain buffer gives neither, and those checks are then skipped.
 */
export interface VerifySource extends ByteSource {
  /** Data extents inside [start, end), at most `maxExtents`; without it `mapped-ram.bitmap-vs-extents` is skipped. */
  dataExtents?(start: number, end: number, maxExtents: number): ExtentScan | Promise<ExtentScan>;
  /** Bytes allocated on disk (st_blocks × 512); without it `sparseness` is skipped. */
  allocatedBytes?(): Promise<number>;
}

/** A ByteSource over an in-memory buffer. */
export function bufferSource(buf: Uint8Array): ByteSource {
  return {
    size: buf.length,
    read: async (position, length) => buf.subarray(Math.max(0, position), Math.max(0, Math.min(buf.length, position + length))),
  };
}

/** A read that would cross the end of the source or of the region being parsed. */
export class OutOfBounds extends Error {
  override readonly name = 'OutOfBounds';
  constructor(
    readonly position: number,
    readonly wanted: number,
    readonly limit: number,
  ) {
    super(`needs ${wanted} byte(s) at offset ${position} but the data ends at ${limit}`);
  }
}

const WINDOW = 256 * 1024;

/**
 * Thrown by a Cursor's synchronous readers when the bytes asked for are inside the limit but not in
 * the read-ahead window. Not an error about the data: the caller refills (`Cursor.load`) and retries.
 */
export class NotBuffered {
  constructor(
    readonly position: number,
    readonly wanted: number,
  ) {}
}

/**
 * A forward cursor with a read-ahead window. Every read is checked against `limit`
 * before it is issued; a length larger than `maxRead` is refused rather than allocated.
 */
export class Cursor {
  pos: number;
  private wStart = 0;
  private wBuf: Uint8Array = new Uint8Array(0);
  private wView: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));

  constructor(
    private readonly src: ByteSource,
    pos: number,
    readonly limit: number = src.size,
    private readonly maxRead: number = 16 * 1024 * 1024,
  ) {
    this.pos = pos;
  }

  /** Throws OutOfBounds unless [pos, pos+n) lies inside the limit. */
  check(n: number, at = this.pos): void {
    if (!Number.isSafeInteger(n) || n < 0 || !Number.isSafeInteger(at) || at < 0 || at + n > this.limit) {
      throw new OutOfBounds(at, n, this.limit);
    }
  }

  private async need(n: number): Promise<number> {
    this.check(n);
    const rel = this.pos - this.wStart;
    if (rel >= 0 && rel + n <= this.wBuf.length) return rel;
    if (n > this.maxRead) throw new OutOfBounds(this.pos, n, this.pos + this.maxRead);
    const len = Math.min(Math.max(n, WINDOW), this.limit - this.pos);
    const data = await this.src.read(this.pos, len);
    if (data.length < n) throw new OutOfBounds(this.pos, n, this.pos + data.length);
    this.wStart = this.pos;
    this.wBuf = data;
    this.wView = new DataView(data.buffer, data.byteOffset, data.length);
    return 0;
  }

  /**
   * Make [from, at+n) buffered, failing exactly as an n-byte read at `at` would (`from` ≤ `at`, so a
   * record read field by field can be re-read from its start without another refill).
   */
  async load(from: number, at: number, n: number): Promise<void> {
    this.check(n, at);
    if (n > this.maxRead) throw new OutOfBounds(at, n, at + this.maxRead);
    this.check(at - from, from);
    const want = at + n - from;
    const len = Math.min(Math.max(want, WINDOW), this.limit - from);
    const data = await this.src.read(from, len);
    if (data.length < want) throw new OutOfBounds(at, n, from + data.length);
    this.wStart = from;
    this.wBuf = data;
    this.wView = new DataView(data.buffer, data.byteOffset, data.length);
  }

  /** Window index of [pos, pos+n): OutOfBounds past the limit (as the async readers), NotBuffered when a refill is needed. */
  private have(n: number): number {
    this.check(n);
    const rel = this.pos - this.wStart;
    if (rel >= 0 && rel + n <= this.wBuf.length) return rel;
    throw new NotBuffered(this.pos, n);
  }
  /* Synchronous readers over the window: the same checks and values as the async ones, or NotBuffered. */
  u8Sync(): number {
    const r = this.have(1);
    this.pos += 1;
    return this.wBuf[r]!;
  }
  be16Sync(): number {
    const r = this.have(2);
    this.pos += 2;
    return this.wView.getUint16(r, false);
  }
  be32Sync(): number {
    const r = this.have(4);
    this.pos += 4;
    return this.wView.getUint32(r, false);
  }
  be64Sync(): bigint {
    const r = this.have(8);
    this.pos += 8;
    return this.wView.getBigUint64(r, false);
  }
  /**
   * A big-endian u64 as its two u32 halves, without allocating a bigint (a legacy stream has a
   * million page records): the high half is returned, the low half left in `low`.
   */
  be64HiSync(): number {
    const r = this.have(8);
    this.pos += 8;
    this.low = this.wView.getUint32(r + 4, false);
    return this.wView.getUint32(r, false);
  }
  /** The low half of the u64 the last `be64HiSync` read. */
  low = 0;
  latin1Sync(n: number): string {
    const r = this.have(n);
    this.pos += n;
    return Buffer.from(this.wBuf.buffer, this.wBuf.byteOffset + r, n).toString('latin1');
  }

  async u8(): Promise<number> {
    const r = await this.need(1);
    this.pos += 1;
    return this.wBuf[r]!;
  }
  async peekU8(): Promise<number> {
    const r = await this.need(1);
    return this.wBuf[r]!;
  }
  async be16(): Promise<number> {
    const r = await this.need(2);
    this.pos += 2;
    return this.wView.getUint16(r, false);
  }
  async be32(): Promise<number> {
    const r = await this.need(4);
    this.pos += 4;
    return this.wView.getUint32(r, false);
  }
  /** A big-endian u64 as a bigint (callers decide what fits in a number). */
  async be64(): Promise<bigint> {
    const r = await this.need(8);
    this.pos += 8;
    return this.wView.getBigUint64(r, false);
  }
  /** A copy of the next n bytes (n bounded by maxRead). */
  async bytes(n: number): Promise<Uint8Array> {
    const r = await this.need(n);
    this.pos += n;
    return this.wBuf.slice(r, r + n);
  }
  async latin1(n: number): Promise<string> {
    return Buffer.from(await this.bytes(n)).toString('latin1');
  }
  /** Advance n bytes without reading them (still bounds-checked). */
  skip(n: number): void {
    this.check(n);
    this.pos += n;
  }
  seek(pos: number): void {
    this.check(0, pos);
    this.pos = pos;
  }
}

/** bigint → number, or undefined when it does not fit exactly. */
export function safeNumber(v: bigint): number | undefined {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
}
