import { subjects } from './subjects.ts';
import { z } from 'zod';

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
 * The event log's retention (`VMSAVE_EVENT_MAX_AGE`, docs/operations.md "The event log's
 * growth"): the stream definitions with the events stream's max age set. `undefined` (the
 * setting absent) leaves an existing stream's max age as it is (a new stream keeps every event);
 * `0` keeps every event; `n` drops events older than `n` ms. Two deduplication windows shrink
 * with a max age shorter than them: the log's own (JetStream refuses one longer than the max
 * age) and the commands stream's (a request JetStream drops as a duplicate is answered from its
 * job's events, which must still be in the log; past the window the scheduler answers it from
 * its state, snapshot included).
 */
export function streamsWithEventMaxAge(maxAgeMs: number | undefined): StreamDefinition[] {
  if (maxAgeMs === undefined) return [...allStreams];
  if (!Number.isInteger(maxAgeMs) || (maxAgeMs !== 0 && maxAgeMs < EVENT_MAX_AGE_MIN_MS))
    throw new RangeError(`event log max age: 0 (keep every event) or at least ${EVENT_MAX_AGE_MIN_MS} ms, got ${maxAgeMs}`);
  const capped = (d: StreamDefinition): number => (maxAgeMs === 0 ? d.duplicateWindowMs : Math.min(d.duplicateWindowMs, maxAgeMs));
  return allStreams.map((d) => {
    if (d.name === streams.events.name) return { ...d, maxAgeMs, duplicateWindowMs: capped(d) };
    if (d.name === streams.commands.name) return { ...d, duplicateWindowMs: capped(d) };
    return d;
  });
}

/** The shortest event log max age accepted: one second (tests); an operator's is days. */
export const EVENT_MAX_AGE_MIN_MS = 1000;

const AGE_UNITS_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/**
 * `VMSAVE_EVENT_MAX_AGE`: `30d`, `12h`, `90s`… (at least 1 s), or `none` / `0` to keep every
 * event; the value in ms (0: keep all).
 */
export const EventMaxAge = z
  .string()
  .trim()
  .transform((text, ctx) => {
    if (text === 'none' || text === '0') return 0;
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$/.exec(text);
    const ms = m ? Math.round(Number(m[1]) * AGE_UNITS_MS[m[2] as keyof typeof AGE_UNITS_MS]) : undefined;
    if (ms === undefined || ms < EVENT_MAX_AGE_MIN_MS) {
      ctx.addIssue({ code: 'custom', message: `a duration of at least 1s (90s, 12h, 30d, 2w) or "none" to keep every event, got "${text}"` });
      return z.NEVER;
    }
    return ms;
  });

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
