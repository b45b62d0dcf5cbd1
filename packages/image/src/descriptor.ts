/** The JSON descriptor stored after a vmsave image header. */
import { z } from 'zod';
import { QemuCapabilities, SaveFormat, VmDefinition } from '@vmsave/contracts';
import { DescriptorError } from './errors.ts';

/** A migration parameter value as QMP reports it. */
const ParameterValue = z.union([z.string(), z.number(), z.boolean(), z.null()]);

const Offset = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const ByteRanges = z.array(z.tuple([Offset, Offset])).max(1_000_000);

/**
 * The content seal (docs/image-format.md, "Seal"): checksums of the QEMU stream, written by
 * `sealImage` before the magic flips. Ranges are absolute file offsets, [start, end).
 */
export const ImageSeal = z.object({
  version: z.literal(1),
  /** Checksum of every chunk and of the state region (`crc32`: zlib's CRC-32, IEEE polynomial). */
  algorithm: z.string().min(1).max(32),
  /** Size of a RAM chunk (the last chunk of a range may be shorter). */
  chunkBytes: z
    .number()
    .int()
    .min(4096)
    .max(1024 ** 3),
  /** Bytes of the QEMU stream when sealed: the file is streamOffset + streamLength bytes. */
  streamLength: Offset,
  /** Device state: every byte of these ranges, in order, through one checksum (lowercase hex). */
  state: z.object({ ranges: ByteRanges, digest: z.string().regex(/^[0-9a-f]{1,128}$/, 'state digest: lowercase hex') }),
  /**
   * RAM: the ranges cut into chunks of `chunkBytes`; `digests` is base64 of one digest per chunk,
   * packed (a CRC-32 as 4 big-endian bytes); `digest` is the digest of those packed bytes (hex).
   */
  ram: z.object({
    ranges: ByteRanges,
    digests: z
      .string()
      .max(8 * 1024 * 1024)
      .regex(/^[A-Za-z0-9+/]*={0,2}$/, 'ram digests: base64'),
    digest: z.string().regex(/^[0-9a-f]{1,128}$/, 'ram digest: lowercase hex'),
  }),
});
export type ImageSeal = z.infer<typeof ImageSeal>;

/**
 * What a restore needs and what an operator wants to know about a saved image.
 * `format` repeats the header's save format for humans reading the JSON; the header is authoritative.
 */
export const ImageDescriptor = z.object({
  /** Descriptor schema version (independent of the header's format version). */
  descriptorVersion: z.literal(1),
  vm: VmDefinition,
  format: SaveFormat,
  qemu: z.object({
    /** Version of the QEMU that wrote the stream, as `query-version` reports it (`10.0.2`). */
    version: z.string().min(1).max(128),
    /** Migration capabilities set for the save (`mapped-ram`, `multifd`, `events`, …). */
    capabilities: z.record(z.string().max(64), z.boolean()),
    /** Migration parameters set for the save (`multifd-channels`, `direct-io`, `max-bandwidth`, …). */
    parameters: z.record(z.string().max(64), ParameterValue),
    /** What the saving host's QEMU could do, when the executor probed it. */
    hostCapabilities: QemuCapabilities.optional(),
  }),
  host: z.string().min(1).max(255),
  jobId: z.string().min(1).max(128),
  /** When the image was created (ISO 8601). */
  createdAt: z.iso.datetime({ offset: true }),
  /** When QEMU finished writing, set by `finalizeImage` callers through `updateDescriptor`. */
  completedAt: z.iso.datetime({ offset: true }).optional(),
  /** Free-form operator labels. */
  labels: z.record(z.string().max(128), z.string().max(1024)).optional(),
  /** The content seal, once `sealImage` ran (images saved before it, and failed saves, have none). */
  seal: ImageSeal.optional(),
});
export type ImageDescriptor = z.infer<typeof ImageDescriptor>;
/** Input accepted by writers (defaults not yet applied). */
export type ImageDescriptorInput = z.input<typeof ImageDescriptor>;

/** Validate and serialize a descriptor to UTF-8 JSON bytes. Throws DescriptorError. */
export function encodeDescriptor(input: ImageDescriptorInput): Buffer {
  const parsed = ImageDescriptor.safeParse(input);
  if (!parsed.success) throw new DescriptorError(`invalid descriptor: ${z.prettifyError(parsed.error)}`, { cause: parsed.error });
  return Buffer.from(JSON.stringify(parsed.data), 'utf8');
}

/** Parse descriptor bytes. Throws DescriptorError naming what is wrong. */
export function decodeDescriptor(bytes: Uint8Array): ImageDescriptor {
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new DescriptorError(`descriptor is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  const parsed = ImageDescriptor.safeParse(json);
  if (!parsed.success) throw new DescriptorError(`descriptor does not match its schema: ${z.prettifyError(parsed.error)}`, { cause: parsed.error });
  return parsed.data;
}
