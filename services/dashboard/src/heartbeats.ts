import { messages, subjects } from '@vmsave/contracts';
import { decodeMessage, type Bus } from '@vmsave/bus';

/** Remembers when each host's executor last sent a heartbeat (core NATS `vmsave.hb.*`). */
export class HeartbeatWatch {
  private readonly last = new Map<string, { at: string; jobs: number }>();
  private sub: ReturnType<Bus['nc']['subscribe']> | undefined;

  constructor(private readonly bus: Bus) {}

  start(): void {
    if (this.sub) return;
    this.sub = this.bus.nc.subscribe(subjects.heartbeatAll);
    void (async () => {
      for await (const m of this.sub!) {
        try {
          const hb = decodeMessage(messages.heartbeat.schema, m.data, m.subject);
          this.last.set(hb.host, { at: hb.at, jobs: hb.jobs.length });
        } catch {
          // An invalid heartbeat is the scheduler's concern (it dead-letters); here it is ignored.
        }
      }
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
