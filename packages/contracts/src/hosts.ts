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
export const ControlRequest = z.object({
  action: z.literal('cancel'),
  jobId: JobId,
  reason: z.string(),
});
export type ControlRequest = z.infer<typeof ControlRequest>;
export const ControlReply = z.object({ ok: z.boolean(), message: z.string() });
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
