import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import { Leases, connectRedis } from '../src/index.ts';

let redis: Redis;

beforeAll(async () => {
  redis = await connectRedis((await testUrls()).redisUrl);
});
afterAll(() => redis?.disconnect());

describe('VM lease with a host slot (acquireWithSlot)', () => {
  it('takes the lease and a slot together, refuses "host full" at the limit and "VM lease held", frees both on release', async () => {
    const prefix = uniq('slot');
    const leases = new Leases(redis, prefix);
    const host = 'hv-1';
    const a = await leases.acquireWithSlot('vm-a', 'job-a', 5000, host, 2);
    const b = await leases.acquireWithSlot('vm-b', 'job-b', 5000, host, 2);
    expect('token' in a && 'token' in b).toBe(true);
    expect(await leases.acquireWithSlot('vm-c', 'job-c', 5000, host, 2)).toEqual({ refused: 'host-full' });
    // Nothing was taken by the refusal: vm-c's lease is free.
    expect(await leases.holder('vm-c')).toBeUndefined();
    expect(await leases.acquireWithSlot('vm-a', 'job-a2', 5000, 'hv-2', 2)).toEqual({ refused: 'vm-lease-held' });
    expect((await leases.slotsOf(host)).sort()).toEqual(['vm-a', 'vm-b']);
    // Renew extends both; a stale token renews nothing.
    if (!('token' in a) || !('token' in b)) throw new Error('unreachable');
    expect(await leases.renew(a, 5000)).toBe(true);
    expect(await leases.renew({ ...a, token: a.token + 100 }, 5000)).toBe(false);
    // A stale holder cannot free the slot; the holder can.
    expect(await leases.release({ ...b, token: b.token + 100 })).toBe(false);
    expect(await leases.release(b)).toBe(true);
    expect(await leases.slotsOf(host)).toEqual(['vm-a']);
    expect(await leases.holder('vm-b')).toBeUndefined();
    const c = await leases.acquireWithSlot('vm-c', 'job-c', 5000, host, 2);
    expect('token' in c && c.token).toBeGreaterThan(b.token);
    await redis.del(`${prefix}:lease:token`, `${prefix}:slots:${host}`, `${prefix}:lease:vm-a`, `${prefix}:lease:vm-c`);
  });

  it('an expired slot is removed before counting: a dead holder does not keep the host full', async () => {
    const prefix = uniq('slot');
    const leases = new Leases(redis, prefix);
    const a = await leases.acquireWithSlot('vm-a', 'job-a', 300, 'hv-1', 1);
    expect('token' in a).toBe(true);
    expect(await leases.acquireWithSlot('vm-b', 'job-b', 300, 'hv-1', 1)).toEqual({ refused: 'host-full' });
    await waitFor('the slot to expire', async () => 'token' in (await leases.acquireWithSlot('vm-b', 'job-b', 5000, 'hv-1', 1)), 5000);
    expect(await leases.slotsOf('hv-1')).toEqual(['vm-b']);
    // The old holder's renew finds its lease gone and extends nothing.
    if ('token' in a) expect(await leases.renew(a, 5000)).toBe(false);
    expect(await leases.slotsOf('hv-1')).toEqual(['vm-b']);
    await redis.del(`${prefix}:lease:token`, `${prefix}:slots:hv-1`, `${prefix}:lease:vm-b`);
  });
});
