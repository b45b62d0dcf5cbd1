/**
 * The legacy seal taken while QEMU writes the stream (issue #14: the seal's cost after the save).
 * A legacy stream is written strictly append-only (QEMU truncates the file to the stream offset
 * when the migration starts, then writes in order), so every byte below the file's size is written
 * and stays as it is. The follower polls the size (`fstat` on its own read-only fd), reads each 4 MiB
 * chunk as soon as the file holds it whole, CRCs it and lends it to a walk of the RAM sections
 * (`walkStreamPrefix` over a `FollowFeed`): when QEMU has completed, `finish()` reads only the tail
 * chunk(s), walks the device sections (from the file), hashes the state ranges and writes the seal —
 * byte for byte the one `sealImage` writes for the same file.
 *
 * Anything it cannot vouch for ends in `sealImage` after completion: a file that shrank or was
 * replaced, a chunk read short, a first or last followed chunk whose bytes changed since (read
 * again at `finish`), a walk that stopped, a seal that needs larger chunks (a long live save), a
 * sparse or direct-IO image (not followed at all), a read error.
 */
import { promises as fsp } from 'node:fs';
import { crc32 } from 'node:zlib';
import { decodeDescriptor } from '../descriptor.ts';
import { ImageError, ImageStateError, ioError } from '../errors.ts';
import { FollowFeed } from '../follow-feed.ts';
import { readHeaderAndDescriptor } from '../read.ts';
import { DEFAULT_CHUNK_BYTES, chunkCount, sealLayout, sealSummary, sealWithChunkDigests } from '../seal.ts';
import { walkStream, walkStreamPrefix, type StreamPrefix } from '../stream.ts';
import { crc32Hasher, openSealSource, sealChunkBytes, sealImage, type SealImageOptions, type SealImageResult } from './seal.ts';
import { updateDescriptor } from './image.ts';

export interface SealFollowerOptions {
  /** How often the file's size is looked at while no whole chunk is new (default 20 ms). */
  pollMs?: number;
  /** Follow a direct-IO image too (default false: its pages are not in the page cache, the follower would compete with QEMU for the disk). */
  followDirectIo?: boolean;
}

/** What a follower did, for logs and benchmarks. */
export interface SealFollowerStats {
  /** `following`, `passive` (not followed: `reason`), `fallback` (finish will run `sealImage`: `reason`), `finished`, `aborted`. */
  state: 'following' | 'passive' | 'fallback' | 'finished' | 'aborted';
  reason?: string;
  /** Whole chunks read and hashed so far. */
  chunks: number;
  bytes: number;
  /** Where `finish` spent its time, ms: the tail chunks and the end of the RAM walk, the re-check, the device walk, the state ranges, the descriptor write (with its fdatasync). */
  finishMs?: { tail: number; recheck: number; walk: number; state: number; write: number };
}

export interface SealFollower {
  /**
   * After QEMU completed (before `finalizeImage`): hash what is left and write the seal, as
   * `sealImage(path, o)` would (and through it when the follower cannot vouch for what it read).
   * Rejects like `sealImage`; after `abort()` with ImageStateError.
   */
  finish(o?: SealImageOptions): Promise<SealImageResult>;
  /** Stop following (a failed or cancelled save): nothing is written, the file is closed. Idempotent. */
  abort(): void;
  readonly stats: SealFollowerStats;
}

const READ_AHEAD = 3;
/** Chunks a walk read may span (the walk's reads are 256 KiB windows: two at most). */
const MAX_SPAN = 2;
const BUFFERS = READ_AHEAD + MAX_SPAN + 1;
const HEADER_FLAGS_OFFSET = 20;
const FLAG_DIRECT_IO = 1 << 1;

/**
 * Start following a legacy image that QEMU is about to write or is writing (call it once the image
 * exists, e.g. right after its fds are handed to QEMU). Never throws: a follower that cannot follow
 * is passive and its `finish` is `sealImage`. Abort it on every path where the save fails.
 *
 * @example
 * const follower = startSealFollower(path);
 * try { await migrate(); } catch (e) { follower.abort(); throw e; }
 * const sealed = await follower.finish({ signal });
 */
export function startSealFollower(path: string, o: SealFollowerOptions = {}): SealFollower {
  const pollMs = o.pollMs ?? 20;
  const stats: SealFollowerStats = { state: 'following', chunks: 0, bytes: 0 };
  const chunkBytes = DEFAULT_CHUNK_BYTES;
  let fh: fsp.FileHandle | undefined;
  let ino = 0;
  let streamOffset = 0;
  const digests: number[] = [];
  let finalSize: number | undefined;
  let wakeLoop: (() => void) | undefined;
  let feed: FollowFeed | undefined;
  let prefix: Promise<{ prefix?: StreamPrefix; problem?: string }> | undefined;
  const pool: Buffer[] = [];

  const wake = (): void => {
    const w = wakeLoop;
    wakeLoop = undefined;
    w?.();
  };
  const giveUp = (reason: string): void => {
    if (stats.state !== 'following') return;
    stats.state = 'fallback';
    stats.reason = reason;
    feed?.fail(new Error(`the seal follower stopped: ${reason}`));
    wake();
  };
  const idle = (ms: number): Promise<void> =>
    new Promise((resolve) => {
      const t = setTimeout(() => {
        wakeLoop = undefined;
        resolve();
      }, ms);
      wakeLoop = () => {
        clearTimeout(t);
        resolve();
      };
    });

  const follow = async (): Promise<void> => {
    try {
      fh = await fsp.open(path, 'r');
      const st = await fh.stat();
      ino = st.ino;
      const src = await openSealSource(path, { workers: 0 });
      let head: Awaited<ReturnType<typeof readHeaderAndDescriptor>>;
      try {
        head = await readHeaderAndDescriptor(src, path);
      } finally {
        await src.close();
      }
      const flags = Buffer.alloc(4);
      await fh.read(flags, 0, 4, HEADER_FLAGS_OFFSET);
      if (head.header.format !== 'legacy') return passive(`a ${head.header.format} image is written at fixed offsets in any order: sealed after completion`);
      if ((flags.readUInt32LE(0) & FLAG_DIRECT_IO) !== 0 && !o.followDirectIo) return passive('a direct-IO image: its pages are not in the page cache');
      if (head.header.complete) return passive('the image is already complete');
      streamOffset = head.header.streamOffset;
    } catch (err) {
      return passive(`cannot open the image: ${(err as Error)?.message ?? String(err)}`);
    }
    if (stats.state !== 'following') return;
    for (let i = 0; i < BUFFERS; i++) pool.push(Buffer.allocUnsafe(chunkBytes));
    feed = new FollowFeed(streamOffset, chunkBytes, MAX_SPAN);
    const f = feed;
    prefix = walkStreamPrefix(f, streamOffset).then(
      (r) => {
        f.finish();
        if (r.prefix) return { prefix: r.prefix };
        const problem = r.walk.problems[0]?.detail ?? 'the walk stopped';
        giveUp(`the walk stopped: ${problem}`);
        return { problem };
      },
      (err: unknown) => {
        f.finish();
        const problem = String((err as Error)?.message ?? err);
        giveUp(`the walk stopped: ${problem}`);
        return { problem };
      },
    );
    let size = streamOffset;
    let next = 0;
    const inflight: Array<{ k: number; buf: Buffer; len: number; read: Promise<number> }> = [];
    const readChunk = async (buf: Buffer, pos: number, len: number): Promise<number> => {
      let done = 0;
      while (done < len) {
        const { bytesRead } = await fh!.read(buf, done, len - done, pos + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return done;
    };
    try {
      while (stats.state === 'following') {
        const end = finalSize ?? size;
        const count = finalSize !== undefined ? Math.ceil((end - streamOffset) / chunkBytes) : Math.floor((end - streamOffset) / chunkBytes);
        while (inflight.length < READ_AHEAD && next < count && pool.length > 0) {
          const pos = streamOffset + next * chunkBytes;
          const len = Math.min(chunkBytes, end - pos);
          const buf = pool.pop()!;
          const read = readChunk(buf, pos, len);
          read.catch(() => {});
          inflight.push({ k: next++, buf, len, read });
        }
        if (inflight.length > 0) {
          const r = inflight.shift()!;
          const n = await r.read;
          if (n < r.len) {
            giveUp(`chunk ${r.k} read short (${n} of ${r.len} bytes): the file shrank`);
            break;
          }
          const data = r.buf.subarray(0, n);
          digests[r.k] = crc32(data);
          stats.chunks = r.k + 1;
          stats.bytes += n;
          f.lend(r.k, data, () => {
            pool.push(r.buf);
            wake();
          });
          continue;
        }
        if (finalSize !== undefined && next >= count) break;
        if (next < count) {
          // Every buffer is lent to the walk: wait for it to release one.
          await idle(pollMs);
          continue;
        }
        await idle(pollMs);
        if (finalSize !== undefined || stats.state !== 'following') continue;
        const st = await fh!.stat();
        if (st.size < size) giveUp(`the file shrank from ${size} to ${st.size} bytes while QEMU wrote it`);
        else size = st.size;
      }
    } catch (err) {
      giveUp(`read failed: ${(err as Error)?.message ?? String(err)}`);
    }
    await Promise.allSettled(inflight.map((r) => r.read));
  };
  const passive = (reason: string): void => {
    if (stats.state === 'following') {
      stats.state = 'passive';
      stats.reason = reason;
    }
  };
  const running = follow();
  const close = async (): Promise<void> => {
    await running;
    await fh?.close().catch(() => {});
    fh = undefined;
  };

  /** Re-read chunk k and compare with the digest taken while following. */
  const unchanged = async (k: number, size: number): Promise<boolean> => {
    const pos = streamOffset + k * chunkBytes;
    const len = Math.min(chunkBytes, size - pos);
    const buf = Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      const { bytesRead } = await fh!.read(buf, done, len - done, pos + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done === len && crc32(buf) === digests[k];
  };

  const finish = async (so: SealImageOptions = {}): Promise<SealImageResult> => {
    if (stats.state === 'aborted') throw new ImageStateError(`the seal follower of ${path} was aborted: nothing to finish`, { path });
    if (stats.state === 'finished') throw new ImageStateError(`the seal follower of ${path} has already finished`, { path });
    const t0 = performance.now();
    const fallback = async (reason?: string): Promise<SealImageResult> => {
      if (reason) giveUp(reason);
      feed?.fail(new Error('the seal follower is done'));
      wake();
      await close();
      stats.state = 'finished';
      return sealImage(path, so);
    };
    // Wait for the open and the header (a finish right after the start).
    while (stats.state === 'following' && feed === undefined) await new Promise((r) => setTimeout(r, 1));
    if (stats.state !== 'following' || !fh || !feed) return fallback();
    const followed = stats.bytes;
    const lastFollowed = stats.chunks - 1;
    let size: number;
    try {
      const [st, named] = await Promise.all([fh.stat(), fsp.stat(path)]);
      if (named.ino !== ino || st.ino !== ino) return fallback(`${path} is not the file the follower opened any more`);
      size = st.size;
    } catch (err) {
      return fallback(`cannot stat: ${(err as Error)?.message ?? String(err)}`);
    }
    if (size < streamOffset + stats.chunks * chunkBytes) return fallback(`the file (${size} bytes) is shorter than what was followed`);
    finalSize = size;
    feed.end(size);
    wake();
    const onAbort = (): void => giveUp('the seal was aborted');
    so.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await running;
      if (so.signal?.aborted) throw so.signal.reason;
      if (stats.state !== 'following') return await fallback();
      const walked = await prefix!;
      if (!walked.prefix) return await fallback(`the walk stopped: ${walked.problem}`);
      const tWalked = performance.now();
      // The first and the last chunk read while QEMU wrote: the same bytes now (a rewrite shows).
      for (const k of new Set([0, lastFollowed])) {
        if (k >= 0 && !(await unchanged(k, size))) return await fallback(`chunk ${k} changed after it was read`);
      }
      const tRecheck = performance.now();
      const src = await openSealSource(path, { workers: 0 });
      try {
        if (src.size !== size) return await fallback(`the file changed size during the finish (${size} → ${src.size})`);
        const { header, descBytes } = await readHeaderAndDescriptor(src, path);
        if (header.complete) throw new ImageStateError(`image ${path} is already complete (VMSVDONE): seal it before finalizeImage`, { path });
        if (header.streamOffset !== streamOffset || header.format !== 'legacy') return await fallback('the header changed');
        const descriptor = decodeDescriptor(descBytes);
        const walk = await walkStream(src, streamOffset, { resume: walked.prefix });
        if (!walk.complete || walk.problems.length > 0) return await fallback('the stream is not complete and well-formed');
        const layout = sealLayout(header, size, walk);
        const tWalk = performance.now();
        if (sealChunkBytes(path, header, descriptor, layout) !== chunkBytes) return await fallback('the seal needs larger chunks than the follower read');
        const count = chunkCount(layout.ram, chunkBytes);
        if (digests.length !== count) return await fallback(`${digests.length} chunks hashed, ${count} in the layout`);
        const packed = Buffer.alloc(count * 4);
        for (let i = 0; i < count; i++) packed.writeUInt32BE(digests[i]! >>> 0, i * 4);
        const run: { signal?: AbortSignal } = {};
        if (so.signal) run.signal = so.signal;
        const sealed = await sealWithChunkDigests(src, layout, chunkBytes, crc32Hasher, packed, run);
        await src.close();
        await close();
        const tState = performance.now();
        await updateDescriptor(path, { ...descriptor, seal: sealed.seal });
        stats.state = 'finished';
        stats.finishMs = { tail: tWalked - t0, recheck: tRecheck - tWalked, walk: tWalk - tRecheck, state: tState - tWalk, write: performance.now() - tState };
        return {
          seal: sealed.seal,
          summary: sealSummary(sealed.seal),
          bytesRead: stats.bytes + sealed.bytesRead,
          durationMs: performance.now() - t0,
          walk: 'follow',
          followedBytes: followed,
        };
      } finally {
        await src.close();
      }
    } catch (err) {
      stats.state = 'aborted';
      await close();
      if (err instanceof ImageError || so.signal?.aborted) throw err;
      throw ioError('cannot seal', path, err);
    } finally {
      so.signal?.removeEventListener('abort', onAbort);
    }
  };

  return {
    finish,
    abort() {
      if (stats.state === 'finished' || stats.state === 'aborted') return;
      giveUp('aborted');
      stats.state = 'aborted';
      feed?.fail(new Error('the seal follower was aborted'));
      wake();
      void close();
    },
    get stats() {
      return stats;
    },
  };
}
