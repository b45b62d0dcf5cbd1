/** File-backed ByteSource (the I/O adapter for the pure parsers). */
import { promises as fsp } from 'node:fs';
import { ioError } from '../errors.ts';
import type { ByteSource } from '../source.ts';

/** A ByteSource over an open file; close it when done (`await using` works too). */
export interface FileSource extends ByteSource, AsyncDisposable {
  readonly path: string;
  readonly fd: number;
  close(): Promise<void>;
}

/** Open `path` read-only as a ByteSource. Throws ImageIoError. */
export async function openFileSource(path: string): Promise<FileSource> {
  const { fh, size } = await openReadOnly(path);
  const close = async (): Promise<void> => {
    await fh.close().catch(() => {});
  };
  return {
    path,
    fd: fh.fd,
    size,
    async read(position: number, length: number): Promise<Uint8Array> {
      const len = Math.max(0, Math.min(length, size - position));
      if (len === 0 || position < 0) return new Uint8Array(0);
      const buf = Buffer.allocUnsafe(len);
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
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** Open `path` read-only and stat it; the handle is closed again if the stat fails. Throws ImageIoError. */
export async function openReadOnly(path: string): Promise<{ fh: fsp.FileHandle; size: number }> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, 'r');
  } catch (err) {
    throw ioError('cannot open', path, err);
  }
  try {
    return { fh, size: (await fh.stat()).size };
  } catch (err) {
    await fh.close().catch(() => {});
    throw ioError('cannot stat', path, err);
  }
}
