/** The executor service; `main.ts` is its one wiring place. Exported for tests that wire it the same way. */
export { Executor, type ExecutorDeps } from './executor.ts';
export { loadConfig, ExecutorEnv, type ExecutorConfig } from './config.ts';
/** For the replication tests (test/infra): the upload follower, the fetch before a restore, and the job track they publish through. */
export { ensureLocalImage, runReplication, useImageStore } from './replicate.ts';
export { JobTrack } from './job-log.ts';
export type { ExecutorContext, InFlight } from './context.ts';
