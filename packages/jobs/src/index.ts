export { evolve, fold, initialState, isTerminal, isFinal, TERMINAL, type JobState, type JobStatus } from './state.ts';
export { decide, decideRetry, type JobCommand, type Decision, type DecideMeta } from './decide.ts';
export { JOB_STATUSES, ACTIVE_STATUSES, ON_HOST_STATUSES, closesAttempt } from './rules.ts';
export { describeEvent, describeState, jobJson } from './describe.ts';
export {
  fmtBytes,
  fmtRate,
  fmtDuration,
  fmtElapsed,
  fmtSeconds,
  progressLine,
  WriteProgressEstimator,
  type ProgressView,
  type RamProgressInput,
  type WriteProgress,
} from './format.ts';
