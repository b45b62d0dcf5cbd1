import { z } from 'zod';
import { HostName, JobId, SchemaVersion, Timestamp } from './common.ts';
import { DrainRequest, RestoreRequest, SaveRequest } from './commands.ts';
import { SaveFormat, VmDefinition, VmName } from './vm.ts';
import { newEventId } from './ids.ts';
import { SealSummary } from './seal.ts';

/* ---------- shared payload pieces ---------- */

/** A broken admission rule: which rule, which field, and a sentence a person can act on. */
export const Rejection = z.object({
  rule: z.string(),
  field: z.string().optional(),
  message: z.string(),
});
export type Rejection = z.infer<typeof Rejection>;

export const Scheduled = z.object({
  host: HostName,
  attempt: z.number().int().min(1),
  /** The per-VM lease's fencing token; the executor echoes it on every event of this attempt. */
  fencingToken: z.number().int().min(0),
  deadlineAt: Timestamp,
});

export const FailureStage = z.enum([
  'admission',
  'connect',
  'prepare',
  'pause',
  'image',
  'migrate',
  'finalize',
  'resume',
  'start-qemu',
  'restore',
  'verify',
  'lost',
  'deadline',
  'unknown',
]);
export type FailureStage = z.infer<typeof FailureStage>;

export const Failure = z.object({
  attempt: z.number().int().min(1),
  stage: FailureStage,
  /** A one-line reason; QEMU's own message verbatim where it gave one. */
  reason: z.string(),
  /** Stable error code, e.g. `ENOSPC`, `qemu-migration-failed`, `executor-lost`. */
  code: z.string(),
  retryable: z.boolean(),
  host: HostName.optional(),
  fencingToken: z.number().int().optional(),
});

export const VerificationCheck = z.object({
  name: z.string(),
  status: z.enum(['pass', 'warn', 'fail', 'skip']),
  detail: z.string(),
});
export type VerificationCheck = z.infer<typeof VerificationCheck>;

export const QemuMigrationStats = z
  .object({
    totalTimeMs: z.number().optional(),
    ramTotal: z.number().optional(),
    ramTransferred: z.number().optional(),
    ramNormalPages: z.number().optional(),
    ramDuplicatePages: z.number().optional(),
    mbps: z.number().optional(),
  })
  .loose();

/** A live checkpoint's record: QEMU's precopy passes and the guest's stop (SaveCompleted.live). */
export const LiveCheckpoint = z.object({
  /** Passes over RAM as sampled from QEMU (`dirty-sync-count`); bytes QEMU wrote in each. */
  passes: z.array(z.object({ pass: z.number().int().min(1), bytes: z.number().int().min(0), startMs: z.number().min(0) })),
  /** `converged`: QEMU's final pass fit its downtime limit; `passes`/`time`: the pass or time limit was hit and the executor stopped the guest (a stopped copy of the rest). */
  switchover: z.enum(['converged', 'passes', 'time']),
  /** The guest's stop, from QEMU's STOP event to the end of `cont` (absent when it stays stopped: `after` paused or quit). */
  downtimeMs: z.number().min(0).optional(),
  /** QEMU's own `downtime` (stop to the migration's completion). */
  qemuDowntimeMs: z.number().min(0).optional(),
});
export type LiveCheckpoint = z.infer<typeof LiveCheckpoint>;

/* ---------- event payloads ---------- */

export const SaveRequestedData = z.object({ request: SaveRequest });
export const SaveRejectedData = Rejection;
export const SaveScheduledData = Scheduled;
export const SaveStartedData = z.object({
  host: HostName,
  attempt: z.number().int().min(1),
  fencingToken: z.number().int().min(0),
  imagePath: z.string(),
  format: SaveFormat,
  channels: z.number().int().min(1),
  directIo: z.boolean(),
  wasRunning: z.boolean(),
  ramBytes: z.number().int().min(0),
});
export const SaveCompletedData = z.object({
  host: HostName,
  attempt: z.number().int().min(1),
  fencingToken: z.number().int().min(0),
  imagePath: z.string(),
  format: SaveFormat,
  /** Logical size of the image file. */
  bytes: z.number().int().min(0),
  /** Allocated 512-byte blocks (`st_blocks`). */
  blocks: z.number().int().min(0),
  durationMs: z.number().min(0),
  throughputBytesPerSec: z.number().min(0),
  /** How the VM was left: as the request's `after` asked, unless `afterError` says otherwise (`quit`: its QEMU is gone). */
  vmState: z.enum(['running', 'paused', 'quit']),
  /**
   * Why the VM could not be left as asked once the image was complete (e.g. its QEMU died before
   * it could be resumed). The image is good either way: the save succeeded.
   */
  afterError: z.string().optional(),
  qemu: QemuMigrationStats,
  /**
   * The content seal the executor wrote into the image before its magic flipped; the verifier
   * compares the image's own with it (check `seal.summary`). Absent from older executors.
   */
  seal: SealSummary.optional(),
  /** A live checkpoint: the passes over RAM and how long the guest was stopped. Absent for a paused copy. */
  live: LiveCheckpoint.optional(),
});
export const SaveFailedData = Failure.extend({
  /** True when the VM was running before the save and runs again; false if it was not resumed. */
  vmResumed: z.boolean(),
  imageKept: z.string().optional(),
});
export const SaveRetryingData = z.object({ attempt: z.number().int().min(2), delayMs: z.number().int().min(0), lastCode: z.string() });
export const CancelRequestedData = z.object({ reason: z.string(), requestId: z.string().optional() });
export const SaveCancelledData = z.object({ reason: z.string(), vmResumed: z.boolean().optional(), stage: z.string().optional() });
/**
 * The image file as the verifier found it, unchanged from before its checks to after them. A
 * restore gate that finds the same inode, size, mtime and ctime need not read the image again
 * (ctime cannot be set back without changing the clock). Integers as decimal strings (nanoseconds).
 */
export const ImageFingerprint = z.object({
  ino: z.string().regex(/^\d+$/, 'decimal digits'),
  size: z.number().int().min(0),
  mtimeNs: z.string().regex(/^\d+$/, 'decimal digits'),
  ctimeNs: z.string().regex(/^\d+$/, 'decimal digits'),
});
export type ImageFingerprint = z.infer<typeof ImageFingerprint>;

export const ImageVerifiedData = z.object({
  imagePath: z.string(),
  host: HostName.optional(),
  checks: z.array(VerificationCheck),
  fingerprint: ImageFingerprint.optional(),
  /**
   * How much of the sealed content was checked against its digests: `state` the device-state
   * region (every verification), `full` every RAM chunk too (the scrub). Absent: no content check.
   */
  content: z.enum(['state', 'full']).optional(),
  /** The image's seal as the verifier read it (absent: the image has none). */
  seal: SealSummary.optional(),
});
/**
 * A failed check. With `scrub: true` it comes from the verifier's periodic content scrub, after
 * the image was verified: the image has been damaged since (check `seal.ram` or `seal.state`), and
 * the job moves from `verified` to `rejected`.
 */
export const ImageRejectedData = ImageVerifiedData.extend({ scrub: z.boolean().optional() });
/**
 * A completed save got no verdict within the scheduler's bound (`VMSAVE_VERDICT_TIMEOUT_MS`).
 * Notice 1: a verification is asked again (the verifier reacts to it as to `SaveCompleted`);
 * notice 2: still none after another bound, raised for people. The job stays `completed`; a later
 * verdict still ends it.
 */
export const VerificationOverdueData = z.object({
  imagePath: z.string(),
  host: HostName,
  /** The attempt whose `SaveCompleted` waits for a verdict. */
  attempt: z.number().int().min(1),
  /** Since `SaveCompleted`. */
  waitedMs: z.number().int().min(0),
  /** 1: re-verification asked; 2: raised. */
  notice: z.union([z.literal(1), z.literal(2)]),
});

/** The retention rule that chose an image for deletion (`packages/jobs/src/retention.ts`). */
export const RetentionRule = z.enum(['keep-last', 'max-age']);
export type RetentionRule = z.infer<typeof RetentionRule>;
/**
 * The executor of the image's host deleted a save's image file, as its retention policy chose
 * (`rule`). The job keeps its status (the verdict stands) and records `imageDeleted`: the image is
 * no longer one to restore.
 */
export const ImageDeletedData = z.object({
  imagePath: z.string(),
  host: HostName,
  rule: RetentionRule,
  /** Logical size of the file deleted (0 when it was already gone). */
  bytes: z.number().int().min(0),
});

/**
 * An image file the log did not know (left by hand or by a crash) adopted by its host's executor
 * after reading its header and descriptor (a complete vmsave image): the first event of a new
 * save job (`a-…`) whose one attempt (1, fencing token 0) is then completed by `SaveCompleted`,
 * so the verifier verifies it as it does every save.
 */
export const ImageAdoptedData = z.object({
  host: HostName,
  imagePath: z.string(),
  /** The VM the image's descriptor names. */
  vm: VmName,
  format: SaveFormat,
  bytes: z.number().int().min(0),
  fingerprint: ImageFingerprint,
});

/**
 * A verified save's image copied into the bus's object store (`packages/replica`): only its data
 * extents travel, with a manifest written last. Emitted on the save's job.
 */
export const ImageReplicatedData = z.object({
  imagePath: z.string(),
  /** The host that uploaded it (the image's host). */
  host: HostName,
  /** The object store bucket and the object set's name (its manifest's key). */
  bucket: z.string().min(1),
  object: z.string().min(1),
  /** Bytes uploaded (the data extents; holes do not travel). */
  bytesMoved: z.number().int().min(0),
  /** The source file's allocated bytes (`st_blocks * 512`). */
  allocatedBytes: z.number().int().min(0),
  /** Number of data extents in the manifest. */
  extents: z.number().int().min(0),
  seconds: z.number().min(0),
});
/** An upload that did not finish (the object set left without its manifest is removed). Emitted on the save's job; the job keeps its verdict. */
export const ImageReplicationFailedData = z.object({
  imagePath: z.string(),
  host: HostName,
  bucket: z.string().optional(),
  reason: z.string(),
  /** Stable code, e.g. `replica-upload-failed`, `replica-interrupted`, `ENOSPC`. */
  code: z.string(),
});
/** A replicated image downloaded into a host's image directory (extents and seal checked) before a restore. Emitted on the restore's job. */
export const ImageFetchedData = z.object({
  imagePath: z.string(),
  /** The host that downloaded it. */
  host: HostName,
  bucket: z.string().min(1),
  object: z.string().min(1),
  /** The save job whose image this is. */
  sourceJobId: JobId.optional(),
  bytesMoved: z.number().int().min(0),
  /** The rebuilt file's allocated bytes. */
  allocatedBytes: z.number().int().min(0),
  extents: z.number().int().min(0),
  seconds: z.number().min(0),
});
/** A download that did not finish or whose content did not match its manifest (no file is left under the image's name). Emitted on the restore's job. */
export const ImageFetchFailedData = z.object({
  imagePath: z.string(),
  host: HostName,
  bucket: z.string().optional(),
  object: z.string().optional(),
  reason: z.string(),
  /** Stable code, e.g. `replica-missing`, `replica-incomplete`, `replica-checksum`, `replica-seal`. */
  code: z.string(),
});

export const RestoreRequestedData = z.object({ request: RestoreRequest, sourceJobId: JobId.optional(), vm: z.string().optional() });
export const RestoreRejectedData = Rejection;
export const RestoreScheduledData = Scheduled;
export const RestoreStartedData = z.object({
  host: HostName,
  attempt: z.number().int().min(1),
  fencingToken: z.number().int().min(0),
  imagePath: z.string(),
  format: SaveFormat,
  vm: VmDefinition,
});
export const RestoreCompletedData = z.object({
  host: HostName,
  attempt: z.number().int().min(1),
  fencingToken: z.number().int().min(0),
  imagePath: z.string(),
  vm: z.string(),
  durationMs: z.number().min(0),
  vmState: z.enum(['running', 'paused']),
  qmpSocket: z.string().optional(),
  /**
   * The check before QEMU started: `full` ran every verifier check on the image; `quick` read
   * its header and descriptor only, because the file is unchanged since the verifier passed it.
   */
  gate: z.enum(['full', 'quick']).optional(),
  /** `warm`: a QEMU of the executor's warm pool (already waiting with `-incoming defer`) took the image; `cold`: one was started for it. */
  start: z.enum(['warm', 'cold']).optional(),
  /** Where the executor's milliseconds went (gate, prepare, launch, qmp, load, cont), from its own clock. */
  timings: z
    .object({
      gateMs: z.number().min(0).optional(),
      prepareMs: z.number().min(0).optional(),
      launchMs: z.number().min(0).optional(),
      qmpMs: z.number().min(0).optional(),
      loadMs: z.number().min(0).optional(),
      contMs: z.number().min(0).optional(),
      /** The seal's content check, part of `gateMs`. */
      contentMs: z.number().min(0).optional(),
      /** Wall time from the QEMU's exec to its QMP session ready (a cold start beside the gate overlaps it). */
      launchWallMs: z.number().min(0).optional(),
      /** The executor's intake: the job's history read and checks, before the restore began. */
      intakeMs: z.number().min(0).optional(),
      /** The local job journal's write. */
      journalMs: z.number().min(0).optional(),
      /** After `cont`: the QMP session closed and the log re-read before RestoreCompleted. */
      finishMs: z.number().min(0).optional(),
      /** When the executor received the work item (epoch ms). */
      receivedAt: z.number().min(0).optional(),
    })
    .loose()
    .optional(),
});
export const RestoreFailedData = Failure.extend({ qemuStderr: z.string().optional() });
export const RestoreRetryingData = SaveRetryingData;
export const RestoreCancelledData = SaveCancelledData;

/* ---------- drains (job id `d-…`, `vmsave.cmd.drain`) ---------- */

/**
 * Where one VM of a drain is: `queued` (its save asked, waiting for a slot on its host), `saving`, `saved` (image
 * verified; the VM quit on its host), `restoring`, `restored` (running on the target), or final
 * `failed` / `cancelled`. Without a target, `saved` is final too.
 */
export const DrainVmPhase = z.enum(['queued', 'saving', 'saved', 'restoring', 'restored', 'failed', 'cancelled']);
export type DrainVmPhase = z.infer<typeof DrainVmPhase>;
export const DrainVmUpdatedData = z.object({
  vm: VmName,
  phase: DrainVmPhase,
  saveJobId: JobId.optional(),
  restoreJobId: JobId.optional(),
  /** The saved image (on the drained host). */
  imagePath: z.string().optional(),
  /** Where the VM runs again (`restored`). */
  restoredOn: HostName.optional(),
  /** Why it failed or was cancelled: the child job's reason, and where that leaves the VM (a failed save: left running on its host). */
  error: z.string().optional(),
});
export type DrainVmUpdatedData = z.infer<typeof DrainVmUpdatedData>;
/** One VM's end in a drain: its final phase and its child jobs. */
export const DrainVmOutcome = DrainVmUpdatedData;
export type DrainVmOutcome = z.infer<typeof DrainVmOutcome>;
export const DrainRequestedData = z.object({
  request: DrainRequest,
  /** The host's VMs when the drain started (its latest announcement). */
  vms: z.array(VmName),
  /**
   * With `to: any`: the other hosts that had announced themselves lately when the drain started;
   * the restores go to them in turn (a drain empties its host, so `any` never means the host itself).
   */
  targets: z.array(HostName).optional(),
});
/** `vmsave.cmd.cancel` named the drain: its child jobs are cancelled, no restore is asked from here on. */
export const DrainCancelRequestedData = CancelRequestedData;
export const DrainCompletedData = z.object({ outcome: z.array(DrainVmOutcome) });
export const DrainFailedData = z.object({ reason: z.string(), outcome: z.array(DrainVmOutcome) });
export const DrainCancelledData = z.object({ reason: z.string(), outcome: z.array(DrainVmOutcome) });

/* ---------- the envelope ---------- */

const envelope = <T extends string, D extends z.ZodType>(type: T, data: D) =>
  z.object({
    eventId: z.string().min(1).max(128),
    type: z.literal(type),
    schemaVersion: SchemaVersion,
    jobId: JobId,
    at: Timestamp,
    /** Service (and host) that emitted it, e.g. `executor@host-a`. */
    source: z.string().max(256),
    data,
  });

export const SaveRequested = envelope('SaveRequested', SaveRequestedData);
export type SaveRequested = z.infer<typeof SaveRequested>;
export const SaveRejected = envelope('SaveRejected', SaveRejectedData);
export type SaveRejected = z.infer<typeof SaveRejected>;
export const SaveScheduled = envelope('SaveScheduled', SaveScheduledData);
export type SaveScheduled = z.infer<typeof SaveScheduled>;
export const SaveStarted = envelope('SaveStarted', SaveStartedData);
export type SaveStarted = z.infer<typeof SaveStarted>;
export const SaveCompleted = envelope('SaveCompleted', SaveCompletedData);
export type SaveCompleted = z.infer<typeof SaveCompleted>;
export const SaveFailed = envelope('SaveFailed', SaveFailedData);
export type SaveFailed = z.infer<typeof SaveFailed>;
export const SaveRetrying = envelope('SaveRetrying', SaveRetryingData);
export type SaveRetrying = z.infer<typeof SaveRetrying>;
export const SaveCancelRequested = envelope('SaveCancelRequested', CancelRequestedData);
export type SaveCancelRequested = z.infer<typeof SaveCancelRequested>;
export const SaveCancelled = envelope('SaveCancelled', SaveCancelledData);
export type SaveCancelled = z.infer<typeof SaveCancelled>;
export const ImageVerified = envelope('ImageVerified', ImageVerifiedData);
export type ImageVerified = z.infer<typeof ImageVerified>;
export const ImageRejected = envelope('ImageRejected', ImageRejectedData);
export type ImageRejected = z.infer<typeof ImageRejected>;
export const VerificationOverdue = envelope('VerificationOverdue', VerificationOverdueData);
export type VerificationOverdue = z.infer<typeof VerificationOverdue>;
export const ImageDeleted = envelope('ImageDeleted', ImageDeletedData);
export type ImageDeleted = z.infer<typeof ImageDeleted>;
export const ImageAdopted = envelope('ImageAdopted', ImageAdoptedData);
export type ImageAdopted = z.infer<typeof ImageAdopted>;

export const ImageReplicated = envelope('ImageReplicated', ImageReplicatedData);
export type ImageReplicated = z.infer<typeof ImageReplicated>;
export const ImageReplicationFailed = envelope('ImageReplicationFailed', ImageReplicationFailedData);
export type ImageReplicationFailed = z.infer<typeof ImageReplicationFailed>;
export const ImageFetched = envelope('ImageFetched', ImageFetchedData);
export type ImageFetched = z.infer<typeof ImageFetched>;
export const ImageFetchFailed = envelope('ImageFetchFailed', ImageFetchFailedData);
export type ImageFetchFailed = z.infer<typeof ImageFetchFailed>;

export const RestoreRequested = envelope('RestoreRequested', RestoreRequestedData);
export type RestoreRequested = z.infer<typeof RestoreRequested>;
export const RestoreRejected = envelope('RestoreRejected', RestoreRejectedData);
export type RestoreRejected = z.infer<typeof RestoreRejected>;
export const RestoreScheduled = envelope('RestoreScheduled', RestoreScheduledData);
export type RestoreScheduled = z.infer<typeof RestoreScheduled>;
export const RestoreStarted = envelope('RestoreStarted', RestoreStartedData);
export type RestoreStarted = z.infer<typeof RestoreStarted>;
export const RestoreCompleted = envelope('RestoreCompleted', RestoreCompletedData);
export type RestoreCompleted = z.infer<typeof RestoreCompleted>;
export const RestoreFailed = envelope('RestoreFailed', RestoreFailedData);
export type RestoreFailed = z.infer<typeof RestoreFailed>;
export const RestoreRetrying = envelope('RestoreRetrying', RestoreRetryingData);
export type RestoreRetrying = z.infer<typeof RestoreRetrying>;
export const RestoreCancelRequested = envelope('RestoreCancelRequested', CancelRequestedData);
export type RestoreCancelRequested = z.infer<typeof RestoreCancelRequested>;
export const RestoreCancelled = envelope('RestoreCancelled', RestoreCancelledData);
export type RestoreCancelled = z.infer<typeof RestoreCancelled>;

export const DrainRequested = envelope('DrainRequested', DrainRequestedData);
export type DrainRequested = z.infer<typeof DrainRequested>;
export const DrainVmUpdated = envelope('DrainVmUpdated', DrainVmUpdatedData);
export type DrainVmUpdated = z.infer<typeof DrainVmUpdated>;
export const DrainCancelRequested = envelope('DrainCancelRequested', DrainCancelRequestedData);
export type DrainCancelRequested = z.infer<typeof DrainCancelRequested>;
export const DrainCompleted = envelope('DrainCompleted', DrainCompletedData);
export type DrainCompleted = z.infer<typeof DrainCompleted>;
export const DrainFailed = envelope('DrainFailed', DrainFailedData);
export type DrainFailed = z.infer<typeof DrainFailed>;
export const DrainCancelled = envelope('DrainCancelled', DrainCancelledData);
export type DrainCancelled = z.infer<typeof DrainCancelled>;

/** Any event in the log (`vmsave.evt.<jobId>.<type>`). */
export const JobEvent = z.discriminatedUnion('type', [
  SaveRequested,
  SaveRejected,
  SaveScheduled,
  SaveStarted,
  SaveCompleted,
  SaveFailed,
  SaveRetrying,
  SaveCancelRequested,
  SaveCancelled,
  ImageVerified,
  ImageRejected,
  VerificationOverdue,
  ImageDeleted,
  ImageAdopted,
  ImageReplicated,
  ImageReplicationFailed,
  ImageFetched,
  ImageFetchFailed,
  RestoreRequested,
  RestoreRejected,
  RestoreScheduled,
  RestoreStarted,
  RestoreCompleted,
  RestoreFailed,
  RestoreRetrying,
  RestoreCancelRequested,
  RestoreCancelled,
  DrainRequested,
  DrainVmUpdated,
  DrainCancelRequested,
  DrainCompleted,
  DrainFailed,
  DrainCancelled,
]);
export type JobEvent = z.infer<typeof JobEvent>;
export type JobEventType = JobEvent['type'];
export type EventOf<T extends JobEventType> = Extract<JobEvent, { type: T }>;

export const jobEventTypes = JobEvent.options.map((o) => o.shape.type.value) as JobEventType[];

/** Build an event envelope with a fresh id and the current time (both overridable). */
export function makeEvent<T extends JobEventType>(type: T, jobId: string, data: EventOf<T>['data'], meta: { source: string; eventId?: string; at?: Date }): EventOf<T> {
  return {
    eventId: meta.eventId ?? newEventId(),
    type,
    schemaVersion: 1,
    jobId,
    at: (meta.at ?? new Date()).toISOString(),
    source: meta.source,
    data,
  } as EventOf<T>;
}
