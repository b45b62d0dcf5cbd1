import type { JobEvent } from '@vmsave/contracts';
import type { JobStatus } from './state.ts';

/** Every job status, in the order a job moves through them (the one list every reader uses). */
export const JOB_STATUSES = ['requested', 'scheduled', 'running', 'completed', 'verified', 'rejected', 'failed', 'cancelled'] as const satisfies readonly JobStatus[];
// Compile-time check that the list names every status (a new status must be added here).
const _everyStatus: Exclude<JobStatus, (typeof JOB_STATUSES)[number]> extends never ? true : never = true;
void _everyStatus;

/** Waiting for a host or on one: what the dashboard calls active. */
export const ACTIVE_STATUSES: ReadonlySet<JobStatus> = new Set(['requested', 'scheduled', 'running']);

/** Handed to an executor and not yet over: what counts against a host's limit. */
export const ON_HOST_STATUSES: ReadonlySet<JobStatus> = new Set(['scheduled', 'running']);

/**
 * Whether `e` ends attempt `attempt` of its job: its own completion or failure, or anything that
 * ends the job whatever the attempt (a cancel, a verdict). The one place this rule lives.
 */
export function closesAttempt(e: JobEvent, attempt: number): boolean {
  switch (e.type) {
    case 'SaveCompleted':
    case 'SaveFailed':
    case 'RestoreCompleted':
    case 'RestoreFailed':
      return e.data.attempt === attempt;
    case 'SaveCancelled':
    case 'RestoreCancelled':
    case 'ImageVerified':
    case 'ImageRejected':
      return true;
    default:
      return false;
  }
}
