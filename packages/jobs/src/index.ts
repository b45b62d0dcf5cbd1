/** The job model: everything of `./view` (folding, statuses, descriptions, formatters) and the decider. */
export * from './view.ts';
export { decide, decideRetry, type JobCommand, type Decision, type DecideMeta } from './decide.ts';
export {
  foldDrain,
  evolveDrain,
  decideDrain,
  initialDrainState,
  isDrainEvent,
  isDrainFinal,
  isVmDone,
  childOf,
  drainRow,
  evolveView,
  foldView,
  type DrainState,
  type DrainStatus,
  type DrainVm,
  type DrainEvent,
  type DrainAction,
  type DrainCommand,
  type DrainDecision,
  type DrainMeta,
} from './drain.ts';
export {
  planRetention,
  imagesOf,
  neededImagesOf,
  imageKey,
  ruleFor,
  parseDurationMs,
  type RetentionPolicy,
  type RetentionRule,
  type RetentionRuleName,
  type KnownImage,
  type Protections,
  type PlannedImage,
  type RetentionPlan,
} from './retention.ts';
