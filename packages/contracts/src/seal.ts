import { z } from 'zod';

/**
 * A summary of an image's content seal (docs/image-format.md, "Seal"), carried by the save and
 * verification events so the log says what the image held when it was sealed.
 */
export const SealSummary = z.object({
  /** Checksum algorithm of the seal (`crc32`). */
  algorithm: z.string().min(1).max(32),
  /** Bytes per RAM chunk. */
  chunkBytes: z.number().int().positive(),
  /** Number of RAM chunks. */
  chunks: z.number().int().min(0),
  /** Hex digest of the device-state region. */
  stateDigest: z.string().regex(/^[0-9a-f]{1,128}$/, 'state digest: lowercase hex'),
  /** Hex digest over the packed per-chunk RAM digests. */
  ramDigest: z.string().regex(/^[0-9a-f]{1,128}$/, 'RAM digest: lowercase hex'),
});
export type SealSummary = z.infer<typeof SealSummary>;
