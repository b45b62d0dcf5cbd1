import type { Redis } from 'ioredis';
import { keys } from './keys.ts';

export interface Lease {
  vm: string;
  owner: string;
  /** Monotonic across all leases: a holder with a smaller token is stale and must be refused. */
  token: number;
  expiresAt: number;
  /** The host whose slot the lease also holds (`acquireWithSlot`): renewed and released with it. */
  host?: string;
}

/** Why `acquireWithSlot` refused: the VM's lease is held, or the host has no free slot. */
export type SlotRefusal = 'vm-lease-held' | 'host-full';

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

// KEYS[1] lease hash, KEYS[2] token counter, KEYS[3] the host's slot ZSET (member → expiry ms);
// ARGV owner, ttl ms, limit, member. -1: lease held, -2: host full; else the token.
const ACQUIRE_SLOT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ms)
if redis.call('ZSCORE', KEYS[3], ARGV[4]) == false and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return -2 end
local t = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', t, 'job', ARGV[1], 'host', KEYS[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], ms + tonumber(ARGV[2]), ARGV[4])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[2]) * 2)
return t`;
// KEYS[1] lease, KEYS[2] slots; ARGV owner, token, ttl ms, member
const RENEW_SLOT = `
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('ZADD', KEYS[2], ms + tonumber(ARGV[3]), ARGV[4])
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) * 2 then redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 2) end
  return 1 end
return 0`;
const RELEASE_SLOT = `
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'token') == ARGV[2] then
  redis.call('DEL', KEYS[1]) redis.call('ZREM', KEYS[2], ARGV[3]) return 1 end
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
    private readonly prefix = 'vmsave',
  ) {
    this.k = keys(prefix);
  }

  async acquire(vm: string, owner: string, ttlMs: number): Promise<Lease | undefined> {
    const t = Number(await this.redis.eval(ACQUIRE, 2, this.k.lease(vm), this.k.leaseToken, owner, String(ttlMs), owner));
    return t > 0 ? { vm, owner, token: t, expiresAt: Date.now() + ttlMs } : undefined;
  }

  /**
   * Take a VM's lease and one of its host's `limit` slots in one step (one Lua script): the
   * host's slots are a ZSET of the VM names holding one, scored by expiry; expired ones are
   * removed first. Refused (nothing taken) when the VM's lease is held or every slot is taken.
   * Several schedulers dispatching to one host keep its limit this way.
   *
   * @example
   * const r = await leases.acquireWithSlot('web-1', 'job-1', 30_000, 'hv-1', 2);
   * if ('refused' in r) log.info(r.refused === 'host-full' ? 'host full' : 'VM lease held');
   */
  async acquireWithSlot(vm: string, owner: string, ttlMs: number, host: string, limit: number): Promise<Lease | { refused: SlotRefusal }> {
    const t = Number(await this.redis.eval(ACQUIRE_SLOT, 3, this.k.lease(vm), this.k.leaseToken, this.slotsKey(host), owner, String(ttlMs), String(limit), vm));
    if (t === -1) return { refused: 'vm-lease-held' };
    if (t === -2) return { refused: 'host-full' };
    return { vm, owner, token: t, expiresAt: Date.now() + ttlMs, host };
  }

  /** The VMs holding a slot of a host now (expired ones left out). */
  async slotsOf(host: string): Promise<string[]> {
    const [sec, usec] = await this.redis.time();
    return this.redis.zrangebyscore(this.slotsKey(host), `(${Number(sec) * 1000 + Math.floor(Number(usec) / 1000)}`, '+inf');
  }

  private slotsKey(host: string): string {
    return `${this.prefix}:slots:${host}`;
  }

  async renew(lease: Lease, ttlMs: number): Promise<boolean> {
    const ok =
      Number(
        lease.host === undefined
          ? await this.redis.eval(RENEW, 1, this.k.lease(lease.vm), lease.owner, String(lease.token), String(ttlMs))
          : await this.redis.eval(RENEW_SLOT, 2, this.k.lease(lease.vm), this.slotsKey(lease.host), lease.owner, String(lease.token), String(ttlMs), lease.vm),
      ) === 1;
    if (ok) lease.expiresAt = Date.now() + ttlMs;
    return ok;
  }

  /** Give a lease back (and its host slot, when it holds one); only its holder can. */
  async release(lease: Pick<Lease, 'vm' | 'owner' | 'token' | 'host'>): Promise<boolean> {
    if (lease.host !== undefined) {
      return Number(await this.redis.eval(RELEASE_SLOT, 2, this.k.lease(lease.vm), this.slotsKey(lease.host), lease.owner, String(lease.token), lease.vm)) === 1;
    }
    return Number(await this.redis.eval(RELEASE, 1, this.k.lease(lease.vm), lease.owner, String(lease.token))) === 1;
  }

  /** The current holder, if any. */
  async holder(vm: string): Promise<{ owner: string; token: number; ttlMs: number } | undefined> {
    const [h, ttl] = await Promise.all([this.redis.hgetall(this.k.lease(vm)), this.redis.pttl(this.k.lease(vm))]);
    if (!h.owner) return undefined;
    return { owner: h.owner, token: Number(h.token), ttlMs: ttl };
  }
}
