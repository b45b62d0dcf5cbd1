export { Bus, ensureStream, toStreamConfig, type BusOptions } from './connection.ts';
export { publishValidated, publishEvent, publishCore, deadLetter } from './publish.ts';
export { runConsumer, ack, nak, term, type Outcome, type MessageContext, type ConsumerSpec } from './consume.ts';
export { readLog, eventsOfJob, type LoggedEvent, type ReadLogOptions } from './log.ts';
export { decodeMessage, encodeMessage, describeIssues } from './validate.ts';
export { BusError, BusValidationError, BusPublishError, isRetryable } from './errors.ts';
export { createLogger, type Logger } from './logger.ts';
export { BusEnv, parseEnv, busOptions } from './env.ts';
export { readHosts } from './hosts.ts';
