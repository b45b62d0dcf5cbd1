import type { ChainableCommander, Redis } from 'ioredis';
import { readLog, type Bus, type LoggedEvent, type Logger } from '@vmsave/bus';
import { evolveView, initialState, type JobState } from '@vmsave/jobs';
import { keys } from './keys.ts';

/** A job as the read model holds it: its folded state plus the log position of its last event. */
export interface JobView extends JobState {
  lastSeq: number;
}

export interface LatestImage {
  vm: string;
  jobId: string;
  imagePath: string;
  host?: string;
  format?: string;
  verifiedAt: string;
}

/** Bumped when the projection starts keeping a new index over the stored jobs. */
const INDEX_VERSION = '1';

/**
 * Folds the event log into Redis: job by id, jobs by VM / host (sorted by request time),
 * the latest verified image per VM, and the stream sequence applied (so a restart resumes).
 * Applying an event at or below the stored sequence is a no-op, so replay is idempotent.
 */
export class Projection {
  readonly k;
  constructor(
    private readonly redis: Redis,
    prefix = 'vmsave',
  ) {
    this.k = keys(prefix);
  }

  async appliedSeq(): Promise<number> {
    return Number((await this.redis.get(this.k.appliedSeq)) ?? 0);
  }

  async apply({ seq, event }: LoggedEvent): Promise<boolean> {
    if (seq <= (await this.appliedSeq())) return false;
    const prev = await this.job(event.jobId);
    if (prev && prev.lastSeq >= seq) return false;
    // `evolveView`: a save or restore as `evolve`, a drain's events into its drain row (kind `drain`).
    const next: JobView = { ...evolveView(prev ?? initialState(), event), lastSeq: seq };
    const tx = this.redis.multi();
    await this.stageEvent(tx, prev, next, event);
    this.stageJob(tx, event.jobId, prev, next);
    tx.set(this.k.appliedSeq, String(seq));
    await tx.exec();
    return true;
  }

  /**
   * Apply events in log order in one Redis transaction: one read of the jobs they touch, each job
   * folded in memory through all its events, one write per job. The same writes as `apply` one
   * event at a time (an event that needs a read of its own, the image fallback, is applied alone
   * between two batches). Returns the number of events applied.
   */
  async applyBatch(events: readonly LoggedEvent[]): Promise<number> {
    let applied = 0;
    let from = 0;
    for (let i = 0; i <= events.length; i++) {
      const e = events[i];
      if (e && !this.needsOwnRead(e.event)) continue;
      applied += await this.applyRun(events.slice(from, i));
      if (e) applied += (await this.apply(e)) ? 1 : 0;
      from = i + 1;
    }
    return applied;
  }

  private needsOwnRead(event: LoggedEvent['event']): boolean {
    return (event.type === 'ImageRejected' && event.data.scrub === true) || event.type === 'ImageDeleted';
  }

  private async applyRun(events: readonly LoggedEvent[]): Promise<number> {
    if (events.length === 0) return 0;
    const ids = [...new Set(events.map((e) => e.event.jobId))];
    const [seqRaw, ...raw] = await this.redis.mget(this.k.appliedSeq, ...ids.map((id) => this.k.job(id)));
    const stored = Number(seqRaw ?? 0);
    const first = new Map<string, JobView | undefined>();
    const now = new Map<string, JobView>();
    ids.forEach((id, i) => {
      const r = raw[i];
      const view = r ? (JSON.parse(r) as JobView) : undefined;
      first.set(id, view);
      // The same object: a job no event of the batch changed is not written again.
      if (view) now.set(id, view);
    });
    const tx = this.redis.multi();
    let last = stored;
    let n = 0;
    for (const { seq, event } of events) {
      if (seq <= last) continue;
      const held = now.get(event.jobId);
      if (held && held.lastSeq >= seq) continue;
      // A view folded in this batch goes through JSON first, as a stored one does (keys left
      // undefined dropped), so the stored string is exactly what `apply` would write.
      const prev = held && held !== first.get(event.jobId) ? (JSON.parse(JSON.stringify(held)) as JobView) : held;
      const next: JobView = { ...evolveView(prev ?? initialState(), event), lastSeq: seq };
      await this.stageEvent(tx, prev, next, event);
      now.set(event.jobId, next);
      last = seq;
      n++;
    }
    if (n === 0) return 0;
    for (const [id, next] of now) if (next !== first.get(id)) this.stageJob(tx, id, first.get(id), next);
    tx.set(this.k.appliedSeq, String(last));
    await tx.exec();
    return n;
  }

  /** The job's own key and its indexes: every `jobs:*` sorted set it belongs to, by request time. */
  private stageJob(tx: ChainableCommander, jobId: string, prev: JobView | undefined, next: JobView): void {
    const score = Date.parse(next.requestedAt ?? next.updatedAt ?? '') || 0;
    tx.set(this.k.job(jobId), JSON.stringify(next)).zadd(this.k.jobsAll, score, jobId);
    if (next.vm) tx.zadd(this.k.jobsByVm(next.vm), score, jobId);
    if (next.host) tx.zadd(this.k.jobsByHost(next.host), score, jobId);
    if (next.kind) tx.zadd(this.k.jobsByKind(next.kind), score, jobId);
    if (prev && prev.status !== next.status && prev.status !== 'none') tx.zrem(this.k.jobsByState(prev.status), jobId);
    if (next.status !== 'none') tx.zadd(this.k.jobsByState(next.status), score, jobId);
  }

  /** What one event writes besides its job: the latest and verified images, the image index. */
  private async stageEvent(tx: ChainableCommander, prev: JobView | undefined, next: JobView, event: LoggedEvent['event']): Promise<void> {
    if (event.type === 'ImageVerified' && next.vm) {
      const latest: LatestImage = { vm: next.vm, jobId: event.jobId, imagePath: event.data.imagePath, host: next.host, format: next.format, verifiedAt: event.at };
      tx.set(this.k.latestImage(next.vm), JSON.stringify(latest));
      tx.hset(this.k.verifiedImages(next.vm), event.jobId, JSON.stringify(latest));
    }
    if (((event.type === 'ImageRejected' && event.data.scrub) || (event.type === 'ImageDeleted' && next.imageDeleted && !prev?.imageDeleted)) && next.vm) {
      // The scrub found a verified image damaged, or retention deleted it: it is no longer a VM's
      // image to restore. The latest image falls back on the newest other verified one, or none.
      const fallback = await this.newestVerified(next.vm, event.jobId);
      tx.hdel(this.k.verifiedImages(next.vm), event.jobId);
      if (fallback) tx.set(this.k.latestImage(next.vm), JSON.stringify(fallback));
      else tx.del(this.k.latestImage(next.vm));
    }
    if (event.type === 'SaveCompleted' || event.type === 'ImageVerified' || event.type === 'ImageRejected') {
      tx.hset(this.k.imageIndex, `${next.host ?? ''}\0${next.imagePath ?? ''}`, event.jobId);
    }
  }

  /**
   * Build the state and kind indexes over jobs stored before they existed (once per prefix;
   * the projection keeps them current from then on).
   */
  async ensureIndexes(): Promise<number> {
    if ((await this.redis.get(this.k.indexVersion)) === INDEX_VERSION) return 0;
    let n = 0;
    for (let offset = 0; ; offset += 1000) {
      const ids = await this.redis.zrange(this.k.jobsAll, offset, offset + 999);
      if (ids.length === 0) break;
      const raw = await this.redis.mget(ids.map((id) => this.k.job(id)));
      const tx = this.redis.multi();
      raw.forEach((r, i) => {
        if (!r) return;
        const j = JSON.parse(r) as JobView;
        this.stageJob(tx, ids[i]!, undefined, j);
        n++;
      });
      await tx.exec();
      if (ids.length < 1000) break;
    }
    await this.redis.set(this.k.indexVersion, INDEX_VERSION);
    return n;
  }

  /** The stored views of these jobs, in the same order (undefined for an unknown one). */
  async jobsByIds(ids: readonly string[]): Promise<Array<JobView | undefined>> {
    if (ids.length === 0) return [];
    const raw = await this.redis.mget(ids.map((id) => this.k.job(id)));
    return raw.map((r) => (r ? (JSON.parse(r) as JobView) : undefined));
  }

  async job(jobId: string): Promise<JobView | undefined> {
    const s = await this.redis.get(this.k.job(jobId));
    return s ? (JSON.parse(s) as JobView) : undefined;
  }

  async jobs(opts: { vm?: string; host?: string; limit?: number; offset?: number } = {}): Promise<JobView[]> {
    const index = opts.vm ? this.k.jobsByVm(opts.vm) : opts.host ? this.k.jobsByHost(opts.host) : this.k.jobsAll;
    const offset = opts.offset ?? 0;
    const ids = await this.redis.zrevrange(index, offset, offset + (opts.limit ?? 100) - 1);
    if (ids.length === 0) return [];
    const raw = await this.redis.mget(ids.map((id) => this.k.job(id)));
    return raw.filter((r): r is string => r !== null).map((r) => JSON.parse(r) as JobView);
  }

  /** The newest verified image of `vm` other than job `except`'s. */
  private async newestVerified(vm: string, except: string): Promise<LatestImage | undefined> {
    const all = Object.entries(await this.redis.hgetall(this.k.verifiedImages(vm)))
      .filter(([jobId]) => jobId !== except)
      .map(([, v]) => JSON.parse(v) as LatestImage);
    return all.sort((a, b) => Date.parse(b.verifiedAt) - Date.parse(a.verifiedAt))[0];
  }

  async latestImage(vm: string): Promise<LatestImage | undefined> {
    const s = await this.redis.get(this.k.latestImage(vm));
    return s ? (JSON.parse(s) as LatestImage) : undefined;
  }

  /** The save job that wrote an image (by host and path), if the log knows it. */
  async jobForImage(host: string, imagePath: string): Promise<string | undefined> {
    return (await this.redis.hget(this.k.imageIndex, `${host}\0${imagePath}`)) ?? undefined;
  }

  /**
   * Follow the log from the stored sequence until `signal` aborts. If the read models vanish
   * underneath (Redis flushed or replaced), it notices at the next event and replays the log
   * from the start, so they are rebuilt without a restart.
   */
  async run(
    bus: Bus,
    opts: {
      signal?: AbortSignal;
      log?: Logger;
      onApplied?: (e: LoggedEvent) => void;
      /** After each transaction: its events and how long it took (ms), for benchmarks. */
      onBatch?: (events: number, ms: number) => void;
      batchMax?: number;
      via?: 'direct' | 'consumer';
    } = {},
  ): Promise<void> {
    const built = await this.ensureIndexes();
    if (built) opts.log?.info({ jobs: built }, 'projection: state and kind indexes built over the stored jobs');
    while (!opts.signal?.aborted) {
      const from = (await this.appliedSeq()) + 1;
      opts.log?.info({ from }, from === 1 ? 'projection building from the start of the log' : 'projection resuming');
      // From the start (a new store, or one flushed underneath): the replay writes every index, as `rebuild` does.
      if (from === 1) await this.redis.set(this.k.indexVersion, INDEX_VERSION);
      const ac = new AbortController();
      const stop = () => ac.abort();
      opts.signal?.addEventListener('abort', stop, { once: true });
      let flushed = false;
      let appliedHere = 0;
      try {
        const events = readLog(bus, {
          fromSeq: from,
          follow: true,
          signal: ac.signal,
          via: opts.via,
          onResume: (err, attempt) => opts.log?.warn({ err: (err as Error)?.message, attempt }, 'event log: read reopened'),
          onInvalid: (seq, err) => opts.log?.warn({ seq, err: err.message }, 'skipping invalid event'),
        });
        // Reading and writing overlap: the events read while a transaction is in flight are
        // applied together in the next one, so under a burst the batches grow and the read
        // models keep up (one transaction per batch, not per event).
        const queue: LoggedEvent[] = [];
        const max = opts.batchMax ?? 1000;
        let readerDone = false;
        let wakeWriter: (() => void) | undefined;
        let wakeReader: (() => void) | undefined;
        const writer = (async () => {
          for (;;) {
            if (queue.length === 0) {
              if (readerDone || ac.signal.aborted) return;
              await new Promise<void>((r) => {
                wakeWriter = r;
              });
              wakeWriter = undefined;
              continue;
            }
            const batch = queue.splice(0, max);
            wakeReader?.();
            if (appliedHere > 0 && (await this.redis.exists(this.k.appliedSeq)) === 0) {
              opts.log?.warn({ seq: batch[0]!.seq }, 'read models vanished (Redis flushed?); rebuilding from the log');
              flushed = true;
              ac.abort();
              return;
            }
            const t0 = performance.now();
            await this.applyBatch(batch);
            opts.onBatch?.(batch.length, performance.now() - t0);
            appliedHere += batch.length;
            if (opts.onApplied) for (const e of batch) opts.onApplied(e);
          }
        })();
        void writer.catch(() => ac.abort()).finally(() => wakeReader?.());
        try {
          for await (const e of events) {
            if (flushed) break;
            queue.push(e);
            wakeWriter?.();
            // A long replay reads faster than Redis writes: hold the reader at a few batches ahead.
            while (queue.length >= 4 * max && !ac.signal.aborted) {
              await new Promise<void>((r) => {
                wakeReader = r;
              });
              wakeReader = undefined;
            }
          }
        } finally {
          readerDone = true;
          wakeWriter?.();
        }
        await writer;
      } finally {
        opts.signal?.removeEventListener('abort', stop);
        ac.abort();
      }
      if (!flushed) return;
    }
  }

  /** Delete every read-model key of this prefix (not leases). */
  async clear(): Promise<void> {
    let cursor = '0';
    do {
      const [next, found] = await this.redis.scan(cursor, 'MATCH', `${this.k.prefix}:*`, 'COUNT', 500);
      cursor = next;
      const drop = found.filter((key) => !key.startsWith(`${this.k.prefix}:lease:`));
      if (drop.length) await this.redis.del(...drop);
    } while (cursor !== '0');
  }

  /** Replay the whole log from the start into empty read models; returns the number of events applied. */
  async rebuild(bus: Bus, opts: { log?: Logger } = {}): Promise<number> {
    await this.clear();
    let n = 0;
    for await (const e of readLog(bus, { fromSeq: 1, onInvalid: (seq, err) => opts.log?.warn({ seq, err: err.message }, 'skipping invalid event') })) {
      if (await this.apply(e)) n++;
    }
    // Every index was written by the replay.
    await this.redis.set(this.k.indexVersion, INDEX_VERSION);
    return n;
  }

  /** Every read-model key and value of this prefix, with the prefix removed (for comparisons). */
  async dump(): Promise<Record<string, unknown>> {
    const out: Record<string, unknown> = {};
    let cursor = '0';
    do {
      const [next, found] = await this.redis.scan(cursor, 'MATCH', `${this.k.prefix}:*`, 'COUNT', 500);
      cursor = next;
      for (const key of found) {
        if (key.startsWith(`${this.k.prefix}:lease:`)) continue;
        const type = await this.redis.type(key);
        const rel = key.slice(this.k.prefix.length + 1);
        if (type === 'string') out[rel] = await this.redis.get(key);
        else if (type === 'zset') out[rel] = await this.redis.zrange(key, 0, -1, 'WITHSCORES');
        else if (type === 'hash') out[rel] = await this.redis.hgetall(key);
      }
    } while (cursor !== '0');
    return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
  }
}
