import type { z } from 'zod';
import { parseCommandSubject, subjects } from './subjects.ts';
import { CancelRequest, DrainRequest, RestoreRequest, SaveRequest, AdmissionReply } from './commands.ts';
import { JobEvent } from './events.ts';
import { ControlReply, ControlRequest, DeadLetter, Heartbeat, HostAnnouncement, ProgressSample } from './hosts.ts';
import { WorkItem } from './work.ts';

/**
 * A message definition ties a name, a subject (or a subject builder's wildcard) and a schema:
 * publisher and consumer import the same object.
 */
export interface MessageDefinition<S extends z.ZodType = z.ZodType> {
  readonly name: string;
  /** The exact subject, or the wildcard a consumer filters on. */
  readonly subject: string;
  readonly schema: S;
}

const define = <S extends z.ZodType>(name: string, subject: string, schema: S): MessageDefinition<S> => ({ name, subject, schema });

export const messages = {
  saveRequest: define('SaveRequest', subjects.cmd.save, SaveRequest),
  restoreRequest: define('RestoreRequest', subjects.cmd.restore, RestoreRequest),
  cancelRequest: define('CancelRequest', subjects.cmd.cancel, CancelRequest),
  drainRequest: define('DrainRequest', subjects.cmd.drain, DrainRequest),
  /** The same requests on the partitioned subjects `vmsave.cmd.<kind>.<NN>` (`partitionOf` of the VM; see partition.ts). */
  saveRequestPartitioned: define('SaveRequest', subjects.cmd.partitionedAll.save, SaveRequest),
  restoreRequestPartitioned: define('RestoreRequest', subjects.cmd.partitionedAll.restore, RestoreRequest),
  cancelRequestPartitioned: define('CancelRequest', subjects.cmd.partitionedAll.cancel, CancelRequest),
  admissionReply: define('AdmissionReply', '(reply subject of a command)', AdmissionReply),
  work: define('WorkItem', subjects.workAll, WorkItem),
  event: define('JobEvent', subjects.evtAll, JobEvent),
  hostAnnouncement: define('HostAnnouncement', subjects.hostAll, HostAnnouncement),
  heartbeat: define('Heartbeat', subjects.heartbeatAll, Heartbeat),
  progress: define('ProgressSample', subjects.progressAll, ProgressSample),
  controlRequest: define('ControlRequest', subjects.controlAll, ControlRequest),
  controlReply: define('ControlReply', '(reply subject of a control request)', ControlReply),
  deadLetter: define('DeadLetter', subjects.dlqAll, DeadLetter),
} as const;

/**
 * The command definition for a subject on the command stream, if any: the bare subjects and the
 * partitioned ones (`vmsave.cmd.<kind>.<NN>`) carry the same messages, so a handler compares
 * with `messages.saveRequest` etc. whichever it came on.
 */
export function commandForSubject(subject: string) {
  const c = parseCommandSubject(subject);
  switch (c?.kind) {
    case 'save':
      return messages.saveRequest;
    case 'restore':
      return messages.restoreRequest;
    case 'cancel':
      return messages.cancelRequest;
    default:
      return undefined;
  }
}

/**
 * Schema evolution. The rule: within one `schemaVersion`, fields may only be added as optional,
 * and readers ignore fields they do not know (zod objects strip them), so old readers accept new
 * writers and new readers accept old writers. A breaking change bumps `schemaVersion` and adds an
 * upcaster here that turns the old shape into the new one before validation.
 */
const upcasters: Record<number, (raw: Record<string, unknown>) => Record<string, unknown>> = {};

export function upcast(raw: unknown): unknown {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return raw;
  let obj = raw as Record<string, unknown>;
  for (let guard = 0; guard < 16; guard++) {
    const v = typeof obj.schemaVersion === 'number' ? obj.schemaVersion : 1;
    const up = upcasters[v];
    if (!up) break;
    obj = up(obj);
  }
  return obj;
}
