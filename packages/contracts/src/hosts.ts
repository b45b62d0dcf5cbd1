import { z } from 'zod';
import { HostName, JobId, SchemaVersion, Timestamp } from './common.ts';
import { QemuCapabilities, VmName } from './vm.ts';

export const VmSummary = z.object({
  name: VmName,
  uuid: z.string(),
  machine: z.string(),
  memoryMiB: z.number().int(),
  vcpus: z.number().int(),
  /** QEMU run state (`running`, `paused`, `postmigrate`, …), or `stopped` when no QEMU runs for it. */
  status: z.string(),
  qmpSocket: z.string().optional(),
});
export type VmSummary = z.infer<typeof VmSummary>;

/** `vmsave.host.<host>`: an executor's announcement, re-sent periodically and when something changes. */
export const HostAnnouncement = z.object({
  schemaVersion: SchemaVersion,
  host: HostName,
  executorId: z.string(),
  at: Timestamp,
  startedAt: Timestamp,
  qemu: QemuCapabilities,
  imageDir: z.string(),
  /** True when the image directory is shared storage that every host can read. */
  sharedImageDir: z.boolean().default(false),
  freeBytes: z.number().int().min(0),
  /** The image directory's quota (VMSAVE_IMAGE_QUOTA), bytes allocated; absent: none. A save that would pass it is refused (rule `quota`). */
  imageQuotaBytes: z.number().int().min(0).optional(),
  /** Bytes allocated by the files in the image directory (with a quota). */
  imageUsedBytes: z.number().int().min(0).optional(),
  /** Measured or assumed save throughput, bytes/s (for deadlines). */
  throughputBytesPerSec: z.number().min(0).optional(),
  maxConcurrentJobs: z.number().int().min(1).optional(),
  vms: z.array(VmSummary),
});
export type HostAnnouncement = z.infer<typeof HostAnnouncement>;

/** `vmsave.hb.<host>`: sent every few seconds while an executor lives, with its in-flight jobs. */
export const Heartbeat = z.object({
  schemaVersion: SchemaVersion,
  host: HostName,
  executorId: z.string(),
  at: Timestamp,
  jobs: z.array(z.object({ jobId: JobId, attempt: z.number().int(), stage: z.string(), fencingToken: z.number().int() })),
});
export type Heartbeat = z.infer<typeof Heartbeat>;

/** `vmsave.progress.<jobId>` (core NATS, not stored). */
export const ProgressSample = z.object({
  jobId: JobId,
  at: Timestamp,
  host: HostName,
  stage: z.string(),
  status: z.string(),
  totalBytes: z.number().min(0),
  transferredBytes: z.number().min(0),
  remainingBytes: z.number().min(0),
  bytesPerSec: z.number().min(0),
  etaMs: z.number().min(0).optional(),
});
export type ProgressSample = z.infer<typeof ProgressSample>;

/** `vmsave.ctl.<host>` request: ask an executor to cancel a running job. */
export const CancelControl = z.object({
  action: z.literal('cancel'),
  jobId: JobId,
  reason: z.string(),
});
/** A retention policy: keep the newest `keepLast` verified images of each VM, and images younger than `keepYoungerThanMs`. */
export const RetentionPolicySpec = z
  .object({
    keepLast: z.number().int().min(1).max(100_000).optional(),
    keepYoungerThanMs: z.number().int().min(0).optional(),
  })
  .refine((p) => p.keepLast !== undefined || p.keepYoungerThanMs !== undefined, { message: 'policy: give keepLast, keepYoungerThanMs or both' });
/** `vmsave.ctl.<host>` request: apply a retention policy to this host's images (`dryRun`: only answer the plan). */
export const PruneControl = z.object({
  action: z.literal('prune'),
  dryRun: z.boolean().default(false),
  policy: RetentionPolicySpec,
});
/**
 * `vmsave.ctl.<host>` request: delete a file in this host's image directory that the log does
 * not know (left by hand or by a crash). Refused for a file the log knows (a save's image or kept
 * partial image not deleted), one a queued or running job needs, and anything outside the image
 * directory or not a regular file. `dryRun`: only answer whether it would be removed.
 */
export const RemoveControl = z.object({
  action: z.literal('remove'),
  imagePath: z
    .string()
    .min(1)
    .max(4096)
    .refine((p) => !/[\0\n\r]/.test(p), { message: 'imagePath: no NUL or line breaks' }),
  dryRun: z.boolean().default(false),
});
/**
 * `vmsave.ctl.<host>` request: adopt a file of this host's image directory that the log does not
 * know, after checking it is a complete vmsave image (`ImageAdopted` and `SaveCompleted` on a new
 * save job, which the verifier then verifies). Adopting it again answers the same job.
 */
export const AdoptControl = z.object({
  action: z.literal('adopt'),
  imagePath: RemoveControl.shape.imagePath,
});
export const ControlRequest = z.discriminatedUnion('action', [CancelControl, PruneControl, RemoveControl, AdoptControl]);
export type ControlRequest = z.infer<typeof ControlRequest>;
/** One image in a prune's answer: deleted (or, on a dry run, to delete) with its rule, or kept with why. */
export const PrunedImage = z.object({
  jobId: JobId,
  vm: z.string(),
  imagePath: z.string(),
  status: z.string(),
  bytes: z.number().int().min(0).optional(),
  action: z.enum(['delete', 'keep']),
  rule: z.string().optional(),
  reason: z.string(),
});
export const ControlReply = z.object({
  ok: z.boolean(),
  message: z.string(),
  /** A prune's plan for this host (what was deleted, or would be on a dry run, and what is kept). */
  plan: z.array(PrunedImage).optional(),
  /** A remove's file (its real path inside the image directory) and its size. */
  removed: z.object({ imagePath: z.string(), bytes: z.number().int().min(0), dryRun: z.boolean() }).optional(),
  /** Why a remove was refused (`image-known`, `image-needed`, `image-path`, `not-a-file`, `not-found`), or an adopt (also `not-an-image`, `image-incomplete`). */
  rule: z.string().optional(),
  /** An adopt's new save job and the VM its image's descriptor names. */
  adopted: z.object({ jobId: JobId, imagePath: z.string(), vm: z.string(), bytes: z.number().int().min(0), duplicate: z.boolean() }).optional(),
});
export type ControlReply = z.infer<typeof ControlReply>;

/** `vmsave.dlq.<service>`: a message a consumer refused, with why. */
export const DeadLetter = z.object({
  service: z.string(),
  subject: z.string(),
  reason: z.string(),
  /** The raw payload, as UTF-8 when it decodes cleanly, otherwise base64; a prefix of it when `payloadTruncated`. */
  payload: z.string(),
  payloadEncoding: z.enum(['utf8', 'base64']),
  /** Set when `payload` holds only a prefix, so the letter stays under the server's max payload. */
  payloadTruncated: z.boolean().optional(),
  /** Size in bytes of the whole original payload. */
  payloadSize: z.number().int().nonnegative().optional(),
  /** sha256 (hex) of the whole original payload. */
  payloadSha256: z
    .string()
    .regex(/^[0-9a-f]{64}$/, 'payloadSha256: 64 lowercase hex digits')
    .optional(),
  streamSeq: z.number().int().optional(),
  at: Timestamp,
});
export type DeadLetter = z.infer<typeof DeadLetter>;
