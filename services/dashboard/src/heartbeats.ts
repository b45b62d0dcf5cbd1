import { messages, subjects } from '@vmsave/contracts';
import { subscribeValidated, type Bus, type TypedSubscription } from '@vmsave/bus';

/** Remembers when each host's executor last sent a heartbeat (core NATS `vmsave.hb.*`). */
export class HeartbeatWatch {
  private readonly last = new Map<string, { at: string; jobs: number }>();
  private sub: TypedSubscription<unknown> | undefined;

  constructor(private readonly bus: Bus) {}

  start(): void {
    if (this.sub) return;
    // An invalid heartbeat is the scheduler's concern; here it is skipped.
    const sub = subscribeValidated(this.bus, messages.heartbeat, subjects.heartbeatAll);
    this.sub = sub;
    void (async () => {
      for await (const { value: hb } of sub) this.last.set(hb.host, { at: hb.at, jobs: hb.jobs.length });
    })();
  }

  get(host: string): { at: string; jobs: number } | undefined {
    return this.last.get(host);
  }

  close(): void {
    this.sub?.unsubscribe();
    this.sub = undefined;
  }
}
