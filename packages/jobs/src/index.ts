/** The job model: everything of `./view` (folding, statuses, descriptions, formatters) and the decider. */
export * from './view.ts';
export { decide, decideRetry, type JobCommand, type Decision, type DecideMeta } from './decide.ts';
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
