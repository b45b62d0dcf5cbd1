import type { Redis } from 'ioredis';
import { readLog, type Bus, type LoggedEvent, type Logger } from '@vmsave/bus';
import { evolve, initialState, type JobState } from '@vmsave/jobs';
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
    const next: JobView = { ...evolve(prev ?? initialState(), event), lastSeq: seq };
    const score = Date.parse(next.requestedAt ?? event.at);
    const tx = this.redis.multi().set(this.k.job(event.jobId), JSON.stringify(next)).zadd(this.k.jobsAll, score, event.jobId);
    if (next.vm) tx.zadd(this.k.jobsByVm(next.vm), score, event.jobId);
    if (next.host) tx.zadd(this.k.jobsByHost(next.host), score, event.jobId);
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
    tx.set(this.k.appliedSeq, String(seq));
    await tx.exec();
    return true;
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
  async run(bus: Bus, opts: { signal?: AbortSignal; log?: Logger; onApplied?: (e: LoggedEvent) => void } = {}): Promise<void> {
    while (!opts.signal?.aborted) {
      const from = (await this.appliedSeq()) + 1;
      opts.log?.info({ from }, from === 1 ? 'projection building from the start of the log' : 'projection resuming');
      const ac = new AbortController();
      const stop = () => ac.abort();
      opts.signal?.addEventListener('abort', stop, { once: true });
      let flushed = false;
      let appliedHere = 0;
      try {
        for await (const e of readLog(bus, {
          fromSeq: from,
          follow: true,
          signal: ac.signal,
          onResume: (err, attempt) => opts.log?.warn({ err: (err as Error)?.message, attempt }, 'event log: read reopened'),
          onInvalid: (seq, err) => opts.log?.warn({ seq, err: err.message }, 'skipping invalid event'),
        })) {
          if (appliedHere > 0 && (await this.redis.exists(this.k.appliedSeq)) === 0) {
            opts.log?.warn({ seq: e.seq }, 'read models vanished (Redis flushed?); rebuilding from the log');
            flushed = true;
            break;
          }
          await this.apply(e);
          appliedHere++;
          opts.onApplied?.(e);
        }
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
