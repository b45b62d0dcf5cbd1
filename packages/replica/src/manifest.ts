/**
 * The manifest of a replicated image and the layout of its data in parts. Pure.
 *
 * An image's data extents (SEEK_DATA/SEEK_HOLE) are cut into pieces of at most `PIECE_MAX_BYTES`,
 * each with its CRC-32, and packed back to back into parts of `partBytes` (the last one shorter):
 * a piece never crosses a part's end, so where a piece lives follows from the order alone. The
 * manifest is the object set's last write: an object set without one is incomplete.
 *
 * This is the store's own storage format, not a bus message (no subject carries it).
 */
import { z } from 'zod';
import { SealSummary } from '@vmsave/contracts';

/** Default bytes of one part (one object in the store). */
export const DEFAULT_PART_BYTES = 32 * 1024 * 1024;
/** The largest piece one checksum covers. */
export const PIECE_MAX_BYTES = 4 * 1024 * 1024;

const Int = z.number().int().min(0);
const Hex32 = z.string().regex(/^[0-9a-f]{8}$/, 'CRC-32: 8 lowercase hex digits');

export const ReplicaManifest = z.object({
  kind: z.literal('vmsave-replica'),
  version: z.literal(1),
  /** Written last: a manifest that exists says the object set is complete. */
  complete: z.literal(true),
  key: z.string().min(1),
  /** The image file's base name on the host that wrote it. */
  imageName: z.string().min(1),
  /** Logical size of the file. */
  size: Int,
  /** The source's allocated bytes (`st_blocks * 512`). */
  allocatedBytes: Int,
  /** Bytes of data (the sum of the extents): what travels. */
  dataBytes: Int,
  partBytes: z.number().int().positive(),
  /** Pieces of the data extents, in file order: [offset, length, CRC-32 hex]. */
  extents: z.array(z.tuple([Int, z.number().int().positive(), Hex32])),
  /** Parts in order: their byte counts. */
  parts: z.array(z.object({ bytes: Int })),
  /** The source file when uploaded (decimal strings: inode, mtime and ctime in ns). */
  fingerprint: z.object({ ino: z.string(), size: Int, mtimeNs: z.string(), ctimeNs: z.string() }),
  /** The image's header and descriptor bytes, base64: the restore gate can read them before the download. */
  header: z.string().min(1),
  format: z.enum(['legacy', 'sparse']),
  seal: SealSummary.optional(),
  /** False when the source's filesystem reports no holes (every byte travelled). */
  holes: z.boolean(),
  source: z.object({ host: z.string().optional(), jobId: z.string().optional(), imagePath: z.string().optional() }),
  createdAt: z.string(),
});
export type ReplicaManifest = z.infer<typeof ReplicaManifest>;

export interface Piece {
  offset: number;
  length: number;
  part: number;
  /** Where the piece starts inside its part. */
  partOffset: number;
}

export interface Layout {
  pieces: Piece[];
  /** Per part: its bytes and its pieces' index range [first, first + count). */
  parts: { bytes: number; first: number; count: number }[];
}

/** Cut `extents` ([start, end) in file order) into pieces and pack them into parts of `partBytes`. */
export function layoutOf(extents: readonly (readonly [number, number])[], partBytes: number): Layout {
  if (!Number.isInteger(partBytes) || partBytes <= 0) throw new RangeError(`partBytes: a positive integer (${partBytes})`);
  const pieces: Piece[] = [];
  const parts: Layout['parts'] = [];
  let fill = 0;
  const part = () => {
    if (parts.length === 0 || fill === partBytes) {
      parts.push({ bytes: 0, first: pieces.length, count: 0 });
      fill = 0;
    }
    return parts[parts.length - 1]!;
  };
  for (const [start, end] of extents) {
    let pos = start;
    while (pos < end) {
      const p = part();
      const length = Math.min(end - pos, PIECE_MAX_BYTES, partBytes - fill);
      pieces.push({ offset: pos, length, part: parts.length - 1, partOffset: fill });
      p.bytes += length;
      p.count++;
      fill += length;
      pos += length;
    }
  }
  return { pieces, parts };
}

/** The layout a manifest describes (its pieces' offsets and lengths, packed as at upload). */
export function layoutOfManifest(m: ReplicaManifest): Layout {
  const l = layoutOf(
    m.extents.map(([o, n]) => [o, o + n] as const),
    m.partBytes,
  );
  // Pieces were cut at upload: re-cutting them never splits one further (each is ≤ PIECE_MAX_BYTES and inside its part).
  if (l.pieces.length !== m.extents.length || l.parts.length !== m.parts.length || l.parts.some((p, i) => p.bytes !== m.parts[i]!.bytes))
    throw new RangeError(`manifest ${m.key}: its extents do not pack into its ${m.parts.length} part(s) of ${m.partBytes} bytes`);
  return l;
}

/** Problems of a manifest against itself (sizes, order, overlap), empty when consistent. */
export function manifestProblems(m: ReplicaManifest): string[] {
  const out: string[] = [];
  let end = 0;
  let data = 0;
  m.extents.forEach(([o, n], i) => {
    if (o < end) out.push(`extents[${i}]: offset ${o} overlaps or precedes the previous extent's end ${end}`);
    if (o + n > m.size) out.push(`extents[${i}]: ends at ${o + n}, beyond the size ${m.size}`);
    end = o + n;
    data += n;
  });
  if (data !== m.dataBytes) out.push(`dataBytes: ${m.dataBytes}, the extents hold ${data}`);
  const partsTotal = m.parts.reduce((a, p) => a + p.bytes, 0);
  if (partsTotal !== data) out.push(`parts: hold ${partsTotal} bytes, the extents ${data}`);
  return out;
}
