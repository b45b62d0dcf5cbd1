import { mkdir } from 'node:fs/promises';
import { Bus, busOptions, createLogger } from '@vmsave/bus';
import { detectAccel, probeQemu } from '@vmsave/qemu';
import { ServiceMetrics } from '@vmsave/metrics';
import { JobJournal, VmRegistry } from '@vmsave/ops';
import { loadConfig } from './config.ts';
import { Executor } from './executor.ts';
import { registerExecutorMetrics } from './metrics.ts';

const log = createLogger('executor');
const cfg = loadConfig();
const metrics = new ServiceMetrics('executor');
const bus = await Bus.connect({ ...busOptions(cfg, `executor-${cfg.VMSAVE_HOST}`), log, metrics: metrics.bus });
await bus.ensureStreams();

const accel = await detectAccel();
const q = await probeQemu();
const caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel };
const vms = new VmRegistry({ vmDir: cfg.vmDir, qmpDir: cfg.qmpDir, accel });
const journal = new JobJournal(cfg.jobsDir);
await vms.init();
await journal.init();
await mkdir(cfg.imageDir, { recursive: true });

const onPublished = registerExecutorMetrics(metrics, { imageDir: cfg.imageDir, qmpDir: cfg.qmpDir });
await metrics.serve(cfg, log);
const executor = new Executor({ bus, cfg, log, vms, journal, caps, onPublished });
await executor.start();

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, 'executor stopping');
  if (signal === 'SIGTERM' && cfg.VMSAVE_ON_SHUTDOWN === 'save') {
    await executor.saveForShutdown().catch((err: unknown) => log.error({ err: (err as Error).message }, 'host shutdown: saving the VMs failed'));
  }
  // In-flight saves are cancelled and their VMs resumed before the bus closes.
  await executor.stop();
  await bus.close();
  await metrics.close();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
