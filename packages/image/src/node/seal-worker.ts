/**
 * The seal's RAM chunks hashed in worker threads: each worker opens the image read-only, takes the
 * next chunk index from a shared counter, reads the chunk with positional reads into its own buffer
 * and CRC-32s it (zlib), so two cores read from the page cache (or the disk) and hash at once.
 * Holes are found by the caller (SEEK_DATA, cheap) and never given to a worker.
 *
 * Lent chunks (`crc32ChunksLent`): the workers read into a few buffers shared with the calling
 * thread and hand each chunk's bytes on with its CRC, so the caller can parse them (a legacy
 * stream's records) without reading the file again; a worker takes a buffer before it takes the
 * next chunk index, and waits for the caller to release one when all are lent.
 *
 * The worker's code is a plain-JS string run with `eval: true`: it then needs no loader for
 * TypeScript (vitest, tsx) and no file beside the built module.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { Range } from '../source.ts';

/** Plain JS, CommonJS: run by `new Worker(SEAL_WORKER_SOURCE, { eval: true })`. */
const SEAL_WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { openSync, readSync, closeSync, constants } = require('node:fs');
const { crc32 } = require('node:zlib');
const { path, starts, ends, counter, maxLen, direct, ctl: ctlBuf, slots, slotLen } = workerData;
const next = new Int32Array(counter);
const ALIGN = 4096;
// Lent chunks: ctl = [generation, stop, state of slot 0, slot 1, ...] (0 free, 1 taken).
const ctl = ctlBuf ? new Int32Array(ctlBuf) : undefined;
const GEN = 0;
const STOP = 1;
const SLOT0 = 2;
let fd;
let dfd;
try {
  fd = openSync(path, 'r');
  let buf = ctl ? undefined : Buffer.allocUnsafe(maxLen + 1);
  // O_DIRECT: reads of whole 4 KiB blocks into a 4 KiB-aligned piece of a buffer. Node cannot say
  // where a buffer lies, so the aligned offset is found by trying a one-block read at each 512-byte
  // step; when none works (or O_DIRECT cannot be opened) the buffered fd is used.
  let dbuf;
  if (direct && !ctl) {
    try {
      dfd = openSync(path, constants.O_RDONLY | constants.O_DIRECT);
      const raw = Buffer.allocUnsafe(maxLen + 3 * ALIGN);
      for (let off = 0; off < ALIGN && !dbuf; off += 512) {
        try {
          readSync(dfd, raw, off, ALIGN, 0);
          dbuf = raw.subarray(off);
        } catch (err) {
          if (err.code !== 'EINVAL') throw err;
        }
      }
    } catch {}
    if (!dbuf && dfd !== undefined) {
      closeSync(dfd);
      dfd = undefined;
    }
  }
  const readBuffered = (start, len) => {
    let done = 0;
    while (done < len) {
      const n = readSync(fd, buf, done, len - done, start + done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  };
  const readDirect = (start, len) => {
    const from = start - (start % ALIGN);
    const want = Math.ceil((start + len - from) / ALIGN) * ALIGN;
    let done = 0;
    while (done < want) {
      const n = readSync(dfd, dbuf, done, want - done, from + done);
      if (n === 0) break;
      done += n;
      if (n % ALIGN !== 0) break; // the end of the file
    }
    return dbuf.subarray(start - from, Math.max(start - from, Math.min(done, start - from + len)));
  };
  // A free slot, taken (its index), or -1 once the caller said stop.
  const takeSlot = () => {
    for (;;) {
      if (Atomics.load(ctl, STOP) !== 0) return -1;
      const gen = Atomics.load(ctl, GEN);
      for (let s = SLOT0; s < ctl.length; s++) if (Atomics.compareExchange(ctl, s, 0, 1) === 0) return s - SLOT0;
      // A release bumps the generation: a release between the scan and the wait ends the wait at once.
      Atomics.wait(ctl, GEN, gen, 250);
    }
  };
  const freeSlot = (s) => {
    Atomics.store(ctl, SLOT0 + s, 0);
    Atomics.add(ctl, GEN, 1);
    Atomics.notify(ctl, GEN);
  };
  for (;;) {
    let slot = -1;
    if (ctl) {
      // The slot before the index: chunks are then taken in order, each with a buffer (see ChunkFeed).
      slot = takeSlot();
      if (slot < 0) break;
      buf = Buffer.from(slots, slot * slotLen, slotLen);
    }
    const i = Atomics.add(next, 0, 1);
    if (i >= starts.length) {
      if (slot >= 0) freeSlot(slot);
      break;
    }
    const start = starts[i];
    const len = ends[i] - start;
    let data = dbuf ? readDirect(start, len) : readBuffered(start, len);
    const done = data.length;
    if (done < len) {
      // A short read (file truncated under us): hashed as the bytes read then 0xff up to len + 1,
      // like the in-thread path, so it never equals a full read.
      buf.set(data, 0);
      data = buf.subarray(0, len + 1);
      data.fill(0xff, done);
    }
    parentPort.postMessage(slot >= 0 ? [i, crc32(data), done, slot] : [i, crc32(data), done]);
  }
  parentPort.postMessage(['done']);
} catch (err) {
  parentPort.postMessage(['error', String((err && err.message) || err)]);
} finally {
  if (fd !== undefined) closeSync(fd);
  if (dfd !== undefined) closeSync(dfd);
}
`;

/** Workers a seal uses: two (the machine's cores, at most two; one core still gains the read/hash overlap). */
export const SEAL_WORKERS = Math.max(1, Math.min(2, availableParallelism()));

/**
 * CRC-32 of each data chunk of `path`, on `workers` threads: `onChunk(k, crc, bytesRead)` for the
 * k-th of `chunks`, in completion order (not chunk order). `direct`: read with O_DIRECT (whole
 * aligned 4 KiB blocks, the page cache bypassed; buffered when the file system refuses it). Rejects on a read error or when `signal`
 * aborts (the workers are stopped either way).
 */
export function crc32ChunksInWorkers(
  path: string,
  chunks: readonly Range[],
  onChunk: (k: number, crc: number, bytesRead: number) => void,
  o: { workers?: number; signal?: AbortSignal; direct?: boolean } = {},
): Promise<void> {
  return runPool(path, chunks, o, undefined, (m) => onChunk(m[0], m[1], m[2]));
}

/**
 * Buffers a lent-chunk pool has beyond one per worker, so that the workers keep reading while the
 * caller holds chunks; more cost CPU time (4 MiB chunks in more buffers than the CPU cache holds).
 */
export const LENT_EXTRA_BUFFERS = 4;

/**
 * Like {@link crc32ChunksInWorkers} (buffered reads only), but each chunk's bytes are lent to the
 * caller with its CRC: `onChunk(k, crc, bytesRead, data, release)`, `data` (the `bytesRead` bytes
 * read) valid until `release()`, which must be called once; the workers wait for a free buffer
 * when `workers + LENT_EXTRA_BUFFERS` chunks are lent. Chunks are taken in index order, each into
 * a buffer of its own, so while fewer than two are lent the lowest chunk not yet handed on is
 * being read (the promise ChunkFeed needs). Rejects on a read error or when `signal` aborts (the
 * workers are stopped, waiting or not).
 */
export function crc32ChunksLent(
  path: string,
  chunks: readonly Range[],
  onChunk: (k: number, crc: number, bytesRead: number, data: Uint8Array, release: () => void) => void,
  o: { workers?: number; signal?: AbortSignal } = {},
): Promise<void> {
  const workers = Math.max(1, Math.min(o.workers ?? SEAL_WORKERS, chunks.length));
  const slotCount = workers + LENT_EXTRA_BUFFERS;
  const slotLen = chunks.reduce((n, [s, e]) => Math.max(n, e - s), 0) + 1;
  const lend: Lend = { ctl: new SharedArrayBuffer(4 * (2 + slotCount)), slots: new SharedArrayBuffer(slotLen * slotCount), slotLen };
  const ctl = new Int32Array(lend.ctl);
  return runPool(path, chunks, { ...o, workers }, lend, (m) => {
    const slot = m[3]!;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      Atomics.store(ctl, 2 + slot, 0);
      Atomics.add(ctl, 0, 1);
      Atomics.notify(ctl, 0);
    };
    onChunk(m[0], m[1], m[2], new Uint8Array(lend.slots, slot * slotLen, m[2]), release);
  });
}

interface Lend {
  ctl: SharedArrayBuffer;
  slots: SharedArrayBuffer;
  slotLen: number;
}

function runPool(
  path: string,
  chunks: readonly Range[],
  o: { workers?: number; signal?: AbortSignal; direct?: boolean },
  lend: Lend | undefined,
  onMessage: (m: [number, number, number, number?]) => void,
): Promise<void> {
  if (chunks.length === 0) return Promise.resolve();
  const starts = new Float64Array(chunks.length);
  const ends = new Float64Array(chunks.length);
  let maxLen = 0;
  chunks.forEach(([s, e], k) => {
    starts[k] = s;
    ends[k] = e;
    maxLen = Math.max(maxLen, e - s);
  });
  const counter = new SharedArrayBuffer(4);
  const n = Math.max(1, Math.min(o.workers ?? SEAL_WORKERS, chunks.length));
  return new Promise<void>((resolve, reject) => {
    const pool: Worker[] = [];
    let running = n;
    let settled = false;
    const finish = (err?: unknown): void => {
      if (settled) return;
      settled = true;
      o.signal?.removeEventListener('abort', onAbort);
      if (lend) {
        // Wake any worker waiting for a free buffer: it sees the stop and ends.
        const ctl = new Int32Array(lend.ctl);
        Atomics.store(ctl, 1, 1);
        Atomics.add(ctl, 0, 1);
        Atomics.notify(ctl, 0);
      }
      for (const w of pool) void w.terminate();
      if (err !== undefined) reject(err);
      else resolve();
    };
    const onAbort = (): void => finish(o.signal!.reason ?? Object.assign(new Error('the operation was aborted'), { name: 'AbortError' }));
    if (o.signal?.aborted) return onAbort();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    const data = { path, starts, ends, counter, maxLen, direct: o.direct === true && !lend, ...(lend ? { ctl: lend.ctl, slots: lend.slots, slotLen: lend.slotLen } : {}) };
    for (let w = 0; w < n; w++) {
      // execArgv []: the worker uses Node's own modules only, so no loader of the parent (tsx, vitest) is started in it.
      const worker = new Worker(SEAL_WORKER_SOURCE, { eval: true, execArgv: [], workerData: data });
      pool.push(worker);
      worker.on('message', (m: [number, number, number, number?] | ['done'] | ['error', string]) => {
        if (settled) return;
        if (m[0] === 'done') {
          if (--running === 0) finish();
        } else if (m[0] === 'error') finish(new Error(m[1]));
        else {
          try {
            onMessage(m as [number, number, number, number?]);
          } catch (err) {
            finish(err);
          }
        }
      });
      worker.on('error', (err) => finish(err));
      worker.on('exit', (code) => {
        if (!settled && code !== 0) finish(new Error(`seal worker exited with code ${code}`));
      });
    }
  });
}
