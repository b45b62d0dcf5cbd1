import { createLogger } from '@vmsave/bus';
import { loadConfig } from './config.ts';
import { startVerifier } from './service.ts';

const log = createLogger('verifier');
const cfg = loadConfig();
const service = await startVerifier(cfg, log);
log.info({ hosts: cfg.VMSAVE_VERIFY_HOSTS }, 'verifier running');

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, 'verifier stopping');
  await service.stop();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
