import { subjects } from './subjects.ts';

/**
 * JetStream stream definitions, independent of the client library (the bus package maps them).
 * `replicas` is 1 by default and raised by the bus for a cluster.
 */
export interface StreamDefinition {
  name: string;
  subjects: string[];
  retention: 'limits' | 'workqueue';
  storage: 'file' | 'memory';
  /** Deduplication window for `Nats-Msg-Id`, in milliseconds. */
  duplicateWindowMs: number;
  maxMsgsPerSubject?: number;
  maxAgeMs?: number;
  /**
   * Direct get (`$JS.API.DIRECT.GET.<stream>`) answers reads without a consumer: clients and the
   * dashboard read the event log and the host announcements this way (their users may create no
   * consumer, `infra/nats/permissions.ts`).
   */
  allowDirect?: boolean;
  description: string;
}

const DAY = 24 * 3600 * 1000;

export const streams = {
  commands: {
    name: 'VMSAVE_CMD',
    subjects: [subjects.cmd.all],
    retention: 'workqueue',
    storage: 'file',
    duplicateWindowMs: DAY,
    description: 'Save, restore and cancel requests from clients; deduplicated by Nats-Msg-Id (the request id).',
  },
  work: {
    name: 'VMSAVE_WORK',
    subjects: [subjects.workAll],
    retention: 'workqueue',
    storage: 'file',
    duplicateWindowMs: DAY,
    description: 'Scheduled work, one subject per host.',
  },
  events: {
    name: 'VMSAVE_EVT',
    subjects: [subjects.evtAll],
    retention: 'limits',
    storage: 'file',
    duplicateWindowMs: 10 * 60 * 1000,
    allowDirect: true,
    description: 'The event log: every fact about every job.',
  },
  hosts: {
    name: 'VMSAVE_HOSTS',
    subjects: [subjects.hostAll],
    retention: 'limits',
    storage: 'file',
    duplicateWindowMs: 60 * 1000,
    maxMsgsPerSubject: 1,
    // Executors re-announce every few seconds; a host silent for a day is gone from the fleet.
    maxAgeMs: DAY,
    allowDirect: true,
    description: 'The latest announcement of each executor host.',
  },
  deadLetters: {
    name: 'VMSAVE_DLQ',
    subjects: [subjects.dlqAll],
    retention: 'limits',
    storage: 'file',
    duplicateWindowMs: 60 * 1000,
    maxAgeMs: 30 * DAY,
    allowDirect: true,
    description: 'Invalid messages with the reason they were refused.',
  },
} as const satisfies Record<string, StreamDefinition>;

export const allStreams: readonly StreamDefinition[] = Object.values(streams);

/**
 * The JetStream object store bucket replicated images go to (`packages/replica`). Its stream is
 * `OBJ_<bucket>`, its subjects `$O.<bucket>.C.>` (chunks) and `$O.<bucket>.M.>` (object meta);
 * its replicas are the events stream's.
 */
export const imageBucket = {
  name: 'VMSAVE_IMAGES',
  stream: 'OBJ_VMSAVE_IMAGES',
  description: 'Replicated images: data extents and a manifest per image, written last.',
} as const;

/** The subjects of an object store bucket (nats.js `@nats-io/obj` layout). */
export const objectStoreSubjects = (bucket: string) => ({ stream: `OBJ_${bucket}`, chunks: `$O.${bucket}.C.>`, meta: `$O.${bucket}.M.>`, all: `$O.${bucket}.>` });
