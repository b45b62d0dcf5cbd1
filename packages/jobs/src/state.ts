import type { DrainRequest, DrainVmUpdatedData, JobEvent, RestoreRequest, SaveRequest, VerificationCheck } from '@vmsave/contracts';

export type JobStatus =
  | 'requested' // admitted, waiting for a host (also after a retry is decided)
  | 'scheduled' // handed to an executor
  | 'running'
  | 'completed' // save: image written, waiting for the verifier; restore: terminal
  | 'verified'
  | 'rejected' // admission refused, or the image failed verification
  | 'failed'
  | 'cancelled';

export const TERMINAL: ReadonlySet<JobStatus> = new Set(['verified', 'rejected', 'failed', 'cancelled']);

export interface JobState {
  /** `drain`: a host drain's row in a read model (`evolveView`, drain.ts); the scheduler's own fold never makes one. */
  kind: 'save' | 'restore' | 'drain' | undefined;
  jobId: string | undefined;
  status: JobStatus | 'none';
  saveRequest?: SaveRequest;
  restoreRequest?: RestoreRequest;
  vm?: string;
  host?: string;
  attempt: number;
  fencingToken?: number;
  deadlineAt?: string;
  imagePath?: string;
  format?: 'legacy' | 'sparse';
  wasRunning?: boolean;
  cancelRequested?: boolean;
  notBefore?: string;
  lastFailure?: { stage: string; code: string; reason: string; retryable: boolean; vmResumed?: boolean };
  rejection?: { rule: string; field?: string; message: string };
  checks?: VerificationCheck[];
  /** A completed save whose verdict is overdue (`VerificationOverdue`): still `completed`, cleared by the verdict. */
  verificationOverdue?: { notice: 1 | 2; waitedMs: number; at: string };
  result?: { bytes?: number; blocks?: number; durationMs: number; throughputBytesPerSec?: number };
  /** A failed save whose partial image was kept (`SaveFailed.imageKept`). */
  imageKept?: string;
  /** The save's image file was deleted by its host's retention (`ImageDeleted`): no longer one to restore. */
  imageDeleted?: { at: string; rule: string; bytes: number; host: string };
  /** A save job made for an image file the log did not know (`ImageAdopted`), not by a request. */
  adopted?: { at: string; fingerprint: { ino: string; size: number; mtimeNs: string; ctimeNs: string } };
  /** A save's image copied into the bus's object store (`ImageReplicated`): restorable on any host. */
  replicated?: { bucket: string; object: string; host: string; bytesMoved: number; at: string };
  /** The last upload that failed (`ImageReplicationFailed`), cleared by a later `ImageReplicated`. */
  replicationFailed?: { code: string; reason: string; at: string };
  /** A restore whose image was downloaded first (`ImageFetched`), or whose download failed (`ImageFetchFailed`). */
  fetched?: { bucket: string; object: string; host: string; bytesMoved: number; at: string };
  fetchFailed?: { code: string; reason: string; at: string };
  /** A drain's row (`kind: 'drain'`): its target, its VMs and their child jobs (`drainRow` in drain.ts). */
  drain?: { request?: DrainRequest; to?: string; vmCount: number; vms: DrainVmUpdatedData[]; cancelRequested?: { reason: string; at: string }; reason?: string };
  requestedAt?: string;
  updatedAt?: string;
  /** Number of events folded into this state. */
  version: number;
}

export const initialState = (): JobState => ({ kind: undefined, jobId: undefined, status: 'none', attempt: 0, version: 0 });

export const isTerminal = (s: JobState): boolean => s.status !== 'none' && (TERMINAL.has(s.status) || ((s.kind === 'restore' || s.kind === 'drain') && s.status === 'completed'));

/**
 * Over for good: terminal, and not a failure the scheduler may still retry (a retryable failure
 * is followed by `…Retrying`, or repeated as not retryable when the scheduler gives up). What a
 * client waits for.
 */
export const isFinal = (s: JobState): boolean => isTerminal(s) && !(s.status === 'failed' && s.lastFailure?.retryable === true);

const givesUp = (s: JobState, e: JobEvent): boolean =>
  (e.type === 'SaveFailed' || e.type === 'RestoreFailed') && e.data.attempt === s.attempt && s.lastFailure?.retryable === true && !e.data.retryable;

/** The content scrub found a verified image damaged since: the one event that reopens a final state. */
const scrubDamage = (s: JobState, e: JobEvent): boolean => s.kind === 'save' && s.status === 'verified' && e.type === 'ImageRejected' && e.data.scrub === true;

/** A final save's image deleted by retention: recorded on the final state, which keeps its status. */
const imageDeletion = (s: JobState, e: JobEvent): boolean => s.kind === 'save' && e.type === 'ImageDeleted' && !s.imageDeleted;

/** A verified save's image copied to (or failing to reach) the object store: recorded on the final state, which keeps its status. */
const replication = (s: JobState, e: JobEvent): boolean =>
  s.kind === 'save' && s.status === 'verified' && !s.imageDeleted && (e.type === 'ImageReplicated' || e.type === 'ImageReplicationFailed');

/**
 * Fold one event into a job's state. Pure and total: an event that does not apply to the state
 * (out of order, or a stale attempt) leaves the state as it is, so replaying any log is safe.
 */
export function evolve(s: JobState, e: JobEvent): JobState {
  const base = { ...s, version: s.version + 1, updatedAt: e.at, jobId: e.jobId };
  // A final state is final: late or stray events (a stale executor, a second scheduler) are
  // counted but change nothing. A failed job may only be retried, or given up (its failure
  // repeated as not retryable).
  if (
    isTerminal(s) &&
    !(s.status === 'failed' && (e.type === 'SaveRetrying' || e.type === 'RestoreRetrying' || givesUp(s, e))) &&
    !scrubDamage(s, e) &&
    !imageDeletion(s, e) &&
    !replication(s, e)
  )
    return base;
  switch (e.type) {
    case 'SaveRequested':
      if (s.status !== 'none') return base;
      return { ...base, kind: 'save', status: 'requested', saveRequest: e.data.request, vm: e.data.request.vm, requestedAt: e.at };
    case 'RestoreRequested':
      if (s.status !== 'none') return base;
      return { ...base, kind: 'restore', status: 'requested', restoreRequest: e.data.request, vm: e.data.vm, imagePath: e.data.request.image, requestedAt: e.at };
    case 'SaveRejected':
    case 'RestoreRejected':
      // A request refused by its schema has no Requested event before it.
      return { ...base, kind: s.kind ?? (e.type === 'SaveRejected' ? 'save' : 'restore'), status: 'rejected', rejection: e.data };
    case 'SaveScheduled':
    case 'RestoreScheduled':
      return { ...base, status: 'scheduled', host: e.data.host, attempt: e.data.attempt, fencingToken: e.data.fencingToken, deadlineAt: e.data.deadlineAt, notBefore: undefined };
    case 'SaveStarted':
      if (e.data.attempt !== s.attempt) return base;
      return { ...base, status: 'running', imagePath: e.data.imagePath, format: e.data.format, wasRunning: e.data.wasRunning };
    case 'RestoreStarted':
      if (e.data.attempt !== s.attempt) return base;
      return { ...base, status: 'running', imagePath: e.data.imagePath, format: e.data.format, vm: e.data.vm.name };
    case 'SaveCompleted':
      if (e.data.attempt !== s.attempt) return base;
      return {
        ...base,
        status: 'completed',
        imagePath: e.data.imagePath,
        result: { bytes: e.data.bytes, blocks: e.data.blocks, durationMs: e.data.durationMs, throughputBytesPerSec: e.data.throughputBytesPerSec },
      };
    case 'RestoreCompleted':
      if (e.data.attempt !== s.attempt) return base;
      return { ...base, status: 'completed', result: { durationMs: e.data.durationMs } };
    case 'SaveFailed':
    case 'RestoreFailed':
      if (e.data.attempt !== s.attempt) return base;
      return {
        ...base,
        status: 'failed',
        ...(e.type === 'SaveFailed' && e.data.imageKept ? { imageKept: e.data.imageKept } : {}),
        lastFailure: {
          stage: e.data.stage,
          code: e.data.code,
          reason: e.data.reason,
          retryable: e.data.retryable,
          ...('vmResumed' in e.data ? { vmResumed: e.data.vmResumed } : {}),
        },
      };
    case 'SaveRetrying':
    case 'RestoreRetrying':
      return { ...base, status: 'requested', notBefore: new Date(Date.parse(e.at) + e.data.delayMs).toISOString() };
    case 'SaveCancelRequested':
    case 'RestoreCancelRequested':
      return { ...base, cancelRequested: true };
    case 'SaveCancelled':
    case 'RestoreCancelled':
      return { ...base, status: 'cancelled' };
    case 'VerificationOverdue':
      // Only for the save still waiting for its verdict, and never back from a raise to a re-ask.
      if (s.kind !== 'save' || s.status !== 'completed' || e.data.attempt !== s.attempt) return base;
      if ((s.verificationOverdue?.notice ?? 0) >= e.data.notice) return base;
      return { ...base, verificationOverdue: { notice: e.data.notice, waitedMs: e.data.waitedMs, at: e.at } };
    case 'ImageAdopted':
      // A file the log did not know, adopted: a save job at its one attempt, completed next.
      if (s.status !== 'none') return base;
      return {
        ...base,
        kind: 'save',
        status: 'running',
        vm: e.data.vm,
        host: e.data.host,
        attempt: 1,
        fencingToken: 0,
        imagePath: e.data.imagePath,
        format: e.data.format,
        adopted: { at: e.at, fingerprint: e.data.fingerprint },
        requestedAt: e.at,
      };
    case 'ImageDeleted':
      if (!imageDeletion(s, e)) return base;
      return { ...base, imageDeleted: { at: e.at, rule: e.data.rule, bytes: e.data.bytes, host: e.data.host } };
    case 'ImageReplicated':
      if (!replication(s, e)) return base;
      return {
        ...base,
        replicated: { bucket: e.data.bucket, object: e.data.object, host: e.data.host, bytesMoved: e.data.bytesMoved, at: e.at },
        replicationFailed: undefined,
      };
    case 'ImageReplicationFailed':
      // A failure after a success changes nothing: the replica stands.
      if (!replication(s, e) || s.replicated) return base;
      return { ...base, replicationFailed: { code: e.data.code, reason: e.data.reason, at: e.at } };
    case 'ImageFetched':
      if (s.kind !== 'restore' || (s.status !== 'scheduled' && s.status !== 'running')) return base;
      return { ...base, fetched: { bucket: e.data.bucket, object: e.data.object, host: e.data.host, bytesMoved: e.data.bytesMoved, at: e.at }, fetchFailed: undefined };
    case 'ImageFetchFailed':
      if (s.kind !== 'restore' || (s.status !== 'scheduled' && s.status !== 'running')) return base;
      return { ...base, fetchFailed: { code: e.data.code, reason: e.data.reason, at: e.at } };
    case 'ImageVerified':
      return { ...base, status: 'verified', checks: e.data.checks, verificationOverdue: undefined };
    case 'ImageRejected':
      return {
        ...base,
        status: 'rejected',
        verificationOverdue: undefined,
        checks: e.data.checks,
        rejection: {
          rule: e.data.scrub ? 'scrub' : 'verification',
          message: e.data.checks
            .filter((c) => c.status === 'fail')
            .map((c) => `${c.name}: ${c.detail}`)
            .join('; '),
        },
      };
    // A drain's events (job `d-…`) are folded by `foldDrain` (drain.ts), never into a save or restore.
    case 'DrainRequested':
    case 'DrainVmUpdated':
    case 'DrainCancelRequested':
    case 'DrainCompleted':
    case 'DrainFailed':
    case 'DrainCancelled':
      return s;
  }
}

export const fold = (events: readonly JobEvent[], from: JobState = initialState()): JobState => events.reduce(evolve, from);
