/** One-line descriptions of events and job states for people (CLI and dashboard). Pure. */
import type { DrainVmUpdatedData, JobEvent } from '@vmsave/contracts';
import type { JobState } from './state.ts';
import { fmtBytes, fmtElapsed, fmtRate, fmtSeconds } from './format.ts';

export function describeEvent(e: JobEvent): string {
  switch (e.type) {
    case 'SaveRequested': {
      const r = e.data.request;
      return `save ${r.vm} format=${r.format} channels=${r.channels}${r.directIo ? ' direct-io' : ''} after=${r.after} priority=${r.priority}`;
    }
    case 'RestoreRequested':
      return `restore ${e.data.request.image}${e.data.request.host ? ` on ${e.data.request.host}` : ''}${e.data.vm ? ` (vm ${e.data.vm})` : ''} after=${e.data.request.after}`;
    case 'SaveRejected':
    case 'RestoreRejected':
      return `rejected (${e.data.rule}${e.data.field ? `, ${e.data.field}` : ''}): ${e.data.message}`;
    case 'SaveScheduled':
    case 'RestoreScheduled':
      return `on ${e.data.host}, attempt ${e.data.attempt}, deadline ${e.data.deadlineAt}`;
    case 'SaveStarted':
      return `${e.data.format}, ${e.data.channels} channel(s)${e.data.directIo ? ', direct IO' : ''}, to ${e.data.imagePath} (${fmtBytes(e.data.ramBytes)} RAM, ${e.data.wasRunning ? 'was running' : 'was paused'})`;
    case 'RestoreStarted':
      return `${e.data.format} from ${e.data.imagePath} into ${e.data.vm.name}`;
    case 'SaveCompleted':
      return `${fmtBytes(e.data.bytes)} (${fmtBytes(e.data.blocks * 512)} allocated) in ${fmtSeconds(e.data.durationMs)} s, ${fmtRate(e.data.throughputBytesPerSec)}; VM ${e.data.vmState}${e.data.afterError ? ` (not as asked: ${e.data.afterError})` : ''}`;
    case 'RestoreCompleted':
      return `${e.data.vm} ${e.data.vmState} in ${fmtSeconds(e.data.durationMs)} s${e.data.gate === 'quick' ? ' (image unchanged since verified: quick gate)' : e.data.gate === 'full' ? ' (full verification gate)' : ''}`;
    case 'SaveFailed':
    case 'RestoreFailed':
      return `at ${e.data.stage} (${e.data.code}${e.data.retryable ? ', retryable' : ''}): ${e.data.reason}${'vmResumed' in e.data && e.data.vmResumed !== undefined ? `; VM ${e.data.vmResumed ? 'resumed' : 'NOT resumed'}` : ''}`;
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
      const n = (s: string) => e.data.checks.filter((c) => c.status === s).length;
      const failed = e.data.checks.filter((c) => c.status === 'fail');
      const counts = `${n('pass')} pass, ${n('warn')} warn, ${n('fail')} fail, ${n('skip')} skip`;
      const scrub = e.type === 'ImageRejected' && e.data.scrub ? 'content scrub: damaged since verified; ' : '';
      return failed.length ? `${scrub}${failed.length} check(s) failed: ${failed.map((c) => c.name).join(', ')} (${counts})` : `${n('pass')} checks passed (${counts})`;
    }
    case 'ImageDeleted':
      return `image ${e.data.imagePath} deleted on ${e.data.host} by retention (${e.data.rule}), ${fmtBytes(e.data.bytes)} freed`;
    case 'ImageAdopted':
      return `image ${e.data.imagePath} on ${e.data.host} adopted (a file the log did not know): ${e.data.vm}, ${e.data.format}, ${fmtBytes(e.data.bytes)}`;
    case 'ImageReplicated':
    case 'ImageFetched':
      return `image ${e.data.imagePath} ${e.type === 'ImageReplicated' ? 'uploaded from' : 'downloaded to'} ${e.data.host} ${e.type === 'ImageReplicated' ? 'to' : 'from'} ${e.data.bucket}/${e.data.object}: ${fmtBytes(e.data.bytesMoved)} moved in ${e.data.extents} extent(s) (${fmtBytes(e.data.allocatedBytes)} allocated) in ${fmtSeconds(e.data.seconds * 1000)} s`;
    case 'ImageReplicationFailed':
    case 'ImageFetchFailed':
      return `image ${e.data.imagePath} ${e.type === 'ImageReplicationFailed' ? 'upload' : 'download'} failed on ${e.data.host} (${e.data.code}): ${e.data.reason}`;
    case 'VerificationOverdue':
      return `verification overdue: no verdict ${fmtElapsed(e.data.waitedMs)} after the save completed; ${e.data.notice === 1 ? 'verification asked again' : 'raised (no verifier answered)'}`;
    case 'DrainRequested': {
      const r = e.data.request;
      return `drain ${r.host}${r.to ? ` to ${r.to}` : ''}: ${e.data.vms.length} VM(s)${e.data.vms.length ? ` (${e.data.vms.join(', ')})` : ''} format=${r.format} after=${r.after} priority=${r.priority}`;
    }
    case 'DrainVmUpdated':
      return describeDrainVm(e.data);
    case 'DrainCancelRequested':
      return `cancel asked: ${e.data.reason}`;
    case 'DrainCompleted':
    case 'DrainFailed':
    case 'DrainCancelled': {
      const o = e.data.outcome;
      const counts = [...new Set(o.map((v) => v.phase))].map((p) => `${o.filter((v) => v.phase === p).length} ${p}`).join(', ');
      return `${e.type === 'DrainCompleted' ? 'drained' : e.type === 'DrainFailed' ? `drain failed: ${e.data.reason}` : `drain cancelled: ${e.data.reason}`}${o.length ? ` (${counts})` : ' (no VMs)'}${o
        .filter((v) => v.phase === 'failed' || v.phase === 'cancelled')
        .map((v) => `; ${describeDrainVm(v)}`)
        .join('')}`;
    }
  }
}

/** One VM of a drain, e.g. `web-1 failed (save s-…): …` (`DrainVmUpdated`, a drain's outcome). */
export function describeDrainVm(v: DrainVmUpdatedData): string {
  const jobs = [v.saveJobId && `save ${v.saveJobId}`, v.restoreJobId && `restore ${v.restoreJobId}`].filter(Boolean).join(', ');
  return `${v.vm} ${v.phase}${v.restoredOn ? ` on ${v.restoredOn}` : ''}${jobs ? ` (${jobs})` : ''}${v.error ? `: ${v.error}` : ''}`;
}

/** The JSON shape of a job for `--json` and other tools (stable keys). */
export function jobJson(s: JobState) {
  return {
    jobId: s.jobId,
    kind: s.kind,
    status: s.status,
    vm: s.vm,
    host: s.host,
    attempt: s.attempt,
    format: s.format,
    imagePath: s.imagePath,
    requestedAt: s.requestedAt,
    updatedAt: s.updatedAt,
    result: s.result,
    lastFailure: s.lastFailure,
    rejection: s.rejection,
    checks: s.checks,
    verificationOverdue: s.verificationOverdue,
    imageDeleted: s.imageDeleted,
    replicated: s.replicated,
    replicationFailed: s.replicationFailed,
    fetched: s.fetched,
    fetchFailed: s.fetchFailed,
    drain: s.drain,
  };
}

/** `verification overdue (…)` for a completed save whose verdict is overdue, else empty (CLI and dashboard). */
export function overdueText(s: Pick<JobState, 'status' | 'verificationOverdue'>): string {
  const o = s.verificationOverdue;
  if (!o || s.status !== 'completed') return '';
  return `verification overdue (no verdict after ${fmtElapsed(o.waitedMs)}, ${o.notice === 1 ? 'verification asked again' : 'raised: no verifier answered'})`;
}

/** The summary line of a finished or current job. */
export function describeState(s: JobState): string {
  const what = `${s.kind ?? 'job'} ${s.jobId}${s.vm ? ` (${s.vm})` : ''}`;
  if (s.kind === 'drain' && s.drain) {
    const vms = s.drain.vms;
    const phases = [...new Set(vms.map((v) => v.phase))].map((p) => `${vms.filter((v) => v.phase === p).length} ${p}`).join(', ');
    return `drain ${s.jobId} of ${s.host}${s.drain.to ? ` to ${s.drain.to}` : ''} ${s.status}: ${s.drain.vmCount} VM(s)${phases ? ` (${phases})` : ''}${s.drain.reason ? `; ${s.drain.reason}` : ''}`;
  }
  const d = s.imageDeleted;
  if (d) return `${what} ${s.status}; image deleted ${d.at} on ${d.host} by retention (${d.rule})`;
  switch (s.status) {
    case 'verified':
      return `${what} verified: ${s.imagePath} ${s.result?.bytes !== undefined ? `${fmtBytes(s.result.bytes)}, ${fmtBytes((s.result.blocks ?? 0) * 512)} allocated, ` : ''}${fmtSeconds(s.result?.durationMs)} s${s.replicated ? `; replicated to ${s.replicated.bucket}/${s.replicated.object}` : s.replicationFailed ? `; replication failed (${s.replicationFailed.code})` : ''}`;
    case 'completed':
      return `${what} completed${s.host ? ` on ${s.host}` : ''} in ${fmtSeconds(s.result?.durationMs)} s${overdueText(s) ? `; ${overdueText(s)}` : ''}`;
    case 'failed':
      return `${what} failed at ${s.lastFailure?.stage} (${s.lastFailure?.code}): ${s.lastFailure?.reason}`;
    case 'rejected':
      return `${what} rejected (${s.rejection?.rule}): ${s.rejection?.message}`;
    default:
      return `${what} ${s.status}`;
  }
}
