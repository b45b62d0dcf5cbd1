import { messages, subjects, type ProgressSample } from '@vmsave/contracts';
import { subscribeValidated, type Bus, type Logger, type TypedSubscription } from '@vmsave/bus';

export interface ThroughputPoint {
  /** Unix time, seconds. */
  t: number;
  /** Sum of the latest progress rate of every job that reported in the last few seconds, bytes/s. */
  bytesPerSec: number;
  jobs: number;
}

export interface ProgressHubOptions {
  /** At most one relayed sample per job per interval (the latest wins). */
  throttleMs?: number;
  /** A job whose last sample is older than this no longer counts as transferring. */
  staleMs?: number;
  /** Throughput history kept in memory (one point per second). */
  historySeconds?: number;
  log?: Logger;
}

type Listener = (sample: ProgressSample) => void;

/**
 * Follows `vmsave.progress.*` (core NATS, not stored) for the whole process: keeps the latest
 * sample of each job, relays samples to listeners throttled per job, and samples the fleet's
 * total transfer rate once a second into a bounded history.
 */
export class ProgressHub implements AsyncDisposable {
  private readonly latest = new Map<string, { sample: ProgressSample; receivedAt: number }>();
  private readonly lastSent = new Map<string, number>();
  private readonly pending = new Map<string, NodeJS.Timeout>();
  private readonly listeners = new Set<Listener>();
  private readonly tickListeners = new Set<(p: ThroughputPoint) => void>();
  private readonly history: ThroughputPoint[] = [];
  private readonly throttleMs: number;
  private readonly staleMs: number;
  private readonly historySeconds: number;
  private sub: TypedSubscription<ProgressSample> | undefined;
  private ticker: NodeJS.Timeout | undefined;

  constructor(
    private readonly bus: Bus,
    private readonly opts: ProgressHubOptions = {},
  ) {
    this.throttleMs = opts.throttleMs ?? 500;
    this.staleMs = opts.staleMs ?? 5_000;
    this.historySeconds = opts.historySeconds ?? 3_600;
  }

  start(): void {
    if (this.sub) return;
    const sub = subscribeValidated(this.bus, messages.progress, subjects.progressAll, {
      onInvalid: (err, subject) => this.opts.log?.debug({ subject, err: err.message }, 'ignoring invalid progress sample'),
    });
    this.sub = sub;
    void (async () => {
      for await (const { value } of sub) this.accept(value);
    })();
    this.ticker = setInterval(() => this.tick(), 1_000);
    this.ticker.unref();
  }

  /** Latest sample of a job, if it reported recently. */
  current(jobId: string): ProgressSample | undefined {
    const e = this.latest.get(jobId);
    return e && Date.now() - e.receivedAt <= this.staleMs * 6 ? e.sample : undefined;
  }

  throughputHistory(): ThroughputPoint[] {
    return [...this.history];
  }

  onSample(l: Listener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  onTick(l: (p: ThroughputPoint) => void): () => void {
    this.tickListeners.add(l);
    return () => this.tickListeners.delete(l);
  }

  /** A job ended: forget its sample so it no longer counts and is not shown. */
  forget(jobId: string): void {
    this.latest.delete(jobId);
    this.lastSent.delete(jobId);
    clearTimeout(this.pending.get(jobId));
    this.pending.delete(jobId);
  }

  private accept(sample: ProgressSample): void {
    const now = Date.now();
    this.latest.set(sample.jobId, { sample, receivedAt: now });
    if (this.pending.has(sample.jobId)) return; // the trailing send will pick up this sample
    const wait = (this.lastSent.get(sample.jobId) ?? 0) + this.throttleMs - now;
    if (wait <= 0) {
      this.emit(sample.jobId);
      return;
    }
    const t = setTimeout(() => {
      this.pending.delete(sample.jobId);
      this.emit(sample.jobId);
    }, wait);
    t.unref();
    this.pending.set(sample.jobId, t);
  }

  private emit(jobId: string): void {
    const e = this.latest.get(jobId);
    if (!e) return;
    this.lastSent.set(jobId, Date.now());
    for (const l of this.listeners) l(e.sample);
  }

  private tick(): void {
    const now = Date.now();
    let bytesPerSec = 0;
    let jobs = 0;
    for (const [jobId, e] of this.latest) {
      const age = now - e.receivedAt;
      if (age > this.staleMs * 60)
        this.forget(jobId); // long gone: drop it
      else if (age <= this.staleMs) {
        bytesPerSec += e.sample.bytesPerSec;
        jobs++;
      }
    }
    const point = { t: Math.floor(now / 1000), bytesPerSec, jobs };
    this.history.push(point);
    if (this.history.length > this.historySeconds) this.history.splice(0, this.history.length - this.historySeconds);
    for (const l of this.tickListeners) l(point);
  }

  async close(): Promise<void> {
    clearInterval(this.ticker);
    for (const t of this.pending.values()) clearTimeout(t);
    this.pending.clear();
    this.listeners.clear();
    this.tickListeners.clear();
    this.sub?.unsubscribe();
    this.sub = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
