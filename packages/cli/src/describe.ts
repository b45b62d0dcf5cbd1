/** One-line descriptions of events and job states for people. Pure. */
import type { JobEvent } from '@vmsave/contracts';
import type { JobState } from '@vmsave/jobs';
import { fmtBytes, fmtRate, fmtSeconds } from './format.ts';

export function describeEvent(e: JobEvent): string {
  switch (e.type) {
    case 'SaveRequested': {
      const r = e.data.request;
      return `save ${r.vm} format=${r.format} channels=${r.channels}${r.directIo ? ' direct-io' : ''} after=${r.after} priority=${r.priority}`;
    }
    case 'RestoreRequested':
      return `restore ${e.data.request.image}${e.data.request.host ? ` on ${e.data.request.host}` : ''}${e.data.vm ? ` (vm ${e.data.vm})` : ''}`;
    case 'SaveRejected':
    case 'RestoreRejected':
      return `rejected (${e.data.rule}): ${e.data.message}`;
    case 'SaveScheduled':
    case 'RestoreScheduled':
      return `on ${e.data.host}, attempt ${e.data.attempt}, deadline ${e.data.deadlineAt}`;
    case 'SaveStarted':
      return `${e.data.format} to ${e.data.imagePath} (${fmtBytes(e.data.ramBytes)} RAM, ${e.data.wasRunning ? 'was running' : 'was paused'})`;
    case 'RestoreStarted':
      return `${e.data.format} from ${e.data.imagePath} into ${e.data.vm.name}`;
    case 'SaveCompleted':
      return `${fmtBytes(e.data.bytes)} (${fmtBytes(e.data.blocks * 512)} allocated) in ${fmtSeconds(e.data.durationMs)} s, ${fmtRate(e.data.throughputBytesPerSec)}; VM ${e.data.vmState}${e.data.afterError ? ` (not as asked: ${e.data.afterError})` : ''}`;
    case 'RestoreCompleted':
      return `${e.data.vm} ${e.data.vmState} in ${fmtSeconds(e.data.durationMs)} s${e.data.gate === 'quick' ? ' (image unchanged since verified: quick gate)' : ''}`;
    case 'SaveFailed':
    case 'RestoreFailed':
      return `at ${e.data.stage} (${e.data.code}${e.data.retryable ? ', retryable' : ''}): ${e.data.reason}`;
    case 'SaveRetrying':
    case 'RestoreRetrying':
      return `attempt ${e.data.attempt} in ${fmtSeconds(e.data.delayMs)} s after ${e.data.lastCode}`;
    case 'SaveCancelRequested':
    case 'RestoreCancelRequested':
      return e.data.reason;
    case 'SaveCancelled':
    case 'RestoreCancelled':
      return `${e.data.reason}${e.data.stage ? ` (at ${e.data.stage})` : ''}`;
    case 'ImageVerified':
    case 'ImageRejected': {
      const failed = e.data.checks.filter((c) => c.status === 'fail');
      return failed.length ? `${failed.length} check(s) failed: ${failed.map((c) => c.name).join(', ')}` : `${e.data.checks.filter((c) => c.status === 'pass').length} checks passed`;
    }
  }
}

/** The JSON shape of a job for `--json` (stable keys). */
export function jobJson(s: JobState) {
  return {
    jobId: s.jobId, kind: s.kind, status: s.status, vm: s.vm, host: s.host, attempt: s.attempt,
    format: s.format, imagePath: s.imagePath, requestedAt: s.requestedAt, updatedAt: s.updatedAt,
    result: s.result, lastFailure: s.lastFailure, rejection: s.rejection, checks: s.checks,
  };
}

/** The summary line of a finished or current job. */
export function describeState(s: JobState): string {
  const what = `${s.kind ?? 'job'} ${s.jobId}${s.vm ? ` (${s.vm})` : ''}`;
  switch (s.status) {
    case 'verified':
      return `${what} verified: ${s.imagePath} ${s.result?.bytes !== undefined ? `${fmtBytes(s.result.bytes)}, ${fmtBytes((s.result.blocks ?? 0) * 512)} allocated, ` : ''}${fmtSeconds(s.result?.durationMs)} s`;
    case 'completed':
      return `${what} completed${s.host ? ` on ${s.host}` : ''} in ${fmtSeconds(s.result?.durationMs)} s`;
    case 'failed':
      return `${what} failed at ${s.lastFailure?.stage} (${s.lastFailure?.code}): ${s.lastFailure?.reason}`;
    case 'rejected':
      return `${what} rejected (${s.rejection?.rule}): ${s.rejection?.message}`;
    default:
      return `${what} ${s.status}`;
  }
}
