import { Bus, busOptions, createLogger } from '@vmsave/bus';
import { connectRedis } from '@vmsave/store';
import { loadConfig } from './config.ts';
import { Scheduler } from './scheduler.ts';

const log = createLogger('scheduler');
const cfg = loadConfig();
const bus = await Bus.connect({ ...busOptions(cfg, 'scheduler'), log });
await bus.ensureStreams();
const redis = await connectRedis(cfg.REDIS_URL, { name: 'scheduler' });
const scheduler = new Scheduler(bus, redis, cfg, log);
await scheduler.start(() => void shutdown('lost-leadership'));
log.info({ nats: cfg.NATS_URL, hostLimit: cfg.VMSAVE_HOST_LIMIT }, 'scheduler running');

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, 'scheduler stopping');
  // Reverse order of start: stop consuming, then drain the bus, then Redis.
  await scheduler.stop();
  await bus.close();
  redis.disconnect();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
