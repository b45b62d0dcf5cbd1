import { Bus, busOptions, createLogger } from '@vmsave/bus';
import { loadConfig } from './config.ts';
import { Verifier } from './verifier.ts';

const log = createLogger('verifier');
const cfg = loadConfig();
const bus = await Bus.connect({ ...busOptions(cfg, 'verifier'), log });
await bus.ensureStreams();
const verifier = new Verifier(bus, cfg, log);
await verifier.start();
log.info({ hosts: cfg.VMSAVE_VERIFY_HOSTS }, 'verifier running');

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, 'verifier stopping');
  await verifier.stop();
  await bus.close();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
