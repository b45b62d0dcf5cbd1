import type { Redis } from 'ioredis';
import { allPartitions, PARTITIONS, partitionToken } from '@vmsave/contracts';
import type { Logger } from '@vmsave/bus';
import type { Lease, Leases } from '@vmsave/store';

/** The lease of a VM partition (`_part.07`) and of the global duties: not valid VM names, so never a VM's lease. */
export const partitionLease = (p: number): string => `_part.${partitionToken(p)}`;
export const GLOBAL_LEASE = '_global';

/** How many partitions each of `live` schedulers aims at. Pure. */
export function shareOf(live: number): number {
  return Math.ceil(PARTITIONS / Math.max(1, live));
}

export interface OwnershipOptions {
  /**
   * The partition leases, on a Redis connection of the ownership rounds' own (with `redis`): a
   * renewal must never queue behind a burst of dispatch scripts on the connection the rest uses.
   */
  leases: Leases;
  redis: Redis;
  /** Redis key prefix (VMSAVE_REDIS_PREFIX): the members ZSET is `<prefix>:scheduler:members`. */
  prefix: string;
  /** This scheduler's name in the leases and the members set. */
  id: string;
  /** Lease time to live; rounds (heartbeat, renew, balance) run every third of it. */
  ttlMs: number;
  log: Logger;
  signal: AbortSignal;
  /**
   * Called right after partitions were taken: resolves once the log is folded up to the stream's
   * last sequence at this moment (so the previous owner's events are in the state). Runs outside
   * the rounds, which go on renewing meanwhile.
   */
  catchUp: () => Promise<void>;
  /** Caught-up partitions, now owned: queue their jobs and start their consumers. */
  onGain: (partitions: number[]) => Promise<void>;
  /** Partitions no longer acted on: stop their consumers and let in-flight admissions finish. */
  onLose: (partitions: number[], why: 'given back' | 'lease lost') => Promise<void>;
  /** The `_global` lease (bare-subject consumer, drains, snapshots) taken or lost. */
  onGlobal: (held: boolean) => Promise<void>;
  /** The held partitions changed (after `onGain`/`onLose`): the list, ascending. */
  onChange: (owned: number[]) => void;
  /** Held partitions whose lease lapsed locally were renewed in time: acting on them again (wake placement). */
  onResume?: (partitions: number[]) => void;
}

interface Held {
  lease: Lease;
  /** Acting on it is allowed until then (local clock; renewal pushes it on). */
  validUntil: number;
  /** Caught up and held (false while `onGain` runs and once it is being given back). */
  active: boolean;
}

/**
 * Ownership of the VM partitions among several active schedulers, by Redis leases.
 *
 * Each scheduler heartbeats into a members ZSET (score = now) every third of the TTL; the live
 * ones are those heard from within the TTL. Each aims at ceil(P / live) partitions: it takes
 * free or expired ones and gives back those above its share (its consumer stopped and its
 * in-flight admissions finished first, then the lease released), so a new scheduler gets a share
 * within a few rounds and a dead one's partitions, their leases expired, go to the survivors
 * within about a TTL.
 *
 * Holding and acting are apart. A partition is *held* from its catch-up until its loss is
 * confirmed or it is given back (`holds`): its jobs stay in the state's queues. It is *acted on*
 * only while its lease is valid by the local clock (`owns`): a paused or slow process stops
 * acting at the local expiry at once, without any round. A renewal that comes late still
 * succeeds when the key in Redis holds our owner and token (it never expired, nobody took it):
 * the partition is acted on again (`onResume`). Only a failed renewal is a loss (`onLose`).
 * Admission handlers that meet a lapsed partition wait (`whenActing`) until it is valid again or
 * lost, so commands are admitted in their stream order across a lapse.
 * `_global` goes to whichever scheduler gets it first.
 */
export class Ownership {
  private readonly held = new Map<number, Held>();
  private global: { lease: Lease; validUntil: number } | undefined;
  private round: Promise<void> = Promise.resolve();
  private timer: ReturnType<typeof setInterval> | undefined;
  private lastOwned = '';
  private readonly membersKey: string;
  /** Admission handlers waiting for a lapsed partition (`whenActing`), in arrival order. */
  private waiters: Array<{ p: number; resolve: (acting: boolean) => void }> = [];

  constructor(private readonly o: OwnershipOptions) {
    this.membersKey = `${o.prefix}:scheduler:members`;
  }

  /** Whether this scheduler acts on a partition now: it holds its lease, within its TTL, and has caught up. */
  owns(p: number): boolean {
    const h = this.held.get(p);
    return !!h && h.active && Date.now() < h.validUntil;
  }

  /** Whether a partition is held (caught up, not lost, not being given back), even while its lease lapsed locally. */
  holds(p: number): boolean {
    return !!this.held.get(p)?.active;
  }

  /** The partitions held, ascending (what is reported as owned: a lapse that is renewed in time changes nothing). */
  holding(): number[] {
    return allPartitions().filter((p) => this.holds(p));
  }

  /**
   * Resolves true once the partition is acted on (at once when it is), false once it is no
   * longer held (lost, given back, stopped). Waiters resolve in the order they came.
   */
  whenActing(p: number): Promise<boolean> {
    if (this.owns(p)) return Promise.resolve(true);
    if (!this.holds(p) || this.o.signal.aborted) return Promise.resolve(false);
    return new Promise((resolve) => this.waiters.push({ p, resolve }));
  }

  /** Settle the waiters whose partition is acted on again or no longer held. */
  private settleWaiters(): void {
    if (!this.waiters.length) return;
    const stopped = this.o.signal.aborted;
    const keep: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (!stopped && this.owns(w.p)) w.resolve(true);
      else if (stopped || !this.holds(w.p)) w.resolve(false);
      else keep.push(w);
    }
    this.waiters = keep;
  }

  ownsGlobal(): boolean {
    return !!this.global && Date.now() < this.global.validUntil;
  }

  /** The partitions acted on now, ascending. */
  owned(): number[] {
    return allPartitions().filter((p) => this.owns(p));
  }

  /** Run the first round (join, take a share), then one every third of the TTL until `signal` aborts. */
  async start(): Promise<void> {
    await this.tick();
    const every = Math.max(50, Math.floor(this.o.ttlMs / 3));
    this.timer = setInterval(() => void this.tick(), every);
    this.o.signal.addEventListener(
      'abort',
      () => {
        clearInterval(this.timer);
        this.settleWaiters();
      },
      { once: true },
    );
  }

  /** One round at a time; a failed round is logged and the next one tries again. */
  private tick(): Promise<void> {
    this.round = this.round.then(() => this.once()).catch((err) => this.o.log.warn({ err: (err as Error)?.message ?? String(err) }, 'partition ownership round failed'));
    return this.round;
  }

  private async once(): Promise<void> {
    const { leases, redis, id, ttlMs, log, signal } = this.o;
    if (signal.aborted) return;
    // Renewals first (the heartbeat can wait a round trip, a lapse cannot). What is held is
    // renewed even when it lapsed locally: the script succeeds only while the key still holds our
    // owner and token (it never expired, nobody took it), so acting on it again is safe. Only a
    // failed renewal is a loss.
    const lost: number[] = [];
    const resumed: number[] = [];
    await Promise.all(
      [...this.held].map(async ([p, h]) => {
        const started = Date.now();
        const ok = await leases.renew(h.lease, ttlMs).catch(() => false);
        if (!ok) {
          lost.push(p);
          return;
        }
        // Lapsed at some point (before it was sent, or while its reply was on the way): what was
        // not acted on meanwhile is adopted again (`onResume`).
        if (h.active && Date.now() >= h.validUntil) resumed.push(p);
        h.validUntil = started + ttlMs;
      }),
    );
    const now = Date.now();
    await redis.zadd(this.membersKey, now, id);
    await redis.zremrangebyscore(this.membersKey, '-inf', now - 10 * ttlMs);
    const live = await redis.zcount(this.membersKey, `(${now - ttlMs}`, '+inf');

    if (resumed.length) {
      log.warn({ partitions: resumed.sort((a, b) => a - b) }, 'partition leases lapsed locally and were renewed in time; acting on them again');
      this.o.onResume?.(resumed);
    }
    if (lost.length) {
      for (const p of lost) {
        // Token-checked: frees it for others at once if it is still ours in Redis.
        void leases.release(this.held.get(p)!.lease).catch(() => false);
        this.held.delete(p);
      }
      log.error({ partitions: lost.sort((a, b) => a - b) }, 'partition leases lost (renewal refused: expired or taken, or Redis unreachable); no longer acting on them');
      // Not awaited: the rounds (renewals) must never wait for consumers to stop.
      this.fire(() => this.o.onLose(lost, 'lease lost'), 'stopping lost partitions');
    }
    this.settleWaiters();

    const share = shareOf(live);
    // Above the share: give back the highest-numbered extras, each stopped before its lease is released.
    if (this.held.size > share) {
      const extra = [...this.held.keys()].sort((a, b) => b - a).slice(0, this.held.size - share);
      const leasesOf = extra.map((p) => this.held.get(p)!);
      for (const p of extra) this.held.get(p)!.active = false;
      this.settleWaiters();
      // Their in-flight admissions finish before the leases go, but a round waits at most a third of the TTL.
      await this.bounded(this.o.onLose(extra, 'given back'), ttlMs / 3);
      for (const [i, p] of extra.entries()) {
        this.held.delete(p);
        await leases.release(leasesOf[i]!.lease).catch(() => false);
      }
      log.info({ partitions: extra.sort((a, b) => a - b), live, share }, 'partitions given back');
    }
    // Below it: take free ones, starting at a place of our own so schedulers do not all race for 00.
    const gained: number[] = [];
    if (this.held.size < share && !signal.aborted) {
      const start = hashId(id) % PARTITIONS;
      for (let i = 0; i < PARTITIONS && this.held.size < share; i++) {
        const p = (start + i) % PARTITIONS;
        if (this.held.has(p)) continue;
        const at = Date.now();
        const lease = await leases.acquire(partitionLease(p), id, ttlMs);
        if (!lease) continue;
        this.held.set(p, { lease, validUntil: at + ttlMs, active: false });
        gained.push(p);
      }
    }

    // The global duties: one holder.
    if (this.global) {
      const at = Date.now();
      const ok = await leases.renew(this.global.lease, ttlMs).catch(() => false);
      if (ok) this.global.validUntil = at + ttlMs;
      else {
        this.global = undefined;
        log.error('global scheduler lease lost; stopping the bare-subject consumer, drains and snapshots');
        this.fire(() => this.o.onGlobal(false), 'stopping the global duties');
      }
    } else if (!signal.aborted) {
      const at = Date.now();
      const lease = await leases.acquire(GLOBAL_LEASE, id, ttlMs);
      if (lease) {
        this.global = { lease, validUntil: at + ttlMs };
        log.info('took the global scheduler lease (bare command subjects, drains, snapshots)');
        this.fire(() => this.o.onGlobal(true), 'starting the global duties');
      }
    }

    if (gained.length) this.activate(gained.sort((a, b) => a - b));
    this.report();
  }

  /** Catch up outside the rounds, then (in the round chain) act on what is still held. */
  private activate(gained: number[]): void {
    const entries = gained.map((p) => [p, this.held.get(p)!] as const);
    void this.o
      .catchUp()
      .then(() => {
        // Held even when its lease lapsed meanwhile: acting waits for a renewal (`owns`), a failed one gives it up.
        const ready = entries.filter(([p, h]) => this.held.get(p) === h && !this.o.signal.aborted).map(([p]) => p);
        if (!ready.length) return;
        for (const p of ready) this.held.get(p)!.active = true;
        this.report();
        // Not in the round chain: queuing their jobs waits for the state's serial chain.
        this.fire(() => this.o.onGain(ready), 'taking partitions');
      })
      .catch((err) => {
        // Not caught up: give them back (the next rounds take partitions again).
        this.o.log.error({ err: (err as Error)?.message ?? String(err), partitions: gained }, 'could not catch up the log for taken partitions; giving them back');
        for (const [p, h] of entries) {
          if (this.held.get(p) !== h) continue;
          this.held.delete(p);
          void this.o.leases.release(h.lease).catch(() => false);
        }
        this.settleWaiters();
      });
  }

  /** Run a callback without waiting for it; a failure is logged. */
  private fire(fn: () => Promise<void>, what: string): void {
    void fn().catch((err) => this.o.log.error({ err: (err as Error)?.message ?? String(err) }, `${what} failed`));
  }

  /** Wait for `p`, at most `ms`. */
  private async bounded(p: Promise<void>, ms: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      p.catch((err) => this.o.log.error({ err: (err as Error)?.message ?? String(err) }, 'giving partitions back failed')),
      new Promise((r) => (timer = setTimeout(r, ms))),
    ]);
    clearTimeout(timer);
  }

  private report(): void {
    const owned = this.holding();
    const key = owned.join(',');
    if (key === this.lastOwned) return;
    this.lastOwned = key;
    this.o.onChange(owned);
  }

  /** On a clean stop (consumers stopped): leave the members set and release every lease, so others take them at once. */
  async release(): Promise<void> {
    clearInterval(this.timer);
    await this.round;
    const { leases, redis } = this.o;
    for (const h of this.held.values()) h.active = false;
    this.settleWaiters();
    await Promise.allSettled([...this.held.values()].map((h) => leases.release(h.lease)));
    this.held.clear();
    if (this.global) await leases.release(this.global.lease).catch(() => false);
    this.global = undefined;
    await redis.zrem(this.membersKey, this.o.id).catch(() => 0);
  }
}

/** A small stable hash of a scheduler's id (where its search for free partitions starts). */
function hashId(id: string): number {
  let h = 0;
  for (let i = 0; i < id.length; i++) h = (Math.imul(h, 31) + id.charCodeAt(i)) >>> 0;
  return h;
}
