/**
 * Snapshots of the scheduler's folded state (every job's `JobState` and the restores leased by
 * image), with the event-log sequence they cover, kept in Redis under one key. A starting
 * scheduler loads the snapshot and replays only the events after its sequence.
 *
 * Redis rather than JetStream KV: the scheduler already holds a Redis connection (its leases), a
 * snapshot is one value far above NATS's default 1 MiB message limit (KV would need chunking or an
 * object store), and one `SET` replaces it atomically. The value is plain JSON (about 600 bytes a
 * job): gunzip cost more than half of a start from a snapshot (1.1 s of 2.1 s at 200,000 jobs), so
 * snapshots are not compressed unless larger than `GZIP_ABOVE` (Redis refuses values above 512 MiB,
 * about 800,000 jobs plain; gzip'd is ~15 times smaller, compressed off the event loop); a gzip'd
 * one is read either way.
 *
 * Taking one does not stop the scheduler: job states are never changed in place (`evolve` returns
 * a new object), so a copy of the references is a consistent view, and it is serialised a slice
 * at a time between turns of the event loop (`captureSnapshotSliced`).
 *
 * A snapshot is taken only when the state is exactly the fold of the log up to a sequence
 * (`SchedulerState.quiescentAt`): no own event published and not yet folded, no own event whose
 * echo the follower has not read, no log event waiting to be applied.
 */
import { gunzip, gzip } from 'node:zlib';
import { promisify } from 'node:util';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { streams } from '@vmsave/contracts';
import { readLog, type Bus, type Logger } from '@vmsave/bus';
import type { JobState } from '@vmsave/jobs';
import type { SchedulerState } from './state.ts';

const gunzipAsync = promisify(gunzip);
const gzipAsync = promisify(gzip);

/** A snapshot larger than this is gzip'd (Redis's limit for one value is 512 MiB). */
export const GZIP_ABOVE = 256 * 2 ** 20;

/** Jobs serialised per turn of the event loop while a snapshot is taken. */
const SLICE_JOBS = 2000;

/** A gzip stream starts with these two bytes (a snapshot written before they were plain JSON). */
const isGzip = (b: Buffer): boolean => b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b;

/** Bumped whenever what a snapshot holds, or what `JobState` means, changes: other versions are ignored. */
export const SNAPSHOT_VERSION = 1;

export const snapshotKey = (prefix: string): string => `${prefix}:scheduler:snapshot`;

export interface Snapshot {
  v: number;
  /** The events stream's creation time: a snapshot of another (recreated) stream is ignored. */
  stream: string;
  /** Last log sequence folded into it. */
  seq: number;
  at: string;
  jobs: JobState[];
  imageOnly: string[];
}

const Envelope = z.object({
  v: z.number().int(),
  stream: z.string(),
  seq: z.number().int().min(0),
  at: z.string(),
  jobs: z.array(z.unknown()),
  imageOnly: z.array(z.string()),
});

/** The state as a snapshot at `seq` (synchronous, so the copy is consistent). */
export function captureSnapshot(state: SchedulerState, seq: number, stream: string): string {
  const jobs: JobState[] = [...state.jobs.values()];
  return JSON.stringify({ v: SNAPSHOT_VERSION, stream, seq, at: new Date().toISOString(), jobs, imageOnly: [...state.imageOnly] } satisfies Snapshot);
}

/**
 * The same snapshot as `captureSnapshot`, as bytes, without holding the event loop: the job
 * states (immutable objects) and the image-only set are copied synchronously, at `seq`; then
 * `SLICE_JOBS` jobs are serialised per turn. Later changes to the state do not reach it.
 */
export async function captureSnapshotSliced(state: SchedulerState, seq: number, stream: string): Promise<Buffer> {
  const jobs: JobState[] = [...state.jobs.values()];
  const imageOnly = [...state.imageOnly];
  const head = JSON.stringify({ v: SNAPSHOT_VERSION, stream, seq, at: new Date().toISOString(), imageOnly });
  const parts: Buffer[] = [Buffer.from(`${head.slice(0, -1)},"jobs":[`)];
  for (let i = 0; i < jobs.length; i += SLICE_JOBS) {
    if (i > 0) await new Promise((r) => setImmediate(r));
    const slice = JSON.stringify(jobs.slice(i, i + SLICE_JOBS));
    parts.push(Buffer.from(i > 0 ? `,${slice.slice(1, -1)}` : slice.slice(1, -1)));
  }
  parts.push(Buffer.from(']}'));
  return Buffer.concat(parts);
}

/** Parse a stored snapshot; a reason string when it is unreadable or of another version. */
export function parseSnapshot(json: string): Snapshot | string {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (err) {
    return `not JSON: ${(err as Error).message}`;
  }
  const v = (raw as { v?: unknown })?.v;
  if (v !== SNAPSHOT_VERSION) return `version ${String(v)}, this scheduler reads version ${SNAPSHOT_VERSION}`;
  const env = Envelope.safeParse(raw);
  if (!env.success) return `malformed: ${env.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`;
  for (const [i, j] of env.data.jobs.entries()) {
    const s = j as Partial<JobState> | null;
    if (typeof s !== 'object' || s === null || typeof s.jobId !== 'string' || typeof s.status !== 'string' || typeof s.version !== 'number')
      return `malformed: jobs.${i}: not a job state`;
  }
  return env.data as Snapshot;
}

/** Put a snapshot's jobs into an empty state (through `put`, so every index follows). */
export function restoreSnapshot(state: SchedulerState, snap: Snapshot): void {
  for (const id of snap.imageOnly) state.imageOnly.add(id);
  for (const s of snap.jobs) state.put(s.jobId!, s);
}

/** Store a snapshot (plain JSON) under its key, replacing the previous one; returns its size in bytes. */
export async function writeSnapshot(redis: Redis, key: string, json: string | Buffer): Promise<number> {
  const buf = typeof json === 'string' ? Buffer.from(json) : json;
  await redis.set(key, buf);
  return buf.length;
}

/** The events stream's identity (creation time), first and last sequence. */
export async function streamInfo(bus: Bus): Promise<{ created: string; firstSeq: number; lastSeq: number }> {
  const info = await bus.jsm.streams.info(streams.events.name);
  return { created: String(info.created), firstSeq: info.state.first_seq, lastSeq: info.state.last_seq };
}

/**
 * Events a start cannot fold because the log no longer holds them (a retention limit or a purge
 * removed them): those after `coveredSeq` (the snapshot's sequence, 0 without one) and before the
 * stream's first. Undefined when nothing is missing.
 */
export function discardedGap(coveredSeq: number, firstSeq: number): { from: number; to: number } | undefined {
  return firstSeq > coveredSeq + 1 ? { from: coveredSeq + 1, to: firstSeq - 1 } : undefined;
}

export interface SnapshotDeps {
  bus: Bus;
  redis: Redis;
  state: SchedulerState;
  log: Logger;
  prefix: string;
  /** Take one after this many log events (0: never periodically). */
  every: number;
  /** …or this long after the last one, if any event came since. */
  intervalMs: number;
  /** Snapshots larger than this are gzip'd (default `GZIP_ABOVE`). */
  gzipAboveBytes?: number;
}

/** Loads the snapshot at start, writes one periodically and on a clean stop. */
export class Snapshots {
  private readonly key: string;
  private stream = '';
  private takenSeq = 0;
  private takenAtMs = Date.now();
  private writing: Promise<void> | undefined;

  constructor(private readonly d: SnapshotDeps) {
    this.key = snapshotKey(d.prefix);
  }

  /**
   * Load the newest snapshot into the (empty) state; returns the sequence it covers, 0 when there
   * is none usable (unreadable, another version, another stream, ahead of the log: warned, the
   * whole log is replayed).
   */
  async load(): Promise<number> {
    const { redis, log, state } = this.d;
    const info = await streamInfo(this.d.bus);
    this.stream = info.created;
    const buf = await redis.getBuffer(this.key);
    if (!buf) {
      log.info({ key: this.key }, 'no snapshot: replaying the whole event log');
      this.warnGap(0, info.firstSeq);
      return 0;
    }
    let json: string;
    try {
      json = (isGzip(buf) ? await gunzipAsync(buf) : buf).toString();
    } catch (err) {
      log.warn({ key: this.key, err: (err as Error).message }, 'snapshot unreadable (a broken gzip stream): ignored, replaying the whole event log');
      return 0;
    }
    const snap = parseSnapshot(json);
    if (typeof snap === 'string') {
      log.warn({ key: this.key, reason: snap }, `snapshot ignored (${snap}): replaying the whole event log`);
      return 0;
    }
    if (snap.stream !== info.created || snap.seq > info.lastSeq) {
      log.warn(
        { key: this.key, snapshotStream: snap.stream, stream: info.created, seq: snap.seq, lastSeq: info.lastSeq },
        'snapshot of another event stream ignored: replaying the whole event log',
      );
      return 0;
    }
    restoreSnapshot(state, snap);
    this.warnGap(snap.seq, info.firstSeq);
    this.takenSeq = snap.seq;
    log.info({ key: this.key, seq: snap.seq, jobs: snap.jobs.length, takenAt: snap.at, bytes: buf.length }, 'loaded the state snapshot');
    return snap.seq;
  }

  /**
   * Say loudly when the log lost events this start needed: the jobs they concerned keep the state
   * the snapshot (or nothing) had. The retention of the events stream must keep everything after
   * the newest snapshot (`docs/scheduler.md`, "The event log's growth").
   */
  private warnGap(coveredSeq: number, firstSeq: number): void {
    const gap = discardedGap(coveredSeq, firstSeq);
    if (!gap) return;
    this.d.log.error(
      { key: this.key, snapshotSeq: coveredSeq, firstSeq, missingFrom: gap.from, missingTo: gap.to, missing: gap.to - gap.from + 1 },
      'the event log no longer holds events after the snapshot (retention or a purge removed them): jobs they concerned keep their older state',
    );
  }

  /** Called after log events were applied and on each tick: writes a snapshot when one is due and the state allows it. */
  maybe(): void {
    const { state, every, intervalMs } = this.d;
    if (this.writing || every === 0) return;
    const seq = state.quiescentAt();
    if (seq === undefined || seq <= this.takenSeq) return;
    if (seq - this.takenSeq < every && Date.now() - this.takenAtMs < intervalMs) return;
    this.take(seq);
  }

  /**
   * On a clean stop (followers stopped, queued changes settled): read our own events' echoes the
   * follower did not get to, then write a snapshot if the state is an exact prefix of the log.
   */
  async final(): Promise<void> {
    const { state, bus, log } = this.d;
    await this.writing;
    if (this.d.every === 0) return;
    if (state.unfolded.size === 0 && state.logSeq < state.ownMaxSeq) {
      for await (const { seq, event } of readLog(bus, { fromSeq: state.logSeq + 1 })) {
        if (!state.own.delete(event.eventId)) break;
        state.logSeq = seq;
        if (seq >= state.ownMaxSeq) break;
      }
    }
    const seq = state.quiescentAt();
    if (seq === undefined) {
      log.warn({ logSeq: state.logSeq, ownMaxSeq: state.ownMaxSeq, unfolded: state.unfolded.size }, 'no snapshot at stop: the state is not an exact prefix of the log');
      return;
    }
    if (seq > this.takenSeq) this.take(seq);
    await this.writing;
  }

  private take(seq: number): void {
    const { redis, log, state } = this.d;
    const t0 = Date.now();
    const jobs = state.jobs.size;
    let capturedMs = 0;
    this.takenSeq = seq;
    this.takenAtMs = Date.now();
    this.writing = captureSnapshotSliced(state, seq, this.stream)
      .then(async (buf) => {
        capturedMs = Date.now() - t0;
        return writeSnapshot(redis, this.key, buf.length > (this.d.gzipAboveBytes ?? GZIP_ABOVE) ? await gzipAsync(buf, { level: 1 }) : buf);
      })
      .then((bytes) => log.info({ seq, jobs, bytes, capturedMs, totalMs: Date.now() - t0 }, 'state snapshot written'))
      .catch((err) => log.warn({ err: (err as Error).message, seq }, 'writing the state snapshot failed (the next one is tried later)'))
      .finally(() => {
        this.writing = undefined;
      });
  }
}
