import type { ServerResponse } from 'node:http';
import { eventsOfJob, readLog, type Bus, type Logger } from '@vmsave/bus';
import { fold } from '@vmsave/jobs';
import type { JobEvent } from '@vmsave/contracts';
import type { JobView, Projection } from '@vmsave/store';
import type { ProgressHub } from './progress.ts';

/**
 * How far the read models have applied the log. The in-process projection advances it
 * directly; otherwise (another process projects) it is polled from Redis.
 */
export class Watermark {
  private known = 0;
  private wake = new Set<() => void>();

  constructor(private readonly projection: Projection) {}

  advance(seq: number): void {
    if (seq <= this.known) return;
    this.known = seq;
    for (const w of this.wake) w();
  }

  /** Resolve true once the read models include `seq`, false after `timeoutMs`. */
  async reached(seq: number, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    while (this.known < seq) {
      if (Date.now() >= end || signal?.aborted) return false;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          this.wake.delete(done);
          resolve();
        };
        const t = setTimeout(done, 100);
        this.wake.add(done);
      });
      if (this.known < seq) this.advance(await this.projection.appliedSeq());
    }
    return true;
  }
}

export interface StreamDeps {
  bus: Bus;
  projection: Projection;
  watermark: Watermark;
  progress: ProgressHub;
  log: Logger;
  /** How long to wait for the read models to include an event before folding the job from the log. */
  projectionWaitMs?: number;
}

/** One message in the `text/event-stream` format. `id` is set only on log events. */
export function sseFrame(event: string, data: unknown, id?: number): string {
  return `${id !== undefined ? `id: ${id}\n` : ''}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/**
 * Serve one browser's live stream on a hijacked response: every log event after `from`
 * (`event: job`, `id: <stream seq>`, data `{ seq, event, job }` with the job as of that event
 * or later), progress samples (`event: progress`, throttled per job, no id so they never move
 * the browser's Last-Event-ID) and the fleet throughput once a second (`event: throughput`).
 * Resolves when the browser goes away or `signal` aborts.
 */
export async function serveStream(raw: ServerResponse, from: number, deps: StreamDeps, signal: AbortSignal): Promise<void> {
  const { bus, projection, watermark, progress, log } = deps;
  const waitMs = deps.projectionWaitMs ?? 5_000;

  const write = async (chunk: string): Promise<void> => {
    if (raw.destroyed || raw.writableEnded) return;
    if (!raw.write(chunk)) {
      // A slow browser backpressures the log reader; it catches up later from its position.
      await new Promise<void>((resolve) => {
        const done = () => {
          raw.off('drain', done);
          raw.off('close', done);
          resolve();
        };
        raw.on('drain', done);
        raw.on('close', done);
      });
    }
  };
  // Ephemeral messages are dropped, not queued, while the browser is slow.
  const offer = (chunk: string) => {
    if (!raw.destroyed && !raw.writableEnded && !raw.writableNeedDrain) raw.write(chunk);
  };

  const offSample = progress.onSample((s) => offer(sseFrame('progress', s)));
  const offTick = progress.onTick((p) => offer(sseFrame('throughput', p)));
  const keepAlive = setInterval(() => offer(': keep-alive\n\n'), 15_000);

  /** The job as of `seq` or later. The per-connection reader sees every event in order. */
  const viewAt = async (seq: number, event: JobEvent): Promise<JobView> => {
    if (await watermark.reached(seq, waitMs, signal)) {
      const v = await projection.job(event.jobId);
      if (v && v.lastSeq >= seq) return v;
    }
    // The read models are behind (projector stopped or replaying): fold this job from the log.
    log.warn({ jobId: event.jobId, seq }, 'read model behind the log; folding the job from its events');
    const history = (await eventsOfJob(bus, event.jobId)).filter((e) => e.seq <= seq);
    return { ...fold(history.map((e) => e.event)), lastSeq: seq };
  };

  try {
    await write(`retry: 2000\n: from ${from}\n\n`);
    const events = readLog(bus, {
      fromSeq: from + 1,
      follow: true,
      signal,
      onInvalid: (seq, err) => log.warn({ seq, err: err.message }, 'skipping invalid event'),
      onResume: (err, attempt) => log.warn({ err: (err as Error)?.message ?? String(err), attempt }, 'live stream: log read reopened'),
    });
    for await (const { seq, event } of events) {
      const job = await viewAt(seq, event);
      if (signal.aborted) break;
      await write(sseFrame('job', { seq, event, job }, seq));
    }
  } catch (err) {
    if (!signal.aborted) log.warn({ err: (err as Error).message }, 'live stream ended with an error');
  } finally {
    offSample();
    offTick();
    clearInterval(keepAlive);
    if (!raw.writableEnded) raw.end();
  }
}
