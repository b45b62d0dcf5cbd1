/**
 * Reading and showing jobs, without deciding them: state folding, the status lists, the
 * descriptions and formatters. Nothing here imports a runtime value from `@vmsave/contracts`
 * (whose ids use `node:crypto`), so a browser bundle can import this entry point
 * (`@vmsave/jobs/view`) and pull in no Node module.
 */
export { evolve, fold, initialState, isTerminal, isFinal, TERMINAL, type JobState, type JobStatus } from './state.ts';
export { JOB_STATUSES, ACTIVE_STATUSES, ON_HOST_STATUSES, closesAttempt } from './rules.ts';
export { describeEvent, describeDrainVm, describeState, jobJson, overdueText } from './describe.ts';
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
