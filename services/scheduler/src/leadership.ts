import type { Logger } from '@vmsave/bus';
import type { Lease, Leases } from '@vmsave/store';

/** The lease that makes one scheduler the active one (not a valid VM name, so never a VM's lease). */
export const LEADER = '_scheduler';

export interface LeadershipOptions {
  /** This scheduler's name in the lease. */
  id: string;
  ttlMs: number;
  log: Logger;
  /** Stop waiting (a standby) or renewing (the leader). */
  signal: AbortSignal;
  /** The lease went to another scheduler: this one must stop. */
  onLost: () => void;
}

/**
 * One active scheduler per deployment: a Redis lease, renewed every third of its TTL; a second
 * scheduler waits as a standby. A lease that vanished (Redis flushed) is taken again unless
 * another scheduler has it.
 */
export class Leadership {
  private constructor(
    private lease: Lease,
    private readonly leases: Leases,
    private readonly opts: LeadershipOptions,
  ) {}

  /** Wait until this scheduler holds the lease; undefined when `signal` aborted first. */
  static async acquire(leases: Leases, opts: LeadershipOptions): Promise<Leadership | undefined> {
    const { id, ttlMs, log, signal } = opts;
    for (let waited = false; ; waited = true) {
      const lease = await leases.acquire(LEADER, id, ttlMs);
      if (lease) {
        const l = new Leadership(lease, leases, opts);
        l.keep();
        return l;
      }
      if (!waited) log.warn({ holder: await leases.holder(LEADER) }, 'another scheduler is active; standing by');
      await new Promise((r) => setTimeout(r, Math.max(200, ttlMs / 3)));
      if (signal.aborted) return undefined;
    }
  }

  private keep(): void {
    const { id, ttlMs, log, signal, onLost } = this.opts;
    const renew = setInterval(
      () => {
        void (async () => {
          if (await this.leases.renew(this.lease, ttlMs)) return;
          const again = await this.leases.acquire(LEADER, id, ttlMs);
          if (again) {
            this.lease = again;
            log.warn('scheduler lease was gone (Redis flushed?); re-acquired it');
          } else if (!signal.aborted) {
            log.error({ holder: await this.leases.holder(LEADER) }, 'lost the scheduler lease to another scheduler; stopping');
            onLost();
          }
        })().catch((err) => log.warn({ err }, 'could not renew the scheduler lease'));
      },
      Math.max(100, ttlMs / 3),
    );
    signal.addEventListener('abort', () => clearInterval(renew), { once: true });
  }

  async release(): Promise<void> {
    await this.leases.release(this.lease).catch(() => false);
  }
}
