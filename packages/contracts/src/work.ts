import { z } from 'zod';
import { HostName, JobId, Timestamp } from './common.ts';
import { RestoreRequest, SaveRequest } from './commands.ts';
import { SaveFormat } from './vm.ts';

/** `vmsave.work.<host>`: what the scheduler hands one executor. */
export const SaveWork = z.object({
  kind: z.literal('save'),
  jobId: JobId,
  attempt: z.number().int().min(1),
  fencingToken: z.number().int().min(0),
  host: HostName,
  deadlineAt: Timestamp,
  /** Resolved format (never `auto`). */
  format: SaveFormat,
  request: SaveRequest,
});
export type SaveWork = z.infer<typeof SaveWork>;

export const RestoreWork = z.object({
  kind: z.literal('restore'),
  jobId: JobId,
  attempt: z.number().int().min(1),
  fencingToken: z.number().int().min(0),
  host: HostName,
  deadlineAt: Timestamp,
  request: RestoreRequest,
});
export type RestoreWork = z.infer<typeof RestoreWork>;

export const WorkItem = z.discriminatedUnion('kind', [SaveWork, RestoreWork]);
export type WorkItem = z.infer<typeof WorkItem>;
