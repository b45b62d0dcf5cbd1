import { Bus, createLogger } from '@vmsave/bus';
import { ServiceMetrics } from '@vmsave/metrics';
import { connectRedis } from '@vmsave/store';
import { loadConfig } from './config.ts';
import { createDashboard } from './server.ts';

const log = createLogger('dashboard');

async function main(): Promise<void> {
  const config = loadConfig();
  const metrics = new ServiceMetrics('dashboard');
  const bus = await Bus.connect({ ...config.bus, log, metrics: metrics.bus });
  await bus.ensureStreams();
  const redis = await connectRedis(config.redisUrl, { name: 'dashboard' });
  const app = await createDashboard({ bus, redis, prefix: config.redisPrefix, token: config.token, log, project: config.project, links: config.links });
  await app.listen({ host: config.host, port: config.port });
  log.info({ host: config.host, port: config.port, prefix: config.redisPrefix, project: config.project, auth: config.token ? 'token' : 'none' }, 'dashboard listening');
  // Its own port, outside the page's token: Prometheus scrapes it like the other services.
  await metrics.serve(config.metrics, log);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    // Reverse order of start: HTTP (ends live streams, stops the projection), Redis, NATS.
    await app.close().catch((err) => log.error({ err }, 'closing the HTTP server failed'));
    await redis.quit().catch(() => redis.disconnect());
    await bus.close();
    await metrics.close();
    log.info('stopped');
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}

main().catch((err) => {
  log.fatal({ err }, 'dashboard failed to start');
  process.exit(1);
});
