import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * A pino JSON logger for one service. Anything about a job is logged through
 * `log.child({ jobId })`, so every such line carries the job id.
 */
export function createLogger(service: string, opts: { level?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  const level = opts.level ?? process.env.VMSAVE_LOG_LEVEL ?? 'info';
  return pino({ name: service, level, base: { service, pid: process.pid } }, (opts.destination ?? pino.destination(1)) as never);
}
