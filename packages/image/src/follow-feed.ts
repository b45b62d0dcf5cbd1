/**
 * A ByteSource over a stream that is still being written, served from the chunks a seal follower
 * reads behind the writer (node/seal-follow.ts): a legacy stream's RAM records are walked while
 * QEMU writes them, out of the very buffers their checksums are computed from. Pure: the chunks
 * are lent to it by the follower.
 */
import type { ByteSource } from './source.ts';

interface Lent {
  data: Uint8Array;
  release: () => void;
}

/**
 * Serves a forward reader (`walkStreamPrefix`) from chunks of `chunkBytes` that start at `start`
 * and are lent in index order (chunk k = [start + k·chunkBytes, start + (k+1)·chunkBytes), the last
 * one shorter). A read waits until every chunk it covers is lent, and releases every chunk before
 * the one it starts in: the reader never reads before its last read's start (the stream cursor
 * does not). Until `end(size)` the size is unknown (`size` is Number.MAX_SAFE_INTEGER); after it,
 * a read past the end returns what there is. What a read returns stays valid until the next read.
 *
 * The lender must keep lending while the reader waits: a read covers at most `maxSpan` chunks, and
 * the lender has at least that many buffers.
 */
export class FollowFeed implements ByteSource {
  private end_: number | undefined;
  private readonly lent = new Map<number, Lent>();
  /** Every chunk below it is released (or will be at once when lent). */
  private front = 0;
  /** Chunks lent so far: 0..lentUpTo-1. */
  private lentUpTo = 0;
  private waiter: { k: number; resolve: () => void; reject: (err: unknown) => void } | undefined;
  private failure: { err: unknown } | undefined;
  private finished = false;
  private scratch = new Uint8Array(0);

  constructor(
    private readonly start: number,
    private readonly chunkBytes: number,
    private readonly maxSpan = 2,
  ) {
    if (!(chunkBytes > 0) || !(start >= 0)) throw new RangeError(`chunk size ${chunkBytes} and start ${start} must be positive`);
  }

  get size(): number {
    return this.end_ ?? Number.MAX_SAFE_INTEGER;
  }

  /** Chunk `k` (the next one in order), kept until the reader has gone past it. */
  lend(k: number, data: Uint8Array, release: () => void): void {
    if (k !== this.lentUpTo) throw new RangeError(`chunk ${k} lent out of order (expected ${this.lentUpTo})`);
    this.lentUpTo++;
    if (this.finished || k < this.front) {
      release();
      return;
    }
    this.lent.set(k, { data, release });
    this.wake();
  }

  /** The stream's final size (absolute offset of its end): reads wait no longer for chunks past it. */
  end(size: number): void {
    this.end_ = Math.max(this.start, size);
    this.wake();
  }

  /** The lender failed or stopped: a waiting read (and every later one) rejects with `err`. */
  fail(err: unknown): void {
    if (this.failure) return;
    this.failure = { err };
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(err);
  }

  /** The reader is done: every chunk is released, and every chunk lent from now on at once. */
  finish(): void {
    this.finished = true;
    for (const k of [...this.lent.keys()]) this.releaseChunk(k);
    this.fail(new Error('the follow feed was finished'));
  }

  /** Chunks lent and not yet released. */
  get held(): number {
    return this.lent.size;
  }

  async read(position: number, length: number): Promise<Uint8Array> {
    if (this.finished) throw new Error('the follow feed was finished');
    const end = Math.min(this.size, position + length);
    if (!(end > position)) return new Uint8Array(0);
    if (position < this.start) throw new RangeError(`read at ${position} before the stream's start ${this.start}`);
    const k1 = Math.floor((position - this.start) / this.chunkBytes);
    const k2 = Math.floor((end - 1 - this.start) / this.chunkBytes);
    if (k1 < this.front) throw new RangeError(`read at ${position} goes back before a chunk already released`);
    if (k2 - k1 + 1 > this.maxSpan) throw new RangeError(`a read of ${length} bytes spans ${k2 - k1 + 1} chunks, more than ${this.maxSpan}`);
    for (; this.front < k1; this.front++) this.releaseChunk(this.front);
    const parts: Uint8Array[] = [];
    for (let k = k1; k <= k2; k++) {
      const l = await this.wait(k);
      if (!l) break;
      parts.push(l.data);
      // A chunk read short (the file ended inside it): nothing after it.
      if (l.data.length < this.chunkBytes) break;
    }
    // The size may have become known while waiting.
    const to = Math.min(end, this.size);
    const firstStart = this.start + k1 * this.chunkBytes;
    const from = position - firstStart;
    const want = to - position;
    if (parts.length === 0) return new Uint8Array(0);
    if (parts.length === 1) return parts[0]!.subarray(from, from + want);
    if (this.scratch.length < want) this.scratch = new Uint8Array(want);
    let n = 0;
    for (let i = 0; i < parts.length && n < want; i++) {
      const piece = parts[i]!.subarray(i === 0 ? from : 0);
      const take = Math.min(piece.length, want - n);
      this.scratch.set(piece.subarray(0, take), n);
      n += take;
    }
    return this.scratch.subarray(0, n);
  }

  /** Chunk k, or undefined when the stream ends before it. */
  private async wait(k: number): Promise<Lent | undefined> {
    for (;;) {
      const l = this.lent.get(k);
      if (l) return l;
      if (this.end_ !== undefined && this.start + k * this.chunkBytes >= this.end_) return undefined;
      if (this.failure) throw this.failure.err;
      if (k < this.lentUpTo) throw new RangeError(`chunk ${k} was released before the read that needs it`);
      if (this.waiter) throw new Error(`two reads wait at once (chunks ${this.waiter.k} and ${k})`);
      await new Promise<void>((resolve, reject) => {
        this.waiter = { k, resolve, reject };
      });
    }
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.lent.has(w.k) || (this.end_ !== undefined && this.start + w.k * this.chunkBytes >= this.end_)) {
      this.waiter = undefined;
      w.resolve();
    }
  }

  private releaseChunk(k: number): void {
    const l = this.lent.get(k);
    if (!l) return;
    this.lent.delete(k);
    l.release();
  }
}
