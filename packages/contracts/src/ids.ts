import { createHash, randomUUID } from 'node:crypto';

export type JobKind = 'save' | 'restore';

/**
 * A job's id is derived from its request id, so the same request published twice, or
 * re-delivered after a crash, always names the same job and deduplicates by construction.
 */
export function jobIdFor(kind: JobKind, requestId: string): string {
  const h = createHash('sha256').update(`${kind}\0${requestId}`).digest('hex').slice(0, 20);
  return `${kind === 'save' ? 's' : 'r'}-${h}`;
}

/** A drain's job id, `d-…`, derived from its request id like `jobIdFor`. */
export function drainIdFor(requestId: string): string {
  return `d-${createHash('sha256').update(`drain\0${requestId}`).digest('hex').slice(0, 20)}`;
}

/** Whether a job id names a drain (`drainIdFor`). */
export const isDrainId = (jobId: string): boolean => jobId.startsWith('d-');

export function newEventId(): string {
  return randomUUID();
}
