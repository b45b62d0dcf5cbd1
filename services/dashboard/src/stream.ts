import type { ServerResponse } from 'node:http';
import { eventsOfJob, readLog, type Bus, type Logger } from '@vmsave/bus';
import { fold } from '@vmsave/jobs';
import type { JobEvent } from '@vmsave/contracts';
import type { JobView, Projection } from '@vmsave/store';
import type { ProgressHub } from './progress.ts';
import { Coalescer, type CoalescerOptions } from './coalesce.ts';

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
  /** Bounds of what a slow browser is owed (coalesce.ts). */
  coalesce?: CoalescerOptions;
  /** The browser is behind when its socket buffers more than this (default: when Node says it needs a drain). */
  highWaterBytes?: number;
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

  /** The job as of `seq` or later (`wait`: for the read models to include it first). The per-connection reader sees every event in order. */
  const viewAt = async (seq: number, event: JobEvent, wait = true): Promise<JobView> => {
    if (!wait || (await watermark.reached(seq, waitMs, signal))) {
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
    // The reader never waits for the browser: what the browser is owed is kept in `owed`,
    // bounded, and the writer sends it exactly, coalesced per job, or summarised (coalesce.ts).
    const owed = new Coalescer<JobEvent>(deps.coalesce);
    let wake: (() => void) | undefined;
    let readerDone = false;
    const onAbort = () => wake?.();
    signal.addEventListener('abort', onAbort, { once: true });
    const send = (chunk: string) => {
      if (!raw.destroyed && !raw.writableEnded) raw.write(chunk);
    };
    const drained = () =>
      new Promise<void>((resolve) => {
        if (!raw.writableNeedDrain || raw.destroyed || signal.aborted) return resolve();
        const done = () => {
          raw.off('drain', done);
          raw.off('close', done);
          signal.removeEventListener('abort', done);
          resolve();
        };
        raw.on('drain', done);
        raw.on('close', done);
        signal.addEventListener('abort', done, { once: true });
      });
    const writer = (async () => {
      while (!signal.aborted && !raw.destroyed) {
        if (owed.size === 0) {
          if (readerDone) return;
          await new Promise<void>((r) => {
            wake = r;
          });
          wake = undefined;
          continue;
        }
        // While the browser drains its buffer, the reader's events pile up in `owed`: a short
        // wait (a catch-up burst) leaves them exact, a long one (more than `maxExact`) coalesces.
        const behind = raw.writableLength > (deps.highWaterBytes ?? Number.POSITIVE_INFINITY);
        if (raw.writableNeedDrain) await drained();
        const t = owed.take(behind);
        if (!t || signal.aborted) continue;
        if (t.kind === 'summary') {
          log.debug({ seq: t.summary.seq, events: t.summary.events, jobs: t.summary.jobs }, 'live stream: browser behind, summary sent');
          send(sseFrame('summary', t.summary, t.summary.seq));
          continue;
        }
        // One wait for the read models and one read for all the jobs of this batch.
        const top = t.items.at(-1)!.seq;
        await watermark.reached(top, waitMs, signal);
        const views = await projection.jobsByIds(t.items.map((p) => p.jobId));
        for (const [i, p] of t.items.entries()) {
          const v = views[i];
          const job = v && v.lastSeq >= p.seq ? v : await viewAt(p.seq, p.event, false);
          if (signal.aborted) break;
          send(sseFrame('job', p.superseded ? { seq: p.seq, event: p.event, job, superseded: p.superseded } : { seq: p.seq, event: p.event, job }, p.seq));
        }
      }
    })().catch((err: unknown) => {
      // A failed read of the read models ends this stream; the browser reconnects from its last id.
      if (!signal.aborted) log.warn({ err: (err as Error).message }, 'live stream: writer failed; closing the stream');
      raw.destroy();
    });
    try {
      for await (const { seq, event } of events) {
        owed.push(seq, event.jobId, event);
        wake?.();
      }
    } finally {
      readerDone = true;
      wake?.();
      signal.removeEventListener('abort', onAbort);
      await writer;
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
