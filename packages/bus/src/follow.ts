/**
 * Following reads that outlive NATS restarts. An ordered consumer resets itself after a
 * reconnect, but when the server is down or JetStream not ready during that reset its iterator
 * can end or throw, and a service that follows the log or the host announcements would go deaf
 * without a word. `resumable` opens the read again where it stopped.
 */

export interface ResumableOptions {
  signal?: AbortSignal;
  /** Told why the read is reopened (a service logs it); `attempt` counts reopenings in a row. */
  onResume?(reason: unknown, attempt: number): void;
  /**
   * Subscribe to moments when the read should be reopened even though it did not fail (e.g.
   * `bus.onReconnect`: an ordered consumer may stall silently after a server restart). Returns
   * the unsubscribe function.
   */
  reopenOn?(reopen: () => void): () => void;
  /** How long after such a moment the read is reopened (default 1 s, so JetStream is back). */
  reopenDelayMs?: number;
  /** Longest wait between reopenings after failures (default 5 s; the first waits 100 ms, then doubles). */
  maxDelayMs?: number;
}

/** Wait `ms`, or less when `signal` aborts (never rejects). */
export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
  });

/**
 * Yield from `open(after, signal)` and, when its iterator throws or ends before `opts.signal`
 * aborts (or `reopenOn` fires), open it again after the last item yielded. `after` is undefined
 * for the first opening; `signal` aborts when that opening must end (`open` closes its read then).
 * Items a reopened read repeats (position ≤ the last one) are skipped.
 */
export async function* resumable<T>(
  open: (after: number | undefined, signal: AbortSignal) => AsyncIterable<T>,
  positionOf: (item: T) => number,
  opts: ResumableOptions = {},
): AsyncGenerator<T> {
  let last: number | undefined;
  for (let attempt = 0; !opts.signal?.aborted; attempt++) {
    const current = new AbortController();
    const end = () => current.abort();
    opts.signal?.addEventListener('abort', end, { once: true });
    let asked: unknown;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const off = opts.reopenOn?.(() => {
      asked ??= new Error('reopened after a reconnect');
      timer ??= setTimeout(end, opts.reopenDelayMs ?? 1000);
    });
    let reason: unknown = new Error('the read ended by itself');
    try {
      for await (const item of open(last, current.signal)) {
        const p = positionOf(item);
        if (last !== undefined && p <= last) continue;
        last = p;
        attempt = 0;
        yield item;
      }
    } catch (err) {
      reason = err;
    } finally {
      off?.();
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', end);
      current.abort();
    }
    if (opts.signal?.aborted) return;
    if (asked) {
      opts.onResume?.(asked, 1);
      attempt = -1;
      continue;
    }
    opts.onResume?.(reason, attempt + 1);
    await sleep(Math.min(opts.maxDelayMs ?? 5000, 100 * 2 ** attempt), opts.signal);
  }
}
