import { Bus, busOptions, type Logger } from '@vmsave/bus';
import type { ServiceMetrics } from '@vmsave/metrics';
import type { VerifierConfig } from './config.ts';
import { Verifier } from './verifier.ts';

/** A running verifier and its bus connection; `stop()` (or `await using`) drains both, in reverse order. */
export interface VerifierService extends AsyncDisposable {
  readonly bus: Bus;
  readonly verifier: Verifier;
  stop(): Promise<void>;
}

/**
 * The verifier's wiring (used by main.ts and by the integration test): connect to NATS, make sure
 * the streams exist, start consuming `SaveCompleted`. `metrics`: the verdicts and bus metrics are
 * counted into it (a scrub adds its bytes read to `metrics.counter('scrubBytes')`).
 */
export async function startVerifier(cfg: VerifierConfig, log: Logger, metrics?: ServiceMetrics): Promise<VerifierService> {
  const bus = await Bus.connect({ ...busOptions(cfg, 'verifier'), log, metrics: metrics?.bus });
  let verifier: Verifier;
  try {
    await bus.ensureStreams();
    verifier = new Verifier(bus, cfg, log, { onScrubBytes: metrics ? (n) => metrics.counter('scrubBytes').inc(n) : undefined });
    await verifier.start();
  } catch (err) {
    await bus.close().catch(() => undefined);
    throw err;
  }
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      await verifier.stop();
      await bus.close();
    })());
  return { bus, verifier, stop, [Symbol.asyncDispose]: stop };
}
