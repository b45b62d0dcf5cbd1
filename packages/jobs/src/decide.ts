import {
  makeEvent,
  type JobEvent,
  type JobEventType,
  type RestoreRequest,
  type SaveRequest,
  type VerificationCheck,
  type ImageFingerprint,
  type FailureStage,
  type SealSummary,
  SaveStartedData,
  ImageAdoptedData,
  ImageReplicatedData,
  ImageReplicationFailedData,
  ImageFetchedData,
  ImageFetchFailedData,
  SaveCompletedData,
  SaveFailedData,
  RestoreStartedData,
  RestoreCompletedData,
  RestoreFailedData,
} from '@vmsave/contracts';
import type { z } from 'zod';
import { isTerminal, type JobState } from './state.ts';

type Data<S extends z.ZodType> = z.input<S>;

/** What can be asked of a job. Each is decided against the job's folded state. */
export type JobCommand =
  | { type: 'RequestSave'; jobId: string; request: SaveRequest }
  | { type: 'RequestRestore'; jobId: string; request: RestoreRequest; vm?: string; sourceJobId?: string }
  | { type: 'Reject'; rule: string; field?: string; message: string }
  | { type: 'Schedule'; host: string; fencingToken: number; deadlineAt: string }
  | { type: 'StartSave'; data: Data<typeof SaveStartedData> }
  | { type: 'StartRestore'; data: Data<typeof RestoreStartedData> }
  | { type: 'CompleteSave'; data: Data<typeof SaveCompletedData> }
  | { type: 'CompleteRestore'; data: Data<typeof RestoreCompletedData> }
  | { type: 'FailSave'; data: Data<typeof SaveFailedData> }
  | { type: 'FailRestore'; data: Data<typeof RestoreFailedData> }
  | { type: 'Retry'; delayMs: number; maxAttempts: number }
  | { type: 'Cancel'; reason: string; requestId?: string }
  | { type: 'ConfirmCancelled'; reason: string; vmResumed?: boolean; stage?: string }
  | { type: 'RecordVerification'; imagePath: string; host?: string; checks: VerificationCheck[]; fingerprint?: ImageFingerprint; content?: 'state' | 'full'; seal?: SealSummary }
  /** The verifier's content scrub found a verified image damaged since: the job becomes `rejected`. */
  | { type: 'RecordScrubDamage'; imagePath: string; host?: string; checks: VerificationCheck[]; seal?: SealSummary }
  /** The host's retention deleted a final save's image file (`rule` chose it). */
  | { type: 'RecordImageDeleted'; imagePath: string; host: string; rule: 'keep-last' | 'max-age'; bytes: number }
  /** A host's executor adopts an image file the log did not know, as a new save job (`jobId`, attempt 1, token 0). */
  | { type: 'AdoptImage'; jobId: string; data: Data<typeof ImageAdoptedData> }
  /** A verified save's image copied into the bus's object store, or the upload's failure. */
  | { type: 'RecordReplication'; data: Data<typeof ImageReplicatedData> }
  | { type: 'FailReplication'; data: Data<typeof ImageReplicationFailedData> }
  /** A restore's image downloaded from the object store before the restore, or the download's failure. */
  | { type: 'RecordFetch'; data: Data<typeof ImageFetchedData> }
  | { type: 'FailFetch'; data: Data<typeof ImageFetchFailedData> }
  /** No verdict came for a completed save: 1 asks for verification again, 2 raises it. */
  | { type: 'FlagVerificationOverdue'; notice: 1 | 2; waitedMs: number };

export type Decision = { ok: true; events: JobEvent[]; duplicate?: boolean } | { ok: false; rule: string; message: string };

export interface DecideMeta {
  source: string;
  now?: Date;
}

const refuse = (rule: string, message: string): Decision => ({ ok: false, rule, message });

/**
 * Decide what a command does to a job: the events it produces, or the rule it breaks.
 * Pure: no I/O, no clock unless `meta.now` is absent.
 */
export function decide(cmd: JobCommand, s: JobState, meta: DecideMeta): Decision {
  const now = meta.now ?? new Date();
  // Event payloads are checked by the callers' schemas; the union of types defeats inference here.
  const ev = (type: JobEventType, data: unknown): JobEvent => makeEvent(type, s.jobId ?? '', data as never, { source: meta.source, at: now });
  const ok = (...events: JobEvent[]): Decision => ({ ok: true, events });
  const P = s.kind === 'restore' ? 'Restore' : 'Save';

  if (cmd.type === 'RequestSave' || cmd.type === 'RequestRestore') {
    if (s.status !== 'none') return { ok: true, events: [], duplicate: true };
    const at = { source: meta.source, at: now };
    return cmd.type === 'RequestSave'
      ? ok(makeEvent('SaveRequested', cmd.jobId, { request: cmd.request }, at))
      : ok(makeEvent('RestoreRequested', cmd.jobId, { request: cmd.request, vm: cmd.vm, sourceJobId: cmd.sourceJobId }, at));
  }
  if (cmd.type === 'AdoptImage') {
    // One id per image (its host, path and fingerprint): adopting it again changes nothing.
    if (s.status !== 'none') return { ok: true, events: [], duplicate: true };
    return ok(makeEvent('ImageAdopted', cmd.jobId, ImageAdoptedData.parse(cmd.data), { source: meta.source, at: now, eventId: `${cmd.jobId}.ImageAdopted` }));
  }
  if (s.status === 'none') return refuse('job-unknown', 'no such job');
  if (cmd.type === 'RecordScrubDamage') {
    // The one way out of a final state: a verified image found damaged later is no longer good.
    if (s.kind !== 'save' || s.status !== 'verified')
      return refuse(isTerminal(s) ? 'job-terminal' : 'illegal-transition', `cannot record scrub damage on a ${s.kind} job that is ${s.status}`);
    if (!cmd.checks.some((c) => c.status === 'fail')) return refuse('no-damage', 'a scrub rejection needs a failed check');
    if (s.imageDeleted) return refuse('image-deleted', `job ${s.jobId}'s image was deleted by retention (${s.imageDeleted.rule}); nothing to scrub`);
    const data = { imagePath: cmd.imagePath, host: cmd.host, checks: cmd.checks, content: 'full' as const, scrub: true, ...(cmd.seal ? { seal: cmd.seal } : {}) };
    // One id per job: a second verifier (or a repeated pass) appends the same event.
    return ok(makeEvent('ImageRejected', s.jobId!, data, { source: meta.source, at: now, eventId: `${s.jobId}.ImageRejected.scrub` }));
  }
  if (cmd.type === 'RecordImageDeleted') {
    // Only an image whose save is over: verified, rejected, or failed with its partial image kept.
    if (s.kind !== 'save' || !isTerminal(s)) return refuse('illegal-transition', `cannot delete the image of a ${s.kind} job that is ${s.status}`);
    if (s.imageDeleted) return { ok: true, events: [], duplicate: true };
    const own = s.status === 'failed' ? s.imageKept : s.imagePath;
    if (own !== cmd.imagePath) return refuse('image-mismatch', `imagePath: ${cmd.imagePath} is not job ${s.jobId}'s image (${own ?? 'none'})`);
    const data = { imagePath: cmd.imagePath, host: cmd.host, rule: cmd.rule, bytes: Math.max(0, Math.round(cmd.bytes)) };
    // One id per job: a second executor pass (or a replay) appends the same event.
    return ok(makeEvent('ImageDeleted', s.jobId!, data, { source: meta.source, at: now, eventId: `${s.jobId}.ImageDeleted` }));
  }
  if (cmd.type === 'RecordReplication' || cmd.type === 'FailReplication') {
    // Only a verified save's image that is still there; once replicated, it stays replicated.
    if (s.kind !== 'save' || s.status !== 'verified') return refuse('illegal-transition', `cannot replicate the image of a ${s.kind} job that is ${s.status}`);
    if (s.imageDeleted) return refuse('image-deleted', `job ${s.jobId}'s image was deleted by retention (${s.imageDeleted.rule})`);
    if (s.replicated) return { ok: true, events: [], duplicate: true };
    if (cmd.data.imagePath !== s.imagePath) return refuse('image-mismatch', `imagePath: ${cmd.data.imagePath} is not job ${s.jobId}'s image (${s.imagePath ?? 'none'})`);
    return cmd.type === 'RecordReplication'
      ? ok(makeEvent('ImageReplicated', s.jobId!, ImageReplicatedData.parse(cmd.data), { source: meta.source, at: now, eventId: `${s.jobId}.ImageReplicated` }))
      : ok(ev('ImageReplicationFailed', ImageReplicationFailedData.parse(cmd.data)));
  }
  if (isTerminal(s)) return refuse('job-terminal', `job ${s.jobId} is already ${s.status}`);
  if (cmd.type === 'RecordFetch' || cmd.type === 'FailFetch') {
    if (s.kind !== 'restore' || (s.status !== 'scheduled' && s.status !== 'running'))
      return refuse('illegal-transition', `cannot fetch an image for a ${s.kind} job that is ${s.status}`);
    return cmd.type === 'RecordFetch' ? ok(ev('ImageFetched', ImageFetchedData.parse(cmd.data))) : ok(ev('ImageFetchFailed', ImageFetchFailedData.parse(cmd.data)));
  }

  const attemptMatches = (attempt: number, token: number): Decision | undefined =>
    attempt !== s.attempt || token !== s.fencingToken
      ? refuse('stale-attempt', `attempt ${attempt} (token ${token}) is not the current attempt ${s.attempt} (token ${s.fencingToken})`)
      : undefined;

  switch (cmd.type) {
    case 'Reject':
      if (s.status !== 'requested') return refuse('illegal-transition', `cannot reject a ${s.status} job`);
      return ok(ev(`${P}Rejected`, { rule: cmd.rule, field: cmd.field, message: cmd.message }));
    case 'Schedule':
      if (s.status !== 'requested') return refuse('illegal-transition', `cannot schedule a ${s.status} job`);
      if (s.notBefore && Date.parse(s.notBefore) > now.getTime()) return refuse('backoff', `retry not before ${s.notBefore}`);
      return ok(ev(`${P}Scheduled`, { host: cmd.host, attempt: s.attempt + 1, fencingToken: cmd.fencingToken, deadlineAt: cmd.deadlineAt }));
    case 'StartSave':
    case 'StartRestore': {
      if ((cmd.type === 'StartSave') !== (s.kind === 'save')) return refuse('wrong-kind', `${cmd.type} on a ${s.kind} job`);
      if (s.status !== 'scheduled') return refuse('illegal-transition', `cannot start a ${s.status} job`);
      const stale = attemptMatches(cmd.data.attempt, cmd.data.fencingToken);
      if (stale) return stale;
      return cmd.type === 'StartSave' ? ok(ev('SaveStarted', SaveStartedData.parse(cmd.data))) : ok(ev('RestoreStarted', RestoreStartedData.parse(cmd.data)));
    }
    case 'CompleteSave':
    case 'CompleteRestore': {
      if ((cmd.type === 'CompleteSave') !== (s.kind === 'save')) return refuse('wrong-kind', `${cmd.type} on a ${s.kind} job`);
      if (s.status !== 'running') return refuse('illegal-transition', `cannot complete a ${s.status} job`);
      const stale = attemptMatches(cmd.data.attempt, cmd.data.fencingToken);
      if (stale) return stale;
      return cmd.type === 'CompleteSave' ? ok(ev('SaveCompleted', SaveCompletedData.parse(cmd.data))) : ok(ev('RestoreCompleted', RestoreCompletedData.parse(cmd.data)));
    }
    case 'FailSave':
    case 'FailRestore': {
      if ((cmd.type === 'FailSave') !== (s.kind === 'save')) return refuse('wrong-kind', `${cmd.type} on a ${s.kind} job`);
      if (s.status !== 'scheduled' && s.status !== 'running') return refuse('illegal-transition', `cannot fail a ${s.status} job`);
      if (cmd.data.attempt !== s.attempt) return refuse('stale-attempt', `attempt ${cmd.data.attempt} is not the current attempt ${s.attempt}`);
      return cmd.type === 'FailSave' ? ok(ev('SaveFailed', SaveFailedData.parse(cmd.data))) : ok(ev('RestoreFailed', RestoreFailedData.parse(cmd.data)));
    }
    case 'Retry':
      return refuse('illegal-transition', `cannot retry a ${s.status} job`);
    case 'Cancel':
      if (s.status === 'requested') return ok(ev(`${P}Cancelled`, { reason: cmd.reason, stage: 'queued' }));
      if (s.status === 'scheduled' || s.status === 'running') {
        if (s.cancelRequested) return { ok: true, events: [], duplicate: true };
        return ok(ev(`${P}CancelRequested`, { reason: cmd.reason, requestId: cmd.requestId }));
      }
      return refuse('illegal-transition', `cannot cancel a ${s.status} job`);
    case 'ConfirmCancelled':
      if (s.status !== 'scheduled' && s.status !== 'running') return refuse('illegal-transition', `cannot cancel a ${s.status} job`);
      return ok(ev(`${P}Cancelled`, { reason: cmd.reason, vmResumed: cmd.vmResumed, stage: cmd.stage }));
    case 'RecordVerification': {
      if (s.kind !== 'save' || s.status !== 'completed') return refuse('illegal-transition', `cannot verify a ${s.kind} job that is ${s.status}`);
      const failed = cmd.checks.some((c) => c.status === 'fail');
      return ok(
        ev(failed ? 'ImageRejected' : 'ImageVerified', {
          imagePath: cmd.imagePath,
          host: cmd.host,
          checks: cmd.checks,
          fingerprint: cmd.fingerprint,
          ...(cmd.content ? { content: cmd.content } : {}),
          ...(cmd.seal ? { seal: cmd.seal } : {}),
        }),
      );
    }
    case 'FlagVerificationOverdue': {
      if (s.kind !== 'save' || s.status !== 'completed') return refuse('illegal-transition', `cannot flag a verdict overdue on a ${s.kind} job that is ${s.status}`);
      const had = s.verificationOverdue?.notice ?? 0;
      if (had >= cmd.notice) return { ok: true, events: [], duplicate: true };
      if (cmd.notice !== had + 1) return refuse('overdue-order', `notice ${cmd.notice} needs notice ${had + 1} first`);
      if (!s.imagePath || !s.host) return refuse('illegal-transition', `job ${s.jobId} has no image path or host`);
      const data = { imagePath: s.imagePath, host: s.host, attempt: s.attempt, waitedMs: Math.max(0, Math.round(cmd.waitedMs)), notice: cmd.notice };
      // One id per attempt and notice: a second scheduler (or a replay) appends the same event.
      return ok(makeEvent('VerificationOverdue', s.jobId!, data, { source: meta.source, at: now, eventId: `${s.jobId}.${s.attempt}.VerificationOverdue.${cmd.notice}` }));
    }
  }
}

/** Retry is decided on a failed job (terminal unless a retry follows), so it is handled apart. */
export function decideRetry(cmd: Extract<JobCommand, { type: 'Retry' }>, s: JobState, meta: DecideMeta): Decision {
  if (s.status !== 'failed' || !s.lastFailure) return refuse('illegal-transition', `cannot retry a ${s.status} job`);
  if (!s.lastFailure.retryable) return refuse('not-retryable', `${s.lastFailure.code} is not retryable`);
  const P = s.kind === 'restore' ? 'Restore' : 'Save';
  const at = meta.now ?? new Date();
  // An adopted image's job has no request to run again: it ends at its one attempt.
  if (s.attempt >= cmd.maxAttempts || s.adopted) {
    // The job ends here, and says so: the last failure again, no longer retryable, so a client
    // that waits for a final state knows no retry follows.
    const f = s.lastFailure;
    const data = {
      attempt: s.attempt,
      stage: f.stage as FailureStage,
      code: f.code,
      retryable: false,
      host: s.host,
      reason: s.adopted ? `an adopted image's job is not retried: ${f.reason}` : `gave up after ${s.attempt} attempt${s.attempt === 1 ? '' : 's'}: ${f.reason}`,
      ...(P === 'Save' && f.vmResumed !== undefined ? { vmResumed: f.vmResumed } : {}),
    };
    return { ok: true, events: [makeEvent(`${P}Failed` as const, s.jobId!, data as never, { source: meta.source, at, eventId: `${s.jobId}.${s.attempt}.${P}Failed.final` })] };
  }
  return {
    ok: true,
    events: [
      makeEvent(
        `${P}Retrying` as const,
        s.jobId!,
        { attempt: s.attempt + 1, delayMs: cmd.delayMs, lastCode: s.lastFailure.code },
        { source: meta.source, at, eventId: `${s.jobId}.${s.attempt + 1}.${P}Retrying` },
      ),
    ],
  };
}
