/**
 * Upload an image's data extents into an ImageStore: parts first, the manifest last, so a partial
 * upload never looks complete. A re-run after a crash keeps the parts an earlier run of the same
 * unchanged file finished (their metadata names the file's fingerprint and their pieces'
 * checksums), uploads the rest, removes parts the layout no longer has, and sweeps the chunks a
 * killed writer left.
 */
import { promises as fsp } from 'node:fs';
import { basename } from 'node:path';
import { crc32Hasher, dataExtents, fingerprintImage, readImage, sealSummary } from '@vmsave/image/node';
import { ReplicaError, abortError } from './errors.ts';
import { DEFAULT_PART_BYTES, type Layout, PIECE_MAX_BYTES, type ReplicaManifest, layoutOf } from './manifest.ts';
import type { ImageStore } from './store.ts';

export interface TransferProgress {
  /** Bytes of data moved so far (parts kept from an earlier run count as moved). */
  doneBytes: number;
  totalBytes: number;
  elapsedMs: number;
}

export interface UploadOptions {
  host?: string;
  jobId?: string;
  imagePath?: string;
  partBytes?: number;
  /** Parts in flight at once (default 4). */
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (p: TransferProgress) => void;
  /** Chunks of dead writers older than this are swept before the upload (default 10 min). */
  sweepGraceMs?: number;
}

export interface TransferResult {
  key: string;
  bucket: string;
  /** Bytes this run moved (0 when the object set was already complete). */
  bytesMoved: number;
  /** Bytes of data the object set holds. */
  dataBytes: number;
  /** Source (upload) or rebuilt file (download) allocated bytes. */
  allocatedBytes: number;
  /** Data extents (as SEEK_DATA found them) and pieces (their checksummed cuts). */
  extents: number;
  pieces: number;
  parts: number;
  /** Parts an earlier run had finished and this one kept. */
  partsKept: number;
  seconds: number;
  /** Download: seconds until the last extent was written (before the fsync and the checks). */
  transferSeconds?: number;
  /** Download: seconds of the fsync, the header check, the seal check and the link. */
  checkSeconds?: number;
  alreadyComplete: boolean;
}

const fpKey = (f: { ino: string; size: number; mtimeNs: string; ctimeNs: string }) => `${f.ino}:${f.size}:${f.mtimeNs}:${f.ctimeNs}`;
const hex = (d: Uint8Array) => Buffer.from(d).toString('hex');
/** Bytes of one read of the source: a whole piece (`PIECE_MAX_BYTES`), checksummed as it lands. */
const READ_BYTES = PIECE_MAX_BYTES;

/** Run `fn` over `items` with at most `n` at once; the first failure stops the rest from starting and is thrown. */
export async function pool<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async () => {
    while (failed === undefined && next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(n, items.length)) }, worker));
  if (failed !== undefined) throw failed;
}

export async function uploadImage(store: ImageStore, path: string, key: string, o: UploadOptions = {}): Promise<TransferResult> {
  const t0 = performance.now();
  const signal = o.signal;
  if (signal?.aborted) throw abortError(signal);
  let info: Awaited<ReturnType<typeof readImage>>;
  try {
    info = await readImage(path);
  } catch (err) {
    throw new ReplicaError('replica-source', `${path}: not a readable vmsave image: ${(err as Error).message}`, { cause: err });
  }
  if (!info.header.complete) throw new ReplicaError('replica-source', `${path}: the image is not complete (magic VMSVPART)`);
  const fingerprint = await fingerprintImage(path);
  const fh = await fsp.open(path, 'r');
  try {
    const st = await fh.stat();
    const allocatedBytes = st.blocks * 512;
    const base = {
      key,
      bucket: store.bucket,
      allocatedBytes,
    };
    const existing = await store.getManifest(key).catch(() => undefined);
    if (existing && fpKey(existing.fingerprint) === fpKey(fingerprint)) {
      return {
        ...base,
        bytesMoved: 0,
        dataBytes: existing.dataBytes,
        extents: existing.extents.length,
        pieces: existing.extents.length,
        parts: existing.parts.length,
        partsKept: existing.parts.length,
        seconds: (performance.now() - t0) / 1000,
        alreadyComplete: true,
      };
    }
    // A manifest of another file under this key is stale: it stops looking complete first.
    if (existing) await store.delete(key);
    // Leftovers of killed writers are invisible to readers: a sweep that fails does not stop the upload.
    await store.sweep({ graceMs: o.sweepGraceMs ?? 10 * 60_000 }).catch(() => undefined);

    const scan = dataExtents(fh.fd, 0, info.size);
    const partBytes = o.partBytes ?? DEFAULT_PART_BYTES;
    const layout = layoutOf(scan.extents, partBytes);
    const totalBytes = layout.parts.reduce((a, p) => a + p.bytes, 0);
    const crcs: string[] = new Array(layout.pieces.length);
    let doneBytes = 0;
    let movedBytes = 0;
    let kept = 0;
    const progress = (n: number) => {
      doneBytes += n;
      o.onProgress?.({ doneBytes, totalBytes, elapsedMs: performance.now() - t0 });
    };
    const fp = fpKey(fingerprint);
    await pool(
      layout.parts.map((_, i) => i),
      o.concurrency ?? 4,
      async (i) => {
        const part = layout.parts[i]!;
        const had = await store.headPart(key, i);
        const meta = had?.metadata;
        if (had && meta?.fingerprint === fp && meta.partBytes === String(partBytes) && Number(meta.pieces) === part.count && had.bytes === part.bytes) {
          const list = (meta.crcs ?? '').split(',');
          if (list.length === part.count && list.every((c) => /^[0-9a-f]{8}$/.test(c))) {
            list.forEach((c, j) => {
              crcs[part.first + j] = c;
            });
            kept++;
            progress(part.bytes);
            return;
          }
        }
        // Read and checksum the part's pieces once, keeping them to upload: at most `partBytes` per part in flight.
        const chunks: Buffer[] = [];
        const partCrcs: string[] = [];
        for (let j = part.first; j < part.first + part.count; j++) {
          const piece = layout.pieces[j]!;
          const h = crc32Hasher.stream();
          for (let done = 0; done < piece.length; ) {
            if (signal?.aborted) throw abortError(signal);
            const n = Math.min(READ_BYTES, piece.length - done);
            const buf = Buffer.allocUnsafe(n);
            const { bytesRead } = await fh.read(buf, 0, n, piece.offset + done);
            if (bytesRead !== n) throw new ReplicaError('replica-source', `${path}: short read at ${piece.offset + done} (${bytesRead} of ${n}): the file changed`);
            h.update(buf);
            chunks.push(buf);
            done += n;
          }
          partCrcs.push(hex(h.digest()));
        }
        let c = 0;
        const stream = new ReadableStream<Uint8Array>({
          pull(ctl) {
            if (signal?.aborted) return ctl.error(abortError(signal));
            const b = chunks[c++];
            if (b === undefined) return ctl.close();
            ctl.enqueue(b);
            progress(b.length);
          },
        });
        await store.putPart(key, i, stream, { fingerprint: fp, partBytes: String(partBytes), pieces: String(part.count), crcs: partCrcs.join(',') }, { signal });
        movedBytes += part.bytes;
        partCrcs.forEach((v, j) => {
          crcs[part.first + j] = v;
        });
      },
    );
    if (signal?.aborted) throw abortError(signal);
    // Parts an earlier run with another layout left beyond this one's.
    for (const i of await store.listParts(key)) if (i >= layout.parts.length) await store.deletePart(key, i);

    const headerBytes = await readExactly(fh, 0, info.header.descriptorOffset + info.header.descriptorLength, path);
    const manifest: ReplicaManifest = {
      kind: 'vmsave-replica',
      version: 1,
      complete: true,
      key,
      imageName: basename(path),
      size: info.size,
      allocatedBytes,
      dataBytes: totalBytes,
      partBytes,
      extents: layout.pieces.map((p, i) => [p.offset, p.length, crcs[i]!] as [number, number, string]),
      parts: layout.parts.map((p) => ({ bytes: p.bytes })),
      fingerprint,
      header: Buffer.from(headerBytes).toString('base64'),
      format: info.header.format,
      ...(info.descriptor.seal ? { seal: sealSummary(info.descriptor.seal) } : {}),
      holes: scan.supported,
      source: { host: o.host, jobId: o.jobId, imagePath: o.imagePath ?? path },
      createdAt: new Date().toISOString(),
    };
    await store.putManifest(key, manifest);
    return {
      ...base,
      bytesMoved: movedBytes,
      dataBytes: totalBytes,
      extents: scan.extents.length,
      pieces: layout.pieces.length,
      parts: layout.parts.length,
      partsKept: kept,
      seconds: (performance.now() - t0) / 1000,
      alreadyComplete: false,
    };
  } finally {
    await fh.close().catch(() => {});
  }
}

async function readExactly(fh: fsp.FileHandle, position: number, length: number, path: string): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const { bytesRead } = await fh.read(buf, 0, length, position);
  if (bytesRead !== length) throw new ReplicaError('replica-source', `${path}: short read of the header (${bytesRead} of ${length})`);
  return buf;
}

export type { Layout };
