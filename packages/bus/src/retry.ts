/**
 * Whether a NATS/JetStream failure is worth retrying: timeouts, no responders and leader
 * elections all pass within seconds on a healthy cluster.
 */
export function isTransient(err: unknown): boolean {
  const text = `${(err as { name?: string })?.name ?? ''} ${(err as Error)?.message ?? String(err)} ${String((err as { code?: unknown })?.code ?? '')}`;
  return /timeout|TIMEOUT|no responders|503|NoResponders|cluster not available|leader|not current|no suitable peers|insufficient resources|temporarily unavailable|disconnect|CONNECTION_/i.test(text);
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
