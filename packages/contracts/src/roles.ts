/**
 * Which service may write which event into the log. The NATS permissions
 * (`infra/nats/permissions.ts`) grant each role `vmsave.evt.*.<Type>` for exactly its types, and
 * the log reader (`readLog` in `@vmsave/bus`) refuses an event whose `source` names a role that
 * may not emit its type, so a forged or misplaced event is neither accepted by the server nor
 * folded by a reader.
 *
 * The table is true to the code: the executor decides `Start*`, `Complete*`, `Fail*` and
 * `ConfirmCancelled`; the scheduler decides requests, rejections, scheduling, retries and cancel
 * requests, and also emits `…Failed` (the final failure when retries run out, the watchdog's
 * lost job) and `…Cancelled` (a job cancelled while still queued); the verifier records verdicts.
 */
import { parseEventSubject } from './subjects.ts';
import { jobEventTypes, type JobEvent, type JobEventType } from './events.ts';

/** The services that write events. */
export const publisherRoles = ['scheduler', 'executor', 'verifier'] as const;
export type PublisherRole = (typeof publisherRoles)[number];

/** Every event type and the roles that may publish it. */
export const EVENT_PUBLISHERS: Record<JobEventType, readonly PublisherRole[]> = {
  SaveRequested: ['scheduler'],
  SaveRejected: ['scheduler'],
  SaveScheduled: ['scheduler'],
  SaveStarted: ['executor'],
  SaveCompleted: ['executor'],
  SaveFailed: ['executor', 'scheduler'],
  SaveRetrying: ['scheduler'],
  SaveCancelRequested: ['scheduler'],
  SaveCancelled: ['executor', 'scheduler'],
  ImageVerified: ['verifier'],
  ImageRejected: ['verifier'],
  VerificationOverdue: ['scheduler'],
  ImageDeleted: ['executor'],
  ImageAdopted: ['executor'],
  ImageReplicated: ['executor'],
  ImageReplicationFailed: ['executor'],
  ImageFetched: ['executor'],
  ImageFetchFailed: ['executor'],
  RestoreRequested: ['scheduler'],
  RestoreRejected: ['scheduler'],
  RestoreScheduled: ['scheduler'],
  RestoreStarted: ['executor'],
  RestoreCompleted: ['executor'],
  RestoreFailed: ['executor', 'scheduler'],
  RestoreRetrying: ['scheduler'],
  RestoreCancelRequested: ['scheduler'],
  RestoreCancelled: ['executor', 'scheduler'],
  // A drain is the scheduler's own job (services/scheduler/src/drain.ts).
  DrainRequested: ['scheduler'],
  DrainVmUpdated: ['scheduler'],
  DrainCancelRequested: ['scheduler'],
  DrainCompleted: ['scheduler'],
  DrainFailed: ['scheduler'],
  DrainCancelled: ['scheduler'],
};

/** The event types a role may publish, in the contracts' order. */
export function eventTypesOf(role: PublisherRole): JobEventType[] {
  return jobEventTypes.filter((t) => EVENT_PUBLISHERS[t].includes(role));
}

/**
 * The role an event's `source` names: `scheduler`, `verifier`, `executor` or `executor@<host>`
 * (what the services write). Anything else names no role.
 */
export function roleOfSource(source: string): PublisherRole | undefined {
  if (source === 'scheduler' || source === 'verifier' || source === 'executor') return source;
  if (source.startsWith('executor@') && source.length > 'executor@'.length) return 'executor';
  return undefined;
}

/** Whether an event from `source` may have type `type` (`roleOfSource` then `EVENT_PUBLISHERS`). */
export function mayPublish(source: string, type: string): boolean {
  const role = roleOfSource(source);
  const allowed = (EVENT_PUBLISHERS as Record<string, readonly PublisherRole[] | undefined>)[type];
  return role !== undefined && (allowed?.includes(role) ?? false);
}

/**
 * Why an event read from `subject` must not be folded, or undefined when it may: its subject
 * must be `vmsave.evt.<its jobId>.<its type>` and its `source` must be a role that may emit
 * that type. The message names the field and the rule.
 */
export function refuseMisplacedEvent(subject: string, event: Pick<JobEvent, 'jobId' | 'type' | 'source'>): string | undefined {
  const s = parseEventSubject(subject);
  if (!s) return `subject: "${subject}" is not vmsave.evt.<jobId>.<type>`;
  if (s.type !== event.type) return `type: "${event.type}" differs from the subject's type token "${s.type}"`;
  if (s.jobId !== event.jobId) return `jobId: "${event.jobId}" differs from the subject's job token "${s.jobId}"`;
  if (!mayPublish(event.source, event.type)) {
    const who = roleOfSource(event.source);
    return `source: "${event.source}" ${who ? `(role ${who})` : '(no role: scheduler, verifier, executor or executor@<host>)'} may not publish ${event.type}; only ${EVENT_PUBLISHERS[event.type].join(', ')}`;
  }
  return undefined;
}

/** A `source` that may publish `type` (its first role in `EVENT_PUBLISHERS`): for tests and tools that write events. */
export function sourceOf(type: JobEventType): PublisherRole {
  return EVENT_PUBLISHERS[type][0]!;
}
