export { Bus, ensureStream, toStreamConfig, type BusOptions } from './connection.ts';
export type { BusMetrics } from './metrics.ts';
export { publishValidated, publishEvent, publishCore, deadLetter } from './publish.ts';
export { runConsumer, ack, nak, term, type Outcome, type MessageContext, type ConsumerSpec } from './consume.ts';
export { readLog, eventsOfJob, readsByConsumer, type LoggedEvent, type ReadLogOptions } from './log.ts';
export {
  directGet,
  readDirect,
  followDirect,
  subjectMatches,
  DirectGetError,
  type DirectQuery,
  type DirectMessage,
  type DirectOptions,
  type ReadDirectOptions,
  type FollowOptions,
} from './direct.ts';
export { decodeMessage, encodeMessage, describeIssues } from './validate.ts';
export { BusError, BusValidationError, BusPublishError, BusRequestTimeout, isRetryable } from './errors.ts';
export { createLogger, type Logger } from './logger.ts';
export { BusEnv, parseEnv, busOptions } from './env.ts';
export { readHosts, type ReadHostsOptions } from './hosts.ts';
export { resumable, type ResumableOptions } from './follow.ts';
export { retryTransient, isTransient } from './retry.ts';
export { subscribeValidated, requestValidated, awaitAnswer, type Received, type SubscribeOptions, type TypedSubscription } from './core.ts';
