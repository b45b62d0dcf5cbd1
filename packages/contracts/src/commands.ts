import { z } from 'zod';
import { HostName, ImagePath, JobId, Priority, RequestId, SchemaVersion } from './common.ts';
import { VmName } from './vm.ts';

/** `vmsave.cmd.save`: save a VM's memory state to an image. */
export const SaveRequest = z.object({
  schemaVersion: SchemaVersion,
  requestId: RequestId,
  vm: VmName,
  /** `auto` picks sparse when the host's QEMU supports mapped-ram, legacy otherwise. */
  format: z.enum(['legacy', 'sparse', 'auto']).default('auto'),
  /** multifd channels (sparse only). */
  channels: z.number().int().min(1, 'channels: at least 1').max(64, 'channels: at most 64').default(1),
  /** Bypass the page cache for page I/O (sparse only). */
  directIo: z.boolean().default(false),
  /** What to leave the VM as after a successful save. A failed save always resumes a VM that was running. */
  after: z.enum(['running', 'paused', 'quit']).default('running'),
  /**
   * Live checkpoint: copy RAM while the guest runs and stop it only for the final pass. Absent:
   * live for a sparse save with `after: running`, a paused copy otherwise (a live legacy image
   * grows with every pass: only on an explicit `true`). `false`: always a paused copy.
   */
  live: z.boolean().optional(),
  /** Image file name, relative to the host's image directory (default: `<vm>-<jobId>.vmsave`). */
  image: ImagePath.optional(),
  /**
   * After the image is verified, copy it into the bus's own object store (`bus`: a JetStream
   * object store bucket, so it can be restored on any host), or not (`none`). Absent: the host's
   * default (`VMSAVE_REPLICATE`, itself `none` by default).
   */
  replicate: z.enum(['bus', 'none'], { error: 'replicate: bus or none' }).optional(),
  priority: Priority.default('normal'),
  /** The drain (`vmsave.cmd.drain`, job id `d-…`) that asked for this save; absent for a save asked directly. */
  drainId: JobId.optional(),
  /** Give up after this long (default: from RAM size and the host's measured throughput). */
  deadlineMs: z
    .number()
    .int()
    .min(1000)
    .max(24 * 3600 * 1000)
    .optional(),
  requestedBy: z.string().max(256).optional(),
});
export type SaveRequest = z.infer<typeof SaveRequest>;
export type SaveRequestInput = z.input<typeof SaveRequest>;

/** `vmsave.cmd.restore`: start a VM from a saved image. */
export const RestoreRequest = z.object({
  schemaVersion: SchemaVersion,
  requestId: RequestId,
  /** Image path on the host that holds it (relative to its image directory, or absolute inside it). */
  image: ImagePath,
  /** Host holding the image; default: the host that wrote it, known from the event log. */
  host: HostName.optional(),
  /** State to leave the VM in: default as it was when saved. */
  after: z.enum(['running', 'paused', 'as-saved']).default('as-saved'),
  /**
   * The content check before QEMU starts, on a sealed image: `state` checks the device-state
   * digest (always done), `full` also every RAM chunk (reads all the image's data; refused on an
   * image with no seal).
   */
  verify: z.enum(['state', 'full'], { error: 'verify: state or full' }).default('state'),
  priority: Priority.default('normal'),
  /** The drain (`vmsave.cmd.drain`, job id `d-…`) that asked for this restore; absent for a restore asked directly. */
  drainId: JobId.optional(),
  deadlineMs: z
    .number()
    .int()
    .min(1000)
    .max(24 * 3600 * 1000)
    .optional(),
  requestedBy: z.string().max(256).optional(),
});
export type RestoreRequest = z.infer<typeof RestoreRequest>;
export type RestoreRequestInput = z.input<typeof RestoreRequest>;

/**
 * `vmsave.cmd.drain`: save every VM of `host` (as its latest announcement lists them), within the
 * host limits and priorities (each save is an ordinary `SaveRequest` with `drainId`), and with
 * `to` restore each one on the target host (`any`: a host the scheduler places it on) once its
 * image is verified. A VM whose save fails is left running on `host` and named in the outcome.
 * Its job id is `d-…` (`drainIdFor`); `vmsave.cmd.cancel` with that id cancels the whole drain.
 */
export const DrainRequest = z.object({
  schemaVersion: SchemaVersion,
  requestId: RequestId,
  /** The host to empty. */
  host: HostName,
  /** Where to restore each saved VM: a host name, or `any`; absent: only save. */
  to: z.union([z.literal('any'), HostName]).optional(),
  /** What happens to each VM on `host` after its save: it quits (its memory is in the image). */
  after: z.enum(['quit'], { error: 'after: quit (a drain empties its host)' }).default('quit'),
  format: z.enum(['legacy', 'sparse', 'auto']).default('auto'),
  priority: Priority.default('normal'),
  /** Passed on to every save of the drain (`SaveRequest.replicate`). */
  replicate: SaveRequest.shape.replicate,
  requestedBy: z.string().max(256).optional(),
});
export type DrainRequest = z.infer<typeof DrainRequest>;
export type DrainRequestInput = z.input<typeof DrainRequest>;

/** `vmsave.cmd.cancel`: cancel a queued or running job. */
export const CancelRequest = z.object({
  schemaVersion: SchemaVersion,
  requestId: RequestId,
  jobId: JobId,
  reason: z.string().max(1024).default('cancelled by operator'),
});
export type CancelRequest = z.infer<typeof CancelRequest>;
export type CancelRequestInput = z.input<typeof CancelRequest>;

/** The answer to a publisher that set a reply subject on a command. */
export const AdmissionReply = z.discriminatedUnion('outcome', [
  z.object({ outcome: z.literal('accepted'), requestId: RequestId, jobId: JobId, duplicate: z.boolean() }),
  z.object({
    outcome: z.literal('rejected'),
    requestId: z.string().optional(),
    jobId: JobId.optional(),
    rule: z.string(),
    field: z.string().optional(),
    message: z.string(),
  }),
]);
export type AdmissionReply = z.infer<typeof AdmissionReply>;
