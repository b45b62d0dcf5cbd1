import type { JobEvent, QemuCapabilities } from '@vmsave/contracts';
import type { Bus, Logger } from '@vmsave/bus';
import type { JobJournal, VmRegistry } from '@vmsave/ops';
import type { ExecutorConfig } from './config.ts';
import type { WarmPool } from './warm-pool.ts';

/** A job this executor is working on, from the moment its work item arrives. */
export interface InFlight {
  jobId: string;
  attempt: number;
  fencingToken: number;
  kind: 'save' | 'restore';
  vm?: string;
  /** What the heartbeat reports: `intake`, then the save's or restore's stage. */
  stage: string;
  /** Aborted with `'cancelled'` (control channel), `'deadline'` or `'shutdown'`. */
  ac: AbortController;
}

/** What every part of the executor shares; built once in `main.ts`. */
export interface ExecutorContext {
  bus: Bus;
  cfg: ExecutorConfig;
  log: Logger;
  vms: VmRegistry;
  journal: JobJournal;
  caps: QemuCapabilities;
  /** This host's name on the bus. */
  host: string;
  /** `source` of every event this executor publishes. */
  source: string;
  executorId: string;
  startedAt: string;
  inflight: Map<string, InFlight>;
  /** The last save's RAM throughput (bytes/s), announced to the scheduler. */
  throughput?: number;
  /** Aborted when the executor stops. */
  signal: AbortSignal;
  /** Called with each event this executor appended to the log and the job's history (its metrics). */
  onPublished?: (event: JobEvent, history: readonly JobEvent[]) => void;
  /** QEMUs waiting for a restore (VMSAVE_WARM_POOL); absent or disabled: every restore starts one. */
  warm?: WarmPool;
}
