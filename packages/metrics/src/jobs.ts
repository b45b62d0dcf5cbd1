import type { JobEvent } from '@vmsave/contracts';
import type { ServiceMetrics } from './service.ts';

/** What an image's header says about how it was written (a restore's labels). */
export interface ImageTraits {
  format: string;
  channels: number;
  directIo: boolean;
  /** Allocated bytes on disk. */
  allocatedBytes?: number;
}

const labels = (t: { format: string; channels: number | string; directIo: boolean | string }) => ({
  format: t.format,
  channels: String(t.channels),
  direct_io: String(t.directIo),
});

/**
 * The executor's save and restore metrics, observed from each event it publishes together with
 * the job's history (the attempt's `SaveStarted` holds the channels and direct IO that
 * `SaveCompleted` does not repeat). `imageTraits` reads a restored image's header.
 */
export class JobMetrics {
  constructor(
    private readonly m: ServiceMetrics,
    private readonly imageTraits: (imagePath: string) => Promise<ImageTraits | undefined> = async () => undefined,
  ) {
    for (const k of ['saves', 'restores'] as const) m.counter(k);
    for (const k of ['saveSeconds', 'saveBytes', 'restoreSeconds', 'restoreBytes'] as const) m.histogram(k);
  }

  /** Observe one event this executor published; never throws (a metric must not fail a job). */
  async observe(e: JobEvent, history: readonly JobEvent[]): Promise<void> {
    try {
      await this.observeOrThrow(e, history);
    } catch {
      // e.g. the restored image is gone already: its histograms miss one sample.
    }
  }

  private async observeOrThrow(e: JobEvent, history: readonly JobEvent[]): Promise<void> {
    const m = this.m;
    switch (e.type) {
      case 'SaveCompleted': {
        const started = startedOf(history, 'SaveStarted', e.data.attempt);
        const l = labels({ format: e.data.format, channels: started?.data.channels ?? 'unknown', directIo: started?.data.directIo ?? 'unknown' });
        m.counter('saves').inc({ format: e.data.format, outcome: 'completed' });
        m.histogram('saveSeconds').observe(l, e.data.durationMs / 1000);
        m.histogram('saveBytes').observe(l, e.data.blocks * 512);
        return;
      }
      case 'SaveFailed':
      case 'SaveCancelled': {
        const attempt = 'attempt' in e.data ? e.data.attempt : lastAttempt(history);
        const format = startedOf(history, 'SaveStarted', attempt)?.data.format ?? requestedFormat(history);
        m.counter('saves').inc({ format, outcome: e.type === 'SaveFailed' ? 'failed' : 'cancelled' });
        return;
      }
      case 'RestoreCompleted': {
        const started = startedOf(history, 'RestoreStarted', e.data.attempt);
        const t = await this.imageTraits(e.data.imagePath);
        const format = t?.format ?? started?.data.format ?? 'unknown';
        const l = labels({ format, channels: t?.channels ?? 'unknown', directIo: t?.directIo ?? 'unknown' });
        m.counter('restores').inc({ format, outcome: 'completed' });
        m.histogram('restoreSeconds').observe(l, e.data.durationMs / 1000);
        if (t?.allocatedBytes !== undefined) m.histogram('restoreBytes').observe(l, t.allocatedBytes);
        return;
      }
      case 'RestoreFailed':
      case 'RestoreCancelled': {
        const attempt = 'attempt' in e.data ? e.data.attempt : lastAttempt(history);
        const format = startedOf(history, 'RestoreStarted', attempt)?.data.format ?? 'unknown';
        m.counter('restores').inc({ format, outcome: e.type === 'RestoreFailed' ? 'failed' : 'cancelled' });
        return;
      }
      default:
    }
  }
}

function startedOf<T extends 'SaveStarted' | 'RestoreStarted'>(history: readonly JobEvent[], type: T, attempt: number): Extract<JobEvent, { type: T }> | undefined {
  return history.findLast((x): x is Extract<JobEvent, { type: T }> => x.type === type && x.data.attempt === attempt);
}

function lastAttempt(history: readonly JobEvent[]): number {
  const s = history.findLast((x) => x.type === 'SaveStarted' || x.type === 'RestoreStarted' || x.type === 'SaveScheduled' || x.type === 'RestoreScheduled');
  return s && 'attempt' in s.data ? s.data.attempt : 0;
}

function requestedFormat(history: readonly JobEvent[]): string {
  const r = history.find((x) => x.type === 'SaveRequested');
  return r?.type === 'SaveRequested' ? r.data.request.format : 'unknown';
}
