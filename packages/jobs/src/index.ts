export { evolve, fold, initialState, isTerminal, isFinal, TERMINAL, type JobState, type JobStatus } from './state.ts';
export { decide, decideRetry, type JobCommand, type Decision, type DecideMeta } from './decide.ts';
