/** The image verifier on a file: opens it as a VerifySource (reads, SEEK_DATA/SEEK_HOLE extents, st_blocks). */
import { promises as fsp } from 'node:fs';
import { runVerification, type VerifyOptions, type VerifyResult } from '../verify.ts';
import { dataExtents, seekData } from './extents.ts';
import { openFileSource } from './file-source.ts';
import { crc32Hasher } from './seal.ts';

/**
 * Verify an image file (vmsave, libvirt, or a bare QEMU stream) and return named checks.
 * Never throws for a malformed file; a file that cannot be opened or read is a failed check too.
 * A sealed vmsave image also gets `seal.present`, `seal.reserved` and `seal.state`; `seal.ram`
 * (every RAM chunk read) only with `content: true`.
 *
 * @example
 * const r = await verifyImage('/var/lib/vmsave/web1.vmsave', { hostCaps });
 * if (!r.ok) for (const c of r.checks.filter((c) => c.status === 'fail')) console.error(c.name, c.detail);
 */
export function verifyImage(path: string, options: VerifyOptions = {}): Promise<VerifyResult> {
  return runVerification(
    async () => {
      const src = await openFileSource(path);
      return {
        size: src.size,
        read: (position, length) => src.read(position, length),
        dataExtents: (start, end, maxExtents) => dataExtents(src.fd, start, end, maxExtents),
        isHole: (start: number, end: number) => {
          const data = seekData(src.fd, start);
          return data === undefined || data >= end;
        },
        allocatedBytes: async () => (await fsp.stat(path)).blocks * 512,
        close: () => src.close(),
      };
    },
    { sealHasher: crc32Hasher, ...options },
  );
}
