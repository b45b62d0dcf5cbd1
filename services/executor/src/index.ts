/** The executor service; `main.ts` is its one wiring place. Exported for tests that wire it the same way. */
export { Executor, type ExecutorDeps } from './executor.ts';
export { loadConfig, ExecutorEnv, type ExecutorConfig } from './config.ts';
