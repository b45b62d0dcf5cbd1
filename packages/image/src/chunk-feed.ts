/**
 * A ByteSource over the chunks a seal's chunk pass reads anyway: a legacy stream is walked out of
 * the buffers its checksums are computed from, so its pages are read from the file once, not
 * twice (docs/benchmarks.md, "Seal cost (issue #14)"). Pure: the chunks are lent to it by whoever
 * reads them (the seal's workers, node/seal-worker.ts); reads it cannot serve from them go to a
 * fallback source (the file).
 */
import type { ByteSource, Range } from './source.ts';

interface Lent {
  data: Uint8Array;
  release: () => void;
}

interface Waiter {
  resolve: (lent: Lent) => void;
  reject: (err: unknown) => void;
}

/**
 * Serves a forward reader (a stream walk) from lent chunks. It relies on the lender keeping this
 * promise: chunks are taken in index order, each into a buffer of its own, and while fewer than
 * two chunks are lent and unreleased the lowest chunk not yet handed on is being read. The feed
 * then never waits for a chunk that cannot come: a read waits only for the lowest unreleased
 * chunk (`front`) or the one after it, and releases every chunk before the one it starts in.
 *
 * A read is served from the file instead when it starts before `front` (the reader went back),
 * more than one chunk ahead of it (the description at the end of the stream, read first), in a
 * hole between chunks, across more than two chunks, or in a chunk that was read short. What a read
 * returns stays valid until the reader's next read (or `finish`): a forward reader that holds on
 * to its last read only, and lets go of it when it reads again (the stream walk's cursor does).
 */
export class ChunkFeed implements ByteSource {
  readonly size: number;
  private readonly starts: number[];
  private readonly ends: number[];
  private readonly lent: Array<Lent | undefined>;
  private readonly released: boolean[];
  private readonly waiters = new Map<number, Waiter>();
  /** Every chunk below it is released (or will be when it arrives). */
  private front = 0;
  private finished = false;
  private failure: { err: unknown } | undefined;
  /** Bytes served by the fallback source (not from a lent chunk). */
  fallbackBytes = 0;
  /** Where a read across two chunks is copied to (reused: a read is let go of at the next one). */
  private scratch = new Uint8Array(0);

  constructor(
    private readonly fallback: ByteSource,
    chunks: readonly Range[],
  ) {
    this.size = fallback.size;
    this.starts = chunks.map(([s]) => s);
    this.ends = chunks.map(([, e]) => e);
    for (let k = 1; k < chunks.length; k++) {
      if (this.starts[k]! < this.ends[k - 1]!) throw new RangeError(`chunk ${k} [${this.starts[k]}, ${this.ends[k]}) overlaps the one before it`);
    }
    this.lent = new Array<Lent | undefined>(chunks.length).fill(undefined);
    this.released = new Array<boolean>(chunks.length).fill(false);
  }

  /** Chunk `k`'s bytes (`data.length` < its size: read short), kept until `release` is called. */
  lend(k: number, data: Uint8Array, release: () => void): void {
    if (k < 0 || k >= this.lent.length || this.lent[k] || this.released[k]) throw new RangeError(`chunk ${k} lent twice or out of range`);
    const l: Lent = { data, release };
    if (this.finished || k < this.front) {
      this.released[k] = true;
      release();
      return;
    }
    this.lent[k] = l;
    const w = this.waiters.get(k);
    if (w) {
      this.waiters.delete(k);
      w.resolve(l);
    }
  }

  /** The lender failed: every read waiting for a chunk (and every later one) rejects with `err`. */
  fail(err: unknown): void {
    if (this.failure) return;
    this.failure = { err };
    for (const w of this.waiters.values()) w.reject(err);
    this.waiters.clear();
  }

  /** The reader is done: every lent chunk is released, and every chunk lent from now on at once. */
  finish(): void {
    this.finished = true;
    for (let k = 0; k < this.lent.length; k++) this.releaseChunk(k);
    for (const w of this.waiters.values()) w.reject(new Error('the chunk feed was finished while a read waited'));
    this.waiters.clear();
  }

  async read(position: number, length: number): Promise<Uint8Array> {
    const end = Math.min(this.size, position + length);
    if (this.finished || !(end > position) || position < 0) return this.fromFile(position, length);
    const k = this.chunkAt(position);
    if (k < 0) {
      // In a hole: the chunks before it are behind the reader.
      const next = this.firstAfter(position);
      if (next <= this.front + 1) this.releaseBelow(next);
      return this.fromFile(position, length);
    }
    if (k < this.front || k > this.front + 1) return this.fromFile(position, length);
    const k2 = this.chunkAt(end - 1);
    if (k2 !== k && (k2 !== k + 1 || this.starts[k2] !== this.ends[k])) return this.fromFile(position, length);
    this.releaseBelow(k);
    const a = await this.wait(k);
    const b = k2 === k ? a : await this.wait(k2);
    if (a.data.length < this.ends[k]! - this.starts[k]! || b.data.length < this.ends[k2]! - this.starts[k2]!) return this.fromFile(position, length);
    const from = position - this.starts[k]!;
    if (k2 === k) return a.data.subarray(from, from + (end - position));
    // Across two chunks: a copy (once per chunk at most, a window's length).
    if (this.scratch.length < end - position) this.scratch = new Uint8Array(end - position);
    const out = this.scratch.subarray(0, end - position);
    const head = a.data.subarray(from);
    out.set(head, 0);
    out.set(b.data.subarray(0, end - this.starts[k2]!), head.length);
    return out;
  }

  private fromFile(position: number, length: number): Promise<Uint8Array> {
    return this.fallback.read(position, length).then((d) => {
      this.fallbackBytes += d.length;
      return d;
    });
  }

  private wait(k: number): Promise<Lent> {
    const l = this.lent[k];
    if (l) return Promise.resolve(l);
    if (this.failure) return Promise.reject(this.failure.err);
    if (this.waiters.has(k)) return Promise.reject(new Error(`two reads wait for chunk ${k}`));
    return new Promise<Lent>((resolve, reject) => this.waiters.set(k, { resolve, reject }));
  }

  private releaseBelow(k: number): void {
    for (; this.front < k; this.front++) this.releaseChunk(this.front);
  }

  private releaseChunk(k: number): void {
    const l = this.lent[k];
    if (!l) return;
    this.lent[k] = undefined;
    this.released[k] = true;
    l.release();
  }

  /** Index of the chunk holding `pos`, or -1. */
  private chunkAt(pos: number): number {
    const i = this.firstAfter(pos) - 1;
    return i >= 0 && pos < this.ends[i]! ? i : -1;
  }

  /** Index of the first chunk that starts after `pos` (binary search). */
  private firstAfter(pos: number): number {
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.starts[mid]! <= pos) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
