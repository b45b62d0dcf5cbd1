import type { WorkItem } from '@vmsave/contracts';
import { isTerminal, type JobState } from '@vmsave/jobs';

export type Admission = { ok: true } | { ok: false; rule: string; message: string };

/**
 * Whether a work item is the job's current attempt, checked before the executor touches the VM:
 * the preconditions `decide` puts on `StartSave`/`StartRestore` (same rules, same names; a unit
 * test holds them equal), asked before the start's data (wasRunning, the image's format) exists.
 * `decide` stays the judge of every event.
 */
export function admitWork(w: Pick<WorkItem, 'kind' | 'attempt' | 'fencingToken'>, s: JobState): Admission {
  if (s.status === 'none') return { ok: false, rule: 'job-unknown', message: 'no such job in the log' };
  if (isTerminal(s)) return { ok: false, rule: 'job-terminal', message: `job ${s.jobId} is already ${s.status}` };
  if (w.kind !== s.kind) return { ok: false, rule: 'wrong-kind', message: `${w.kind} work for a ${s.kind} job` };
  if (s.status !== 'scheduled') return { ok: false, rule: 'illegal-transition', message: `cannot start a ${s.status} job` };
  if (w.attempt !== s.attempt || w.fencingToken !== s.fencingToken) {
    return { ok: false, rule: 'stale-attempt', message: `attempt ${w.attempt} (token ${w.fencingToken}) is not the current attempt ${s.attempt} (token ${s.fencingToken})` };
  }
  return { ok: true };
}
