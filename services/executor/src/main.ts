import { Bus, busOptions, createLogger } from '@vmsave/bus';
import { loadConfig } from './config.ts';
import { Executor } from './executor.ts';

const log = createLogger('executor');
const cfg = loadConfig();
const bus = await Bus.connect({ ...busOptions(cfg, `executor-${cfg.VMSAVE_HOST}`), log });
await bus.ensureStreams();
const executor = new Executor(bus, cfg, log);
await executor.start();

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, 'executor stopping');
  // In-flight saves are cancelled and their VMs resumed before the bus closes.
  await executor.stop();
  await bus.close();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
