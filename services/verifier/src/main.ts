import { createLogger } from '@vmsave/bus';
import { ServiceMetrics } from '@vmsave/metrics';
import { loadConfig } from './config.ts';
import { startVerifier } from './service.ts';

const log = createLogger('verifier');
const cfg = loadConfig();
const metrics = new ServiceMetrics('verifier');
// At 0 from the start: a dashboard shows "no verdict yet" rather than no series.
for (const k of ['verifications', 'verificationChecks', 'scrubBytes'] as const) metrics.counter(k);
const service = await startVerifier(cfg, log, metrics);
await metrics.serve(cfg, log);
log.info({ hosts: cfg.VMSAVE_VERIFY_HOSTS }, 'verifier running');

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, 'verifier stopping');
  await service.stop();
  await metrics.close();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
