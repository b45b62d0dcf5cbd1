import type { z } from 'zod';
import {
  AdmissionReply,
  CancelRequest,
  DrainRequest,
  ControlReply,
  ControlRequest,
  DeadLetter,
  Heartbeat,
  HostAnnouncement,
  JobEvent,
  ProgressSample,
  RestoreRequest,
  SaveRequest,
  WorkItem,
  jobEventTypes,
  messages,
  streams,
  subjects,
  type JobEventType,
  type StreamDefinition,
} from '@vmsave/contracts';
import * as ex from './examples.ts';

/**
 * What the generated document says about each subject. Subjects, streams and schemas come from
 * the contracts package; what is written here is only what the contracts cannot say (who
 * publishes, what a header means, prose) plus one example per message.
 */

export type Audience = 'public' | 'internal';

export interface ParameterInfo {
  description: string;
  enum?: readonly string[];
  examples: readonly string[];
}

export const parameters: Record<string, ParameterInfo> = {
  jobId: {
    description:
      'A job id: `s-` (save) or `r-` (restore) followed by the first 20 hex digits of sha256("save\\0" + requestId) ' +
      '(resp. "restore\\0" + requestId). Derived from the request id, so a publisher knows it before any answer.',
    examples: [ex.saveJobId, ex.restoreJobId],
  },
  type: {
    description: "The event type, equal to the payload's `type` field.",
    enum: jobEventTypes,
    examples: ['SaveRequested', 'ImageVerified'],
  },
  host: {
    description: 'An executor host name (letters, digits, `_ - :`, at most 128).',
    examples: [ex.exampleIds.host],
  },
  partition: {
    description:
      "A VM partition, two digits `00`–`15`: FNV-1a 32-bit of the VM name (UTF-8) mod 16 (`partitionOf` in packages/contracts); for a restore, of its image path as requested; for a cancel, of the job's VM (from its first event).",
    examples: ['07'],
  },
  service: {
    description: 'The service that refused a message (`scheduler`, `executor`, `verifier`, `dashboard`).',
    enum: ['scheduler', 'executor', 'verifier', 'dashboard'],
    examples: ['scheduler'],
  },
};

export interface HeaderInfo {
  description: string;
  required: boolean;
}

export const commandHeaders: Record<string, HeaderInfo> = {
  'Nats-Msg-Id': {
    required: false,
    description:
      'JetStream deduplication id; set it to the request id. A second publish with the same id within the VMSAVE_CMD ' +
      'duplicate window (24 h) is dropped by the server: the PubAck says `duplicate: true` and the scheduler never ' +
      'sees it, so no second admission answer comes. Without it, a repeated request still names the same job ' +
      '(the job id is derived from the request id) and is answered `accepted` with `duplicate: true`.',
  },
  'Vmsave-Reply-To': {
    required: false,
    description:
      'Subject the scheduler publishes the admission answer (AdmissionReply) to, once it has admitted or rejected the ' +
      "request. With vmsave's NATS roles it must be under the requester's own inbox prefix `_INBOX.<user>.` " +
      '(`_INBOX.client.` for the client role: the scheduler may publish only to `_INBOX.…`, and each user may ' +
      "subscribe only below its own prefix). A header, because the message's own NATS reply subject carries " +
      "JetStream's PubAck.",
  },
};

export const eventHeaders: Record<string, HeaderInfo> = {
  'Nats-Msg-Id': { required: true, description: 'The event id (`eventId`): JetStream drops a re-published copy of the same event.' },
};

export interface MessageInfo {
  /** Key in components.messages and name of the standalone schema file. */
  name: string;
  title: string;
  summary: string;
  description?: string;
  schema: z.ZodType;
  headers?: Record<string, HeaderInfo>;
  /** Runtime expression of the correlation id, if any. */
  correlationId?: { location: string; description: string };
  examples: { name: string; summary: string; payload: unknown; headers?: Record<string, string> }[];
}

export interface ChannelInfo {
  id: string;
  /** Address with `{param}` placeholders, or null for a dynamic reply subject. */
  address: string | null;
  /** Parameter values that fill `address`, and the subject the contracts package builds for them. */
  sample?: { values: Record<string, string>; subject: string };
  /** The contracts' message definition whose subject (or wildcard) this channel is. */
  definition?: { subject: string };
  title: string;
  description: string;
  audience: Audience;
  transport: { kind: 'jetstream'; stream: StreamDefinition } | { kind: 'core' } | { kind: 'reply' };
  /** Who publishes and who consumes, by service (`client` = another system or the CLI). */
  publishers: string[];
  consumers: string[];
  messages: MessageInfo[];
}

export interface OperationInfo {
  id: string;
  /** From vmsave's point of view: `receive` = vmsave consumes it, `send` = vmsave publishes it. */
  action: 'send' | 'receive';
  channel: string;
  title: string;
  summary: string;
  description: string;
  audience: Audience;
  reply?: { channel: string; addressLocation?: string; description: string };
}

const reqIdCorrelation = { location: '$message.payload#/requestId', description: "The request id: also the command's Nats-Msg-Id." };

export const saveRequestMessage: MessageInfo = {
  name: 'SaveRequest',
  title: 'Save request',
  summary: "Save a VM's memory state to an image on its host.",
  description: 'Every field but `requestId` and `vm` has a default. The job id is `s-` + the first 20 hex digits of sha256("save\\0" + requestId).',
  schema: SaveRequest,
  headers: commandHeaders,
  correlationId: reqIdCorrelation,
  examples: [
    {
      name: 'evacuate',
      summary: 'A control plane evacuating host-a: sparse, four channels, quit the VM afterwards.',
      payload: ex.saveRequestExample,
      headers: { 'Nats-Msg-Id': ex.exampleIds.saveRequestId, 'Vmsave-Reply-To': '_INBOX.client.Xq3hZk2c1Yp8' },
    },
    {
      name: 'minimal',
      summary: 'A hibernation cron: only the required fields.',
      payload: ex.minimalSaveRequestExample,
      headers: { 'Nats-Msg-Id': ex.minimalSaveRequestExample.requestId },
    },
  ],
};

export const restoreRequestMessage: MessageInfo = {
  name: 'RestoreRequest',
  title: 'Restore request',
  summary: 'Start a VM again from a saved image.',
  description:
    'The job id is `r-` + the first 20 hex digits of sha256("restore\\0" + requestId). Without `host`, the host that wrote the image (known from the event log) is used.',
  schema: RestoreRequest,
  headers: commandHeaders,
  correlationId: reqIdCorrelation,
  examples: [
    {
      name: 'restore',
      summary: 'Restore the image the evacuation wrote, and run the VM.',
      payload: ex.restoreRequestExample,
      headers: { 'Nats-Msg-Id': ex.exampleIds.restoreRequestId, 'Vmsave-Reply-To': '_INBOX.client.Xq3hZk2c1Yp9' },
    },
  ],
};

export const cancelRequestMessage: MessageInfo = {
  name: 'CancelRequest',
  title: 'Cancel request',
  summary: 'Cancel a queued or running job.',
  schema: CancelRequest,
  headers: commandHeaders,
  correlationId: reqIdCorrelation,
  examples: [{ name: 'cancel', summary: 'Cancel the evacuation save.', payload: ex.cancelRequestExample, headers: { 'Nats-Msg-Id': ex.exampleIds.cancelRequestId } }],
};

export const drainRequestMessage: MessageInfo = {
  name: 'DrainRequest',
  title: 'Drain request',
  summary: 'Save every VM of a host (and with `to`, restore each on the target); one drain job `d-…` in the log.',
  schema: DrainRequest,
  headers: commandHeaders,
  correlationId: reqIdCorrelation,
  examples: [{ name: 'drain', summary: 'Empty host-a onto any host.', payload: ex.drainRequestExample, headers: { 'Nats-Msg-Id': ex.drainRequestId } }],
};

export const admissionReplyMessage: MessageInfo = {
  name: 'AdmissionReply',
  title: 'Admission answer',
  summary: "The scheduler's answer to a command that carried a `Vmsave-Reply-To` header.",
  description:
    '`accepted`: the job exists (`duplicate: true` when it existed before this publish). `rejected`: the rule broken, ' +
    'the field it concerns and a sentence; a rejected save or restore also has a SaveRejected / RestoreRejected event. ' +
    'A payload that fails the schema is answered with `rule: "schema"`. Exactly one answer per command the scheduler ' +
    'receives; none for a publish JetStream dropped as a duplicate.',
  schema: AdmissionReply,
  correlationId: { location: '$message.payload#/requestId', description: 'The request id of the command answered.' },
  examples: [
    { name: 'accepted', summary: 'A new job.', payload: ex.admissionAcceptedExample },
    { name: 'rejected', summary: 'No host announces the VM.', payload: ex.admissionRejectedExample },
  ],
};

const eventSummaries: Record<JobEventType, string> = {
  SaveRequested: 'The scheduler admitted a save request (first event of a save job).',
  SaveRejected: 'The save request broke an admission rule (or its schema); the job ends here.',
  SaveScheduled: 'The save was handed to a host (per attempt).',
  SaveStarted: 'The executor began the save (image path, format, RAM size).',
  SaveCompleted: 'The image is written and synced; the verifier checks it next.',
  SaveFailed:
    'The attempt failed. With `retryable: true` a SaveRetrying follows, or, when no attempts remain, this failure again with `retryable: false`; with `retryable: false` the job ends here.',
  SaveRetrying: 'The scheduler will try again after `delayMs`.',
  SaveCancelRequested: 'Someone asked to cancel the job.',
  SaveCancelled: 'The job was cancelled; it ends here.',
  ImageVerified:
    "Every verification check of the image passed (or warned): the save job ends here, successfully. A sealed image's `seal` summary is carried, with `content: 'state'` (its device state was checked against the seal).",
  ImageRejected:
    "A verification check failed: the save job ends here, with an unusable image. With `scrub: true` the verifier's content scrub found a verified image damaged since (check `seal.ram` or `seal.state`): the job moves from verified to rejected.",
  VerificationOverdue:
    "No verdict came for a completed save within the scheduler's `VMSAVE_VERDICT_TIMEOUT_MS`: `notice: 1` asks the verifier to verify it again (it reacts as to SaveCompleted), `notice: 2` (after as long again) raises it. The job stays `completed`; a later verdict still ends it.",
  ImageDeleted:
    "The executor of the image's host deleted a final save's image file, as its retention policy chose (`rule`: `keep-last` or `max-age`; `bytes` freed). The job keeps its status and records `imageDeleted`: the image is no longer one to restore.",
  ImageAdopted:
    "The executor of a host adopted an image file of its image directory that the log did not know (`vmsave images adopt`), after reading its header and descriptor: the first event of a new save job (`a-…`, attempt 1, fencing token 0), completed at once by the executor's `SaveCompleted`, so the verifier verifies it like any save.",
  ImageReplicated:
    "The executor of the image's host copied a verified save's image into the bus's object store (`bucket`, `object`): only its data extents (`bytesMoved`), with a manifest written last. The job keeps its status and records `replicated`: the image can be restored on any host.",
  ImageReplicationFailed: "The upload of a verified save's image did not finish (`code`, `reason`); no object that looks complete is left. The job keeps its verdict.",
  ImageFetched: 'Before a restore, the executor of the target host downloaded the image from the object store into its image directory (extents and seal checked).',
  ImageFetchFailed: 'The download before a restore failed (`code`: missing, incomplete, checksum or seal); no file is left under the image name. A RestoreFailed follows.',
  RestoreRequested: 'The scheduler admitted a restore request.',
  RestoreRejected: 'The restore request broke an admission rule; the job ends here.',
  RestoreScheduled: 'The restore was handed to a host (per attempt).',
  RestoreStarted: 'The executor started QEMU to restore into.',
  RestoreCompleted: 'The VM runs (or is paused) from the image: the restore job ends here, successfully.',
  RestoreFailed:
    'The attempt failed. With `retryable: true` a RestoreRetrying follows, or, when no attempts remain, this failure again with `retryable: false`; with `retryable: false` the job ends here.',
  RestoreRetrying: 'The scheduler will try again after `delayMs`.',
  RestoreCancelRequested: 'Someone asked to cancel the job.',
  RestoreCancelled: 'The job was cancelled; it ends here.',
  DrainRequested: "The scheduler admitted a drain (job `d-…`, first event): the host's VMs from its latest announcement.",
  DrainVmUpdated: 'One VM of a drain moved on (queued, saving, saved, restoring, restored, failed, cancelled), with its child save and restore job ids.',
  DrainCancelRequested: 'Someone asked to cancel the drain (a cancel request naming its `d-…` id): its child jobs are cancelled, no restore is asked from here on.',
  DrainCompleted: 'Every VM of the drain reached a final phase; `outcome` names each (a VM that failed to save is left running on its host).',
  DrainFailed: 'The drain could not run (e.g. its host is unknown); `outcome` names each VM as far as it went.',
  DrainCancelled: 'The drain was cancelled (`vmsave.cmd.cancel` with its id): its child jobs were cancelled; `outcome` names each VM.',
};

export const eventMessages: MessageInfo[] = JobEvent.options.map((schema) => {
  const type = schema.shape.type.value as JobEventType;
  return {
    name: type,
    title: type,
    summary: eventSummaries[type],
    description: `Published on \`vmsave.evt.<jobId>.${type}\`. The envelope (eventId, type, schemaVersion, jobId, at, source) is the same for every event; \`data\` is specific to the type.`,
    schema,
    headers: eventHeaders,
    correlationId: { location: '$message.payload#/jobId', description: 'The job the event belongs to.' },
    examples: [{ name: type, summary: eventSummaries[type], payload: ex.eventExamples[type], headers: { 'Nats-Msg-Id': String(ex.eventExamples[type].eventId) } }],
  };
});

/** Schema files that are not a single channel message (unions a reader may prefer). */
export const extraSchemas: { name: string; title: string; description: string; schema: z.ZodType }[] = [
  { name: 'JobEvent', title: 'Any job event', description: 'Any event of the log (`vmsave.evt.>`): one of the event types, told apart by `type`.', schema: JobEvent },
];

const msg = (name: string, title: string, summary: string, schema: z.ZodType, payload: unknown, description?: string): MessageInfo => ({
  name,
  title,
  summary,
  schema,
  description,
  examples: [{ name, summary, payload }],
});

export const channels: ChannelInfo[] = [
  {
    id: 'saveRequests',
    address: subjects.cmd.save,
    definition: messages.saveRequest,
    title: 'Save requests',
    description: 'Commands to save a VM. JetStream stream VMSAVE_CMD (work queue, deduplicated by Nats-Msg-Id): publish with a JetStream client to get a PubAck.',
    audience: 'public',
    transport: { kind: 'jetstream', stream: streams.commands },
    publishers: ['client'],
    consumers: ['scheduler'],
    messages: [saveRequestMessage],
  },
  {
    id: 'restoreRequests',
    address: subjects.cmd.restore,
    definition: messages.restoreRequest,
    title: 'Restore requests',
    description: 'Commands to restore a VM from an image. Stream VMSAVE_CMD, as save requests.',
    audience: 'public',
    transport: { kind: 'jetstream', stream: streams.commands },
    publishers: ['client'],
    consumers: ['scheduler'],
    messages: [restoreRequestMessage],
  },
  {
    id: 'cancelRequests',
    address: subjects.cmd.cancel,
    definition: messages.cancelRequest,
    title: 'Cancel requests',
    description: 'Commands to cancel a job. Stream VMSAVE_CMD, as save requests.',
    audience: 'public',
    transport: { kind: 'jetstream', stream: streams.commands },
    publishers: ['client'],
    consumers: ['scheduler'],
    messages: [cancelRequestMessage],
  },
  // Since bus API 1.1: the partitioned command subjects (several active schedulers, docs/scheduler.md). The bare ones above stay accepted.
  {
    id: 'saveRequestsPartitioned',
    address: 'vmsave.cmd.save.{partition}',
    sample: { values: { partition: '07' }, subject: subjects.cmd.partitioned('save', 7) },
    definition: messages.saveRequestPartitioned,
    title: 'Save requests (partitioned)',
    description:
      'Save requests on the partition of their VM (`partitionOf(vm)`, two digits): the scheduler owning that partition takes them directly. Same message, stream and deduplication as `vmsave.cmd.save`; preferred since bus API 1.1 (the bare subject is forwarded).',
    audience: 'public',
    transport: { kind: 'jetstream', stream: streams.commands },
    publishers: ['client', 'scheduler', 'executor'],
    consumers: ['scheduler'],
    messages: [saveRequestMessage],
  },
  {
    id: 'restoreRequestsPartitioned',
    address: 'vmsave.cmd.restore.{partition}',
    sample: { values: { partition: '07' }, subject: subjects.cmd.partitioned('restore', 7) },
    definition: messages.restoreRequestPartitioned,
    title: 'Restore requests (partitioned)',
    description: 'Restore requests on the partition of their image path as requested (`partitionOf(image)`). As `vmsave.cmd.restore` otherwise.',
    audience: 'public',
    transport: { kind: 'jetstream', stream: streams.commands },
    publishers: ['client', 'scheduler', 'executor'],
    consumers: ['scheduler'],
    messages: [restoreRequestMessage],
  },
  {
    id: 'cancelRequestsPartitioned',
    address: 'vmsave.cmd.cancel.{partition}',
    sample: { values: { partition: '07' }, subject: subjects.cmd.partitioned('cancel', 7) },
    definition: messages.cancelRequestPartitioned,
    title: 'Cancel requests (partitioned)',
    description:
      "Cancel requests on the partition of the job (its VM's, read from the job's first event). A cancel on another partition, or of a drain (`d-…`, bare subject only), is forwarded. As `vmsave.cmd.cancel` otherwise.",
    audience: 'public',
    transport: { kind: 'jetstream', stream: streams.commands },
    publishers: ['client', 'scheduler', 'executor'],
    consumers: ['scheduler'],
    messages: [cancelRequestMessage],
  },
  {
    id: 'drainRequests',
    address: subjects.cmd.drain,
    definition: messages.drainRequest,
    title: 'Drain requests',
    description:
      'Commands to drain a host: the scheduler saves each of its VMs through ordinary save requests (`drainId` set) and, with `to`, restores them. Stream VMSAVE_CMD, as save requests; cancel a drain with a cancel request naming its `d-…` id.',
    audience: 'public',
    transport: { kind: 'jetstream', stream: streams.commands },
    publishers: ['client'],
    consumers: ['scheduler'],
    messages: [drainRequestMessage],
  },
  {
    id: 'admissionReplies',
    address: null,
    title: 'Admission answers',
    description: 'The subject a command named in its `Vmsave-Reply-To` header (core NATS, not stored). Subscribe before publishing the command.',
    audience: 'public',
    transport: { kind: 'reply' },
    publishers: ['scheduler'],
    consumers: ['client'],
    messages: [admissionReplyMessage],
  },
  {
    id: 'jobEvents',
    address: `vmsave.evt.{jobId}.{type}`,
    sample: { values: { jobId: ex.saveJobId, type: 'SaveStarted' }, subject: subjects.evt(ex.saveJobId, 'SaveStarted') },
    definition: messages.event,
    title: 'The event log',
    description:
      'Every fact about every job, in JetStream stream VMSAVE_EVT (limits retention, file storage, `allow_direct`). ' +
      'Clients read it without any JetStream consumer (the client role may create none): history by direct get, a request to ' +
      '`$JS.API.DIRECT.GET.VMSAVE_EVT` with body `{"seq":N}` or `{"next_by_subj":"vmsave.evt.<jobId>.>","seq":N}` (filters ' +
      '`vmsave.evt.<jobId>.>` one job, `vmsave.evt.*.<type>` one type, `vmsave.evt.>` everything), answered with one stored ' +
      'event and its place in the headers `Nats-Sequence` and `Nats-Subject`, or status 404 when nothing more is stored; live ' +
      'by a core subscription on the same filter, opened before the first read and used only as a wake-up to read on from ' +
      "the last sequence. A job's state is the fold of its events in stream order.",
    audience: 'public',
    transport: { kind: 'jetstream', stream: streams.events },
    publishers: ['scheduler', 'executor', 'verifier'],
    consumers: ['scheduler', 'verifier', 'dashboard', 'client'],
    messages: eventMessages,
  },
  {
    id: 'progress',
    address: `vmsave.progress.{jobId}`,
    sample: { values: { jobId: ex.saveJobId }, subject: subjects.progress(ex.saveJobId) },
    definition: messages.progress,
    title: 'Progress samples',
    description: 'Progress of a running save or restore, at most every 200 ms while QEMU reports progress (core NATS: not stored, lost when nobody listens).',
    audience: 'public',
    transport: { kind: 'core' },
    publishers: ['executor'],
    consumers: ['dashboard', 'client'],
    messages: [msg('ProgressSample', 'Progress sample', 'Bytes transferred so far, throughput and ETA of one job.', ProgressSample, ex.progressExample)],
  },
  {
    id: 'hostAnnouncements',
    address: `vmsave.host.{host}`,
    sample: { values: { host: ex.exampleIds.host }, subject: subjects.host(ex.exampleIds.host) },
    definition: messages.hostAnnouncement,
    title: 'Host announcements',
    description:
      'Each executor\'s latest announcement (stream VMSAVE_HOSTS keeps one per host): its QEMU, free space and VMs. The client role may read it without a consumer, e.g. to list VMs: direct get `{"last_by_subj":"vmsave.host.<host>"}` on `$JS.API.DIRECT.GET.VMSAVE_HOSTS`.',
    audience: 'public',
    transport: { kind: 'jetstream', stream: streams.hosts },
    publishers: ['executor'],
    consumers: ['scheduler', 'verifier', 'dashboard', 'client'],
    messages: [msg('HostAnnouncement', 'Host announcement', 'An executor host, its QEMU capabilities and its VMs.', HostAnnouncement, ex.hostAnnouncementExample)],
  },
  {
    id: 'work',
    address: `vmsave.work.{host}`,
    sample: { values: { host: ex.exampleIds.host }, subject: subjects.work(ex.exampleIds.host) },
    definition: messages.work,
    title: 'Work for one host',
    description: 'Internal: what the scheduler hands one executor (stream VMSAVE_WORK, work queue). Clients can neither publish nor read it.',
    audience: 'internal',
    transport: { kind: 'jetstream', stream: streams.work },
    publishers: ['scheduler'],
    consumers: ['executor'],
    messages: [msg('WorkItem', 'Work item', 'A save or restore attempt placed on a host.', WorkItem, ex.workExample)],
  },
  {
    id: 'heartbeats',
    address: `vmsave.hb.{host}`,
    sample: { values: { host: ex.exampleIds.host }, subject: subjects.heartbeat(ex.exampleIds.host) },
    definition: messages.heartbeat,
    title: 'Executor heartbeats',
    description: 'Internal: every few seconds while an executor lives, with its in-flight jobs (core NATS).',
    audience: 'internal',
    transport: { kind: 'core' },
    publishers: ['executor'],
    consumers: ['scheduler', 'dashboard'],
    messages: [msg('Heartbeat', 'Heartbeat', 'An executor is alive and working on these jobs.', Heartbeat, ex.heartbeatExample)],
  },
  {
    id: 'control',
    address: `vmsave.ctl.{host}`,
    sample: { values: { host: ex.exampleIds.host }, subject: subjects.control(ex.exampleIds.host) },
    definition: messages.controlRequest,
    title: 'Control requests to one executor',
    description:
      "Core NATS request/reply to one executor: from the scheduler, cancel a running job; from a client (`vmsave images prune`), apply a retention policy to the host's images (`prune`, `dryRun` answers the plan and deletes nothing).",
    audience: 'internal',
    transport: { kind: 'core' },
    publishers: ['scheduler', 'client'],
    consumers: ['executor'],
    messages: [msg('ControlRequest', 'Control request', 'Ask an executor to cancel a running job, or to prune its images.', ControlRequest, ex.controlRequestExample)],
  },
  {
    id: 'controlReplies',
    address: null,
    title: 'Control answers',
    description: 'Internal: the NATS reply subject of a control request.',
    audience: 'internal',
    transport: { kind: 'reply' },
    publishers: ['executor'],
    consumers: ['scheduler'],
    messages: [msg('ControlReply', 'Control answer', 'Whether the executor did what was asked.', ControlReply, ex.controlReplyExample)],
  },
  {
    id: 'deadLetters',
    address: `vmsave.dlq.{service}`,
    sample: { values: { service: 'scheduler' }, subject: subjects.dlq('scheduler') },
    definition: messages.deadLetter,
    title: 'Dead letters',
    description:
      'Messages a vmsave consumer refused (e.g. a command that fails its schema), with the reason; stream VMSAVE_DLQ, kept 30 days. For operators: the client role cannot read it (a refused command is answered on Vmsave-Reply-To and, when its requestId is readable, gets a SaveRejected/RestoreRejected event).',
    audience: 'internal',
    transport: { kind: 'jetstream', stream: streams.deadLetters },
    publishers: ['scheduler', 'executor', 'verifier', 'dashboard'],
    consumers: ['operators'],
    messages: [msg('DeadLetter', 'Dead letter', 'A refused message and why.', DeadLetter, ex.deadLetterExample)],
  },
];

export const operations: OperationInfo[] = [
  {
    id: 'receiveSaveRequest',
    action: 'receive',
    channel: 'saveRequests',
    title: 'vmsave receives a save request',
    summary: 'A client publishes a save request; the scheduler admits or rejects it.',
    description: "The publisher gets JetStream's PubAck on the publish's own reply subject, and, when it set `Vmsave-Reply-To`, one AdmissionReply there.",
    audience: 'public',
    reply: { channel: 'admissionReplies', addressLocation: '$message.header#/Vmsave-Reply-To', description: 'Sent only when the command carries the header.' },
  },
  {
    id: 'receiveRestoreRequest',
    action: 'receive',
    channel: 'restoreRequests',
    title: 'vmsave receives a restore request',
    summary: 'A client publishes a restore request; the scheduler admits or rejects it.',
    description: 'As for save requests.',
    audience: 'public',
    reply: { channel: 'admissionReplies', addressLocation: '$message.header#/Vmsave-Reply-To', description: 'Sent only when the command carries the header.' },
  },
  {
    id: 'receiveCancelRequest',
    action: 'receive',
    channel: 'cancelRequests',
    title: 'vmsave receives a cancel request',
    summary: 'A client asks to cancel a job; the answer is `accepted` or `rejected` with the rule (e.g. `job-unknown`).',
    description: "As for save requests; the AdmissionReply's `jobId` is the job to cancel.",
    audience: 'public',
    reply: { channel: 'admissionReplies', addressLocation: '$message.header#/Vmsave-Reply-To', description: 'Sent only when the command carries the header.' },
  },
  ...(['save', 'restore', 'cancel'] as const).map(
    (kind): OperationInfo => ({
      id: `receive${kind[0]!.toUpperCase()}${kind.slice(1)}RequestPartitioned`,
      action: 'receive',
      channel: `${kind}RequestsPartitioned`,
      title: `vmsave receives a ${kind} request on its VM partition`,
      summary: `As on \`vmsave.cmd.${kind}\`, handled by the scheduler owning the partition.`,
      description: 'As for save requests.',
      audience: 'public',
      reply: { channel: 'admissionReplies', addressLocation: '$message.header#/Vmsave-Reply-To', description: 'Sent only when the command carries the header.' },
    }),
  ),
  {
    id: 'receiveDrainRequest',
    action: 'receive',
    channel: 'drainRequests',
    title: 'vmsave receives a drain request',
    summary: 'A client asks to drain a host; the answer is `accepted` with the drain job id, or `rejected` naming the rule and field.',
    description: 'As for save requests.',
    audience: 'public',
    reply: { channel: 'admissionReplies', addressLocation: '$message.header#/Vmsave-Reply-To', description: 'Sent only when the command carries the header.' },
  },
  {
    id: 'sendJobEvent',
    action: 'send',
    channel: 'jobEvents',
    title: 'vmsave appends a job event',
    summary: 'The scheduler, the executors and the verifier append facts to the event log.',
    description:
      'Clients read it by direct get (`$JS.API.DIRECT.GET.VMSAVE_EVT`, one stored event per request, 404 at the end) and wake up on a ' +
      'core subscription to `vmsave.evt.>` (or a narrower filter); the client role may create no JetStream consumer, not even an ephemeral one.',
    audience: 'public',
  },
  {
    id: 'sendProgress',
    action: 'send',
    channel: 'progress',
    title: 'vmsave publishes progress',
    summary: 'Executors publish progress samples of running jobs.',
    description: 'Subscribe with core NATS to `vmsave.progress.<jobId>`.',
    audience: 'public',
  },
  {
    id: 'sendHostAnnouncement',
    action: 'send',
    channel: 'hostAnnouncements',
    title: 'vmsave announces a host',
    summary: 'Executors announce themselves and their VMs.',
    description: 'Read stream VMSAVE_HOSTS (last message per subject) to list hosts and VMs.',
    audience: 'public',
  },
  {
    id: 'sendWork',
    action: 'send',
    channel: 'work',
    title: 'scheduler → executor: work',
    summary: 'Internal.',
    description: "The scheduler publishes; the same host's executor consumes (receiveWork).",
    audience: 'internal',
  },
  {
    id: 'receiveWork',
    action: 'receive',
    channel: 'work',
    title: 'executor takes work',
    summary: 'Internal.',
    description: 'Durable consumer `executor-<host>` on VMSAVE_WORK.',
    audience: 'internal',
  },
  {
    id: 'sendHeartbeat',
    action: 'send',
    channel: 'heartbeats',
    title: 'executor heartbeat',
    summary: 'Internal.',
    description: 'Consumed by the scheduler (receiveHeartbeat) to notice a lost executor.',
    audience: 'internal',
  },
  {
    id: 'receiveHeartbeat',
    action: 'receive',
    channel: 'heartbeats',
    title: 'scheduler watches heartbeats',
    summary: 'Internal.',
    description: 'A job whose executor stops sending heartbeats is failed or retried.',
    audience: 'internal',
  },
  {
    id: 'sendControlRequest',
    action: 'send',
    channel: 'control',
    title: 'scheduler asks an executor to cancel',
    summary: 'Internal.',
    description: "Core NATS request; the executor answers on the request's reply subject.",
    audience: 'internal',
    reply: { channel: 'controlReplies', description: 'On the NATS reply subject of the request (core request/reply).' },
  },
  {
    id: 'receiveControlRequest',
    action: 'receive',
    channel: 'control',
    title: 'executor handles a control request',
    summary: 'Internal.',
    description: 'The executor cancels the job and answers.',
    audience: 'internal',
    reply: { channel: 'controlReplies', description: 'On the NATS reply subject of the request (core request/reply).' },
  },
  {
    id: 'sendDeadLetter',
    action: 'send',
    channel: 'deadLetters',
    title: 'a consumer parks a refused message',
    summary: 'Internal, for operators.',
    description: 'Any vmsave consumer that refuses a message publishes it here with the reason.',
    audience: 'internal',
  },
];

/** Every message of every channel, plus the extra union schemas: one standalone schema file each. */
export function allMessages(): MessageInfo[] {
  // A message carried on two channels (a command on its bare and its partitioned subject) once.
  return [...new Set(channels.flatMap((c) => c.messages))];
}

export { streams };
