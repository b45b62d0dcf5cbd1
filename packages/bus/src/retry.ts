/**
 * Whether a NATS/JetStream failure is worth retrying: timeouts, no responders and leader
 * elections all pass within seconds on a healthy cluster.
 */
export function isTransient(err: unknown): boolean {
  // During a JetStream leader election the server answers "jetstream is not enabled" or gives
  // no responders for a few seconds; look through the whole cause chain.
  for (let e = err as { name?: string; message?: string; code?: unknown; cause?: unknown } | undefined, i = 0; e && i < 6; e = e.cause as typeof e, i++) {
    const text = `${e.name ?? ''} ${e.message ?? String(e)} ${String(e.code ?? '')}`;
    if (
      /timeout|no responders|503|cluster not available|jetstream is not enabled|not enabled for account|leader|not current|no suitable peers|insufficient resources|temporarily unavailable|disconnect|CONNECTION_/i.test(
        text,
      )
    )
      return true;
  }
  return false;
}

/**
 * Run `fn` again on transient failures, with capped exponential backoff, for up to `totalMs`.
 * Only for operations that are idempotent (publishes with a msgID, reads, info calls).
 */
export async function retryTransient<T>(fn: () => Promise<T>, opts: { totalMs?: number; signal?: AbortSignal } = {}): Promise<T> {
  const end = Date.now() + (opts.totalMs ?? 30_000);
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!isTransient(err) || Date.now() > end || opts.signal?.aborted) throw err;
      await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
    }
  }
}
