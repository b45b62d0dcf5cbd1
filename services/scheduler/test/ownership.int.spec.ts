/**
 * Partition ownership (`src/ownership.ts`) on the real Redis, a key prefix of its own: two
 * schedulers split the 16 partitions, a third joins and gets its share, one that stops renewing
 * (its timers stopped, as a SIGKILL would) loses its partitions to the others within a few TTLs,
 * and its `owns()` turns false at its lease's expiry without any round (fencing of a paused process).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { PARTITIONS } from '@vmsave/contracts';
import { createLogger } from '@vmsave/bus';
import { connectRedis, Leases } from '@vmsave/store';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import { Ownership, shareOf } from '../src/ownership.ts';

const TTL = 900;
const log = createLogger('ownership-test', { level: 'silent' });
let redis: Redis;
const prefix = uniq('own');

beforeAll(async () => {
  redis = await connectRedis((await testUrls()).redisUrl);
});
afterAll(async () => {
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length) await redis.del(...keys);
  redis?.disconnect();
});

function member(id: string) {
  const ac = new AbortController();
  const gained: number[][] = [];
  const lost: number[][] = [];
  const o = new Ownership({
    leases: new Leases(redis, prefix),
    redis,
    prefix,
    id,
    ttlMs: TTL,
    log,
    signal: ac.signal,
    catchUp: async () => undefined,
    onGain: async (ps) => void gained.push(ps),
    onLose: async (ps) => void lost.push(ps),
    onGlobal: async () => undefined,
    onChange: () => undefined,
  });
  return { o, ac, gained, lost };
}

describe('partition ownership by Redis leases', () => {
  it('shares ceil(16 / live) each', () => {
    expect([1, 2, 3, 16, 17].map(shareOf)).toEqual([16, 8, 6, 1, 1]);
  });

  it('splits between two, gives a third its share, and a stopped one loses all to the survivors within a few TTLs', async () => {
    const a = member('own-a');
    await a.o.start();
    await waitFor('a to own all 16', () => (a.o.owned().length === PARTITIONS ? true : undefined), 5000, 20);
    expect(a.o.ownsGlobal()).toBe(true);

    const b = member('own-b');
    await b.o.start();
    await waitFor('an 8/8 split', () => (a.o.owned().length === 8 && b.o.owned().length === 8 ? true : undefined), 10 * TTL, 20);
    expect(new Set([...a.o.owned(), ...b.o.owned()]).size).toBe(PARTITIONS);
    // What a gave back went through onLose before its lease was released.
    expect(a.lost.flat().sort((x, y) => x - y)).toEqual(b.o.owned());

    const c = member('own-c');
    await c.o.start();
    await waitFor(
      'a 6/5/5-ish split (each at most ceil(16/3) = 6)',
      () => {
        const n = [a, b, c].map((m) => m.o.owned().length);
        return n.every((k) => k >= 4 && k <= 6) && n.reduce((x, y) => x + y, 0) === PARTITIONS ? n : undefined;
      },
      20 * TTL,
      20,
    );

    // c stops renewing (as if SIGKILLed): no release, its leases and its member entry age out.
    c.ac.abort();
    const cOwned = c.o.owned();
    expect(cOwned.length).toBeGreaterThan(0);
    const stoppedAt = Date.now();
    // Without any round, its own view turns false once its leases' TTL has passed.
    await waitFor('c to stop acting on its partitions', () => (c.o.owned().length === 0 ? true : undefined), 3 * TTL, 20);
    await waitFor('a and b to own all 16 again', () => (a.o.owned().length + b.o.owned().length === PARTITIONS ? true : undefined), 10 * TTL, 20);
    expect(Date.now() - stoppedAt).toBeLessThan(10 * TTL);
    expect(new Set([...a.o.owned(), ...b.o.owned()]).size).toBe(PARTITIONS);

    a.ac.abort();
    b.ac.abort();
    await a.o.release();
    await b.o.release();
    // A clean stop leaves the members set and frees the leases at once.
    expect(await redis.zscore(`${prefix}:scheduler:members`, 'own-a')).toBeNull();
    expect(await new Leases(redis, prefix).holder('_part.00')).toBeUndefined();
  });
});
