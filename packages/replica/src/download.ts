/**
 * Download a replicated image into a sparse file: into a temporary name in the destination's
 * directory, writing only the manifest's extents (holes stay holes), each checked against its
 * CRC-32 as it lands; then the header and descriptor against the manifest's, the image's own seal
 * over every RAM chunk (`checkSeal` full), and only then linked into place (never over an existing
 * file). A failure or a re-run removes the temporary files; nothing partial bears the image's name.
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { checkSeal, crc32Hasher } from '@vmsave/image/node';
import { ReplicaError, abortError } from './errors.ts';
import { layoutOfManifest, manifestProblems } from './manifest.ts';
import type { ImageStore } from './store.ts';
import { type TransferProgress, type TransferResult, pool } from './upload.ts';

export interface DownloadOptions {
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (p: TransferProgress) => void;
  /** Check the rebuilt file against its seal (default true). */
  checkSeal?: boolean;
}

const TMP_MARK = '.fetch-';
/** Writes of one part in flight at once (each at most one chunk of the store). */
const WRITES_IN_FLIGHT = 8;
/** The temporary names a download of `dest` uses (and a re-run removes): `.<name>.fetch-<pid>-<n>`. */
export const tempPrefixOf = (dest: string): string => `.${basename(dest)}${TMP_MARK}`;

/** Remove what earlier downloads of `dest` left (killed or failed). Returns the names removed. */
export async function removeDownloadLeftovers(dest: string): Promise<string[]> {
  const dir = dirname(dest);
  const prefix = tempPrefixOf(dest);
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  const gone: string[] = [];
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    await fsp.rm(join(dir, n), { force: true });
    gone.push(n);
  }
  return gone;
}

export async function downloadImage(store: ImageStore, key: string, dest: string, o: DownloadOptions = {}): Promise<TransferResult> {
  const t0 = performance.now();
  const signal = o.signal;
  if (signal?.aborted) throw abortError(signal);
  const manifest = await store.getManifest(key);
  if (!manifest) throw new ReplicaError('replica-missing', `no complete replica ${key} in bucket ${store.bucket}`);
  const problems = manifestProblems(manifest);
  if (problems.length) throw new ReplicaError('replica-incomplete', `manifest of ${key}: ${problems.join('; ')}`);
  const layout = layoutOfManifest(manifest);
  if (
    await fsp
      .lstat(dest)
      .then(() => true)
      .catch(() => false)
  )
    throw new ReplicaError('replica-exists', `${dest} already exists: not overwritten`);
  await fsp.mkdir(dirname(dest), { recursive: true });
  await removeDownloadLeftovers(dest);
  const tmp = join(dirname(dest), `${tempPrefixOf(dest)}${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
  // 0o600 as createImage: an image holds guest memory.
  const fh = await fsp.open(tmp, 'wx', 0o600);
  try {
    await fh.truncate(manifest.size);
    let doneBytes = 0;
    const progress = (n: number) => {
      doneBytes += n;
      o.onProgress?.({ doneBytes, totalBytes: manifest.dataBytes, elapsedMs: performance.now() - t0 });
    };
    await pool(
      layout.parts.map((_, i) => i),
      o.concurrency ?? 4,
      async (i) => {
        const part = layout.parts[i]!;
        const stream = await store.getPart(key, i, { signal });
        // Positional writes at the extents' offsets, up to `WRITES_IN_FLIGHT` at once, while the next chunks arrive.
        const writes = new Set<Promise<void>>();
        let writeFailed: unknown;
        const write = async (data: Uint8Array, position: number) => {
          const p: Promise<void> = fh
            .write(data, 0, data.length, position)
            .then(({ bytesWritten }) => {
              if (bytesWritten !== data.length) throw new ReplicaError('replica-io', `${tmp}: short write at ${position} (${bytesWritten} of ${data.length})`);
            })
            .catch((err: unknown) => {
              writeFailed ??= err;
            })
            .finally(() => writes.delete(p));
          writes.add(p);
          while (writes.size >= WRITES_IN_FLIGHT && writeFailed === undefined) await Promise.race(writes);
          if (writeFailed !== undefined) throw writeFailed;
        };
        try {
          let j = part.first;
          const end = part.first + part.count;
          let inPiece = 0;
          let h = crc32Hasher.stream();
          let got = 0;
          for await (const chunk of stream as unknown as AsyncIterable<Uint8Array>) {
            if (signal?.aborted) throw abortError(signal);
            let at = 0;
            while (at < chunk.length) {
              if (j >= end) throw new ReplicaError('replica-incomplete', `part ${i} of ${key}: more bytes than its ${part.bytes}`);
              const piece = layout.pieces[j]!;
              const n = Math.min(piece.length - inPiece, chunk.length - at);
              const slice = chunk.subarray(at, at + n);
              h.update(slice);
              await write(slice, piece.offset + inPiece);
              inPiece += n;
              at += n;
              got += n;
              if (inPiece === piece.length) {
                const want = manifest.extents[j]![2];
                const have = Buffer.from(h.digest()).toString('hex');
                if (have !== want)
                  throw new ReplicaError('replica-checksum', `extent ${j} at offset ${piece.offset} (${piece.length} bytes) of ${key}: CRC-32 ${have}, the manifest says ${want}`);
                j++;
                inPiece = 0;
                h = crc32Hasher.stream();
              }
            }
            progress(chunk.length);
          }
          if (got !== part.bytes || j !== end) throw new ReplicaError('replica-incomplete', `part ${i} of ${key}: ${got} of ${part.bytes} bytes`);
          await Promise.all(writes);
          if (writeFailed !== undefined) throw writeFailed;
        } finally {
          // Nothing writes to the file after its part failed (the file is closed and removed after).
          await Promise.allSettled(writes);
        }
      },
    );
    const transferSeconds = (performance.now() - t0) / 1000;
    await fh.sync();
    await fh.close();
    const t1 = performance.now();
    // The header and descriptor as uploaded.
    const want = Buffer.from(manifest.header, 'base64');
    const rd = await fsp.open(tmp, 'r');
    try {
      const have = Buffer.alloc(want.length);
      await rd.read(have, 0, want.length, 0);
      if (!have.equals(want)) throw new ReplicaError('replica-header', `${key}: the rebuilt header and descriptor differ from the manifest's`);
    } finally {
      await rd.close();
    }
    if (o.checkSeal !== false && manifest.seal) {
      const c = await checkSeal(tmp, { scope: 'full', ...(signal ? { signal } : {}) });
      if (!c.ok) {
        const bad = c.checks.filter((x) => x.status === 'fail').map((x) => `${x.name}: ${x.detail}`);
        throw new ReplicaError('replica-seal', `${key}: the rebuilt image fails its seal: ${bad.join('; ') || 'not sealed'}`);
      }
    }
    if (signal?.aborted) throw abortError(signal);
    try {
      await fsp.link(tmp, dest);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new ReplicaError('replica-exists', `${dest} appeared during the download: not overwritten`);
      throw err;
    }
    await fsp.rm(tmp, { force: true });
    const dir = await fsp.open(dirname(dest), 'r');
    await dir.sync().catch(() => {});
    await dir.close();
    const st = await fsp.stat(dest);
    return {
      key,
      bucket: store.bucket,
      bytesMoved: manifest.dataBytes,
      dataBytes: manifest.dataBytes,
      allocatedBytes: st.blocks * 512,
      // The data extents the pieces were cut from: runs of adjacent pieces.
      extents: manifest.extents.filter(([o], i) => i === 0 || o !== manifest.extents[i - 1]![0] + manifest.extents[i - 1]![1]).length,
      pieces: manifest.extents.length,
      parts: manifest.parts.length,
      partsKept: 0,
      seconds: (performance.now() - t0) / 1000,
      transferSeconds,
      checkSeconds: (performance.now() - t1) / 1000,
      alreadyComplete: false,
    };
  } finally {
    await fh.close().catch(() => {});
    // Linked or not, the temporary name goes: the image bears its own name only when complete.
    await fsp.rm(tmp, { force: true }).catch(() => {});
  }
}
