import type { Redis } from 'ioredis';
import { keys } from './keys.ts';

export interface Lease {
  vm: string;
  owner: string;
  /** Monotonic across all leases: a holder with a smaller token is stale and must be refused. */
  token: number;
  expiresAt: number;
}

// KEYS[1] lease hash, KEYS[2] global token counter; ARGV owner, ttl ms, job
const ACQUIRE = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', t, 'job', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return t`;
// ARGV owner, token, ttl ms
const RENEW = `
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1 end
return 0`;
const RELEASE = `
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  redis.call('DEL', KEYS[1]) return 1 end
return 0`;

/**
 * One job at a time per VM: a Redis lease with expiry and a fencing token.
 *
 * @example
 * const leases = new Leases(redis);
 * const lease = await leases.acquire('web-1', 'job-123', 60_000);
 * if (!lease) throw new Error('busy');
 * await leases.renew(lease, 60_000);
 * await leases.release(lease);
 */
export class Leases {
  private readonly k;
  constructor(
    private readonly redis: Redis,
    prefix = 'vmsave',
  ) {
    this.k = keys(prefix);
  }

  async acquire(vm: string, owner: string, ttlMs: number): Promise<Lease | undefined> {
    const t = Number(await this.redis.eval(ACQUIRE, 2, this.k.lease(vm), this.k.leaseToken, owner, String(ttlMs), owner));
    return t > 0 ? { vm, owner, token: t, expiresAt: Date.now() + ttlMs } : undefined;
  }

  async renew(lease: Lease, ttlMs: number): Promise<boolean> {
    const ok = Number(await this.redis.eval(RENEW, 1, this.k.lease(lease.vm), lease.owner, String(lease.token), String(ttlMs))) === 1;
    if (ok) lease.expiresAt = Date.now() + ttlMs;
    return ok;
  }

  async release(lease: Pick<Lease, 'vm' | 'owner' | 'token'>): Promise<boolean> {
    return Number(await this.redis.eval(RELEASE, 1, this.k.lease(lease.vm), lease.owner, String(lease.token))) === 1;
  }

  /** The current holder, if any. */
  async holder(vm: string): Promise<{ owner: string; token: number; ttlMs: number } | undefined> {
    const [h, ttl] = await Promise.all([this.redis.hgetall(this.k.lease(vm)), this.redis.pttl(this.k.lease(vm))]);
    if (!h.owner) return undefined;
    return { owner: h.owner, token: Number(h.token), ttlMs: ttl };
  }
}
