/**
 * The projector and dashboard of `bench/lag.ts`, in their own process as in a deployment (the
 * benchmark's publisher and simulated executors would otherwise share its event loop). Started
 * with `fork`; sends `{ port }` when listening, answers `stop` with the lag samples.
 */
import { Bus, createLogger } from '@vmsave/bus';
import { connectRedis, Projection } from '@vmsave/store';
import { createDashboard } from '@vmsave/dashboard';

const { NATS_URL, REDIS_URL, PREFIX, BATCH_MAX, VIA } = process.env as Record<string, string>;
const quiet = createLogger('bench-lag-child', { level: 'warn', destination: process.stderr });
const bus = await Bus.connect({ servers: NATS_URL!, name: 'dashboard' });
const redis = await connectRedis(REDIS_URL!, { name: 'bench-lag-child' });
const projection = new Projection(redis, PREFIX!);
const ac = new AbortController();
/** Per applied event: [type, lag ms, ms since start]. */
const samples: Array<[string, number, number]> = [];
/** Per transaction: [events, ms]. */
const writes: Array<[number, number]> = [];
const t0 = Date.now();
const projecting = projection.run(bus, {
  signal: ac.signal,
  log: quiet,
  batchMax: Number(BATCH_MAX),
  via: VIA === 'consumer' ? 'consumer' : VIA === 'direct' ? 'direct' : undefined,
  onBatch: (n, ms) => writes.push([n, ms]),
  onApplied: ({ event }) => {
    const now = Date.now();
    samples.push([event.type, now - Date.parse(event.at), now - t0]);
  },
});
const app = await createDashboard({ bus, redis, prefix: PREFIX!, log: quiet, project: false });
await app.listen({ host: '127.0.0.1', port: 0 });
process.send!({ port: (app.server.address() as { port: number }).port });
process.on('message', async (m) => {
  if (m !== 'stop') return;
  await app.close();
  ac.abort();
  await Promise.race([projecting, new Promise((r) => setTimeout(r, 3000))]);
  process.send!({ samples, writes }, () => {
    redis.disconnect();
    void bus.close().finally(() => process.exit(0));
  });
});
