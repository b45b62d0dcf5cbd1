/**
 * Every NATS subject vmsave uses is spelled here and nowhere else.
 *
 * | subject                         | kind                      | publisher → consumer            |
 * |---------------------------------|---------------------------|---------------------------------|
 * | vmsave.cmd.{save,restore,cancel}.<NN>| JetStream VMSAVE_CMD (WQ) | clients → the scheduler owning partition NN |
 * | vmsave.cmd.{save,restore,cancel,drain}| JetStream VMSAVE_CMD (WQ) | old clients, drains → scheduler (forwarded) |
 * | vmsave.work.<host>              | JetStream VMSAVE_WORK (WQ)| scheduler → that host's executor|
 * | vmsave.evt.<jobId>.<type>       | JetStream VMSAVE_EVT      | every service → everyone        |
 * | vmsave.host.<host>              | JetStream VMSAVE_HOSTS    | executors → scheduler, dashboard|
 * | vmsave.hb.<host>                | core NATS                 | executors → scheduler           |
 * | vmsave.progress.<jobId>         | core NATS                 | executor → dashboard, CLI       |
 * | vmsave.ctl.<host>               | core NATS request/reply   | scheduler → executor (cancel)   |
 * | vmsave.dlq.<service>            | JetStream VMSAVE_DLQ      | any consumer → operators        |
 */
import { PARTITIONS, partitionToken } from './partition.ts';

export const ROOT = 'vmsave';

/** A token that is safe inside a subject: no dots, wildcards or whitespace. */
export const SUBJECT_TOKEN = /^[A-Za-z0-9_-][A-Za-z0-9_:-]{0,127}$/;

function token(kind: string, value: string): string {
  if (!SUBJECT_TOKEN.test(value)) {
    throw new TypeError(`${kind} "${value}" cannot be used in a subject: letters, digits, _ - : only (max 128)`);
  }
  return value;
}

export const subjects = {
  cmd: {
    save: `${ROOT}.cmd.save`,
    restore: `${ROOT}.cmd.restore`,
    cancel: `${ROOT}.cmd.cancel`,
    drain: `${ROOT}.cmd.drain`,
    all: `${ROOT}.cmd.>`,
    /** `vmsave.cmd.<kind>.<NN>`: a command for a VM of partition NN (`partitionOf`). */
    partitioned: (kind: 'save' | 'restore' | 'cancel', partition: number) => `${ROOT}.cmd.${kind}.${partitionToken(partition)}`,
    /** Wildcards of the partitioned subjects of one kind, `vmsave.cmd.save.*` (permissions, AsyncAPI). */
    partitionedAll: { save: `${ROOT}.cmd.save.*`, restore: `${ROOT}.cmd.restore.*`, cancel: `${ROOT}.cmd.cancel.*` },
  },
  work: (host: string) => `${ROOT}.work.${token('host', host)}`,
  workAll: `${ROOT}.work.*`,
  evt: (jobId: string, type: string) => `${ROOT}.evt.${token('job id', jobId)}.${token('event type', type)}`,
  evtOfJob: (jobId: string) => `${ROOT}.evt.${token('job id', jobId)}.>`,
  evtOfType: (type: string) => `${ROOT}.evt.*.${token('event type', type)}`,
  evtAll: `${ROOT}.evt.>`,
  host: (host: string) => `${ROOT}.host.${token('host', host)}`,
  hostAll: `${ROOT}.host.*`,
  heartbeat: (host: string) => `${ROOT}.hb.${token('host', host)}`,
  heartbeatAll: `${ROOT}.hb.*`,
  progress: (jobId: string) => `${ROOT}.progress.${token('job id', jobId)}`,
  progressAll: `${ROOT}.progress.*`,
  control: (host: string) => `${ROOT}.ctl.${token('host', host)}`,
  controlAll: `${ROOT}.ctl.*`,
  dlq: (service: string) => `${ROOT}.dlq.${token('service', service)}`,
  dlqAll: `${ROOT}.dlq.*`,
} as const;

/** The scheduler's command consumer filters (one filter per consumer on NATS 2.9; a work queue refuses overlapping ones). */
export const commandFilters = {
  /** The bare (unpartitioned) command subjects, `vmsave.cmd.*`: the `scheduler-global` durable. */
  bare: `${ROOT}.cmd.*`,
  /** Every partitioned command of one partition, `vmsave.cmd.*.<NN>`: the `scheduler-p<NN>` durable. */
  ofPartition: (partition: number) => `${ROOT}.cmd.*.${partitionToken(partition)}`,
} as const;

/**
 * The inbox prefix of a NATS user, `_INBOX.<user>`: every vmsave connection with a user sets
 * nats.js's `inboxPrefix` to it (`Bus.connect`), and the NATS permissions let each user
 * subscribe only below it (`_INBOX.<user>.>`), so no user reads another's replies. A user name
 * that is not one subject token (letters, digits, `_ - :`) has no such prefix.
 */
export function inboxPrefixOf(user: string): string {
  return `_INBOX.${token('NATS user', user)}`;
}

/** Longest reply subject the scheduler answers on. */
export const REPLY_SUBJECT_MAX = 256;

/** `_INBOX.` then one or more dot-separated tokens of letters, digits, `_`, `-` and `:` (a private prefix `_INBOX.<user>` included). */
const REPLY_SUBJECT = /^_INBOX(\.[A-Za-z0-9_:-]+)+$/;

/**
 * Whether a subject a command names in `Vmsave-Reply-To` may be answered on: a well-formed
 * inbox (`_INBOX.` and one or more tokens of `[A-Za-z0-9_:-]`, no wildcard, no empty token, at
 * most 256 characters), such as `_INBOX.client.<nuid>` under a user's private prefix
 * (`inboxPrefixOf`). Anything else (`vmsave.work.<host>`, `vmsave.evt.…`, `>`, `_INBOX.>`)
 * would have the scheduler publish with its own rights where the client may not.
 */
export function isReplySubject(subject: string): boolean {
  return subject.length <= REPLY_SUBJECT_MAX && REPLY_SUBJECT.test(subject);
}

/** Parse `vmsave.cmd.<kind>[.<NN>]`: the command kind and, on a partitioned subject, its partition. */
export function parseCommandSubject(subject: string): { kind: 'save' | 'restore' | 'cancel' | 'drain'; partition?: number } | undefined {
  const parts = subject.split('.');
  if (parts[0] !== ROOT || parts[1] !== 'cmd' || (parts.length !== 3 && parts.length !== 4)) return undefined;
  const kind = parts[2];
  if (kind !== 'save' && kind !== 'restore' && kind !== 'cancel' && kind !== 'drain') return undefined;
  if (parts.length === 3) return { kind };
  if (kind === 'drain' || !/^[0-9]{2}$/.test(parts[3]!)) return undefined;
  const partition = Number(parts[3]);
  return partition < PARTITIONS ? { kind, partition } : undefined;
}

/** Parse `vmsave.evt.<jobId>.<type>`; undefined for any other subject. */
export function parseEventSubject(subject: string): { jobId: string; type: string } | undefined {
  const parts = subject.split('.');
  if (parts.length !== 4 || parts[0] !== ROOT || parts[1] !== 'evt') return undefined;
  return { jobId: parts[2]!, type: parts[3]! };
}
