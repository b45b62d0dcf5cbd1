/**
 * The seal's RAM chunks hashed in worker threads: each worker opens the image read-only, takes the
 * next chunk index from a shared counter, reads the chunk with positional reads into its own buffer
 * and CRC-32s it (zlib), so two cores read from the page cache (or the disk) and hash at once.
 * Holes are found by the caller (SEEK_DATA, cheap) and never given to a worker.
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
const { path, starts, ends, counter, maxLen, direct } = workerData;
const next = new Int32Array(counter);
const ALIGN = 4096;
let fd;
let dfd;
try {
  fd = openSync(path, 'r');
  const buf = Buffer.allocUnsafe(maxLen + 1);
  // O_DIRECT: reads of whole 4 KiB blocks into a 4 KiB-aligned piece of a buffer. Node cannot say
  // where a buffer lies, so the aligned offset is found by trying a one-block read at each 512-byte
  // step; when none works (or O_DIRECT cannot be opened) the buffered fd is used.
  let dbuf;
  if (direct) {
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
  for (;;) {
    const i = Atomics.add(next, 0, 1);
    if (i >= starts.length) break;
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
    parentPort.postMessage([i, crc32(data), done]);
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
      for (const w of pool) void w.terminate();
      if (err !== undefined) reject(err);
      else resolve();
    };
    const onAbort = (): void => finish(o.signal!.reason ?? Object.assign(new Error('the operation was aborted'), { name: 'AbortError' }));
    if (o.signal?.aborted) return onAbort();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    for (let w = 0; w < n; w++) {
      // execArgv []: the worker uses Node's own modules only, so no loader of the parent (tsx, vitest) is started in it.
      const worker = new Worker(SEAL_WORKER_SOURCE, { eval: true, execArgv: [], workerData: { path, starts, ends, counter, maxLen, direct: o.direct === true } });
      pool.push(worker);
      worker.on('message', (m: [number, number, number] | ['done'] | ['error', string]) => {
        if (settled) return;
        if (m[0] === 'done') {
          if (--running === 0) finish();
        } else if (m[0] === 'error') finish(new Error(m[1]));
        else {
          try {
            onChunk(m[0], m[1], m[2]);
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
