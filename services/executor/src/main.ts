import { mkdir } from 'node:fs/promises';
import { Bus, busOptions, createLogger } from '@vmsave/bus';
import { detectAccel, probeQemu } from '@vmsave/qemu';
import { JobJournal, VmRegistry } from '@vmsave/ops';
import { loadConfig } from './config.ts';
import { Executor } from './executor.ts';

const log = createLogger('executor');
const cfg = loadConfig();
const bus = await Bus.connect({ ...busOptions(cfg, `executor-${cfg.VMSAVE_HOST}`), log });
await bus.ensureStreams();

const accel = await detectAccel();
const q = await probeQemu();
const caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel };
const vms = new VmRegistry({ vmDir: cfg.vmDir, qmpDir: cfg.qmpDir, accel });
const journal = new JobJournal(cfg.jobsDir);
await vms.init();
await journal.init();
await mkdir(cfg.imageDir, { recursive: true });

const executor = new Executor({ bus, cfg, log, vms, journal, caps });
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
