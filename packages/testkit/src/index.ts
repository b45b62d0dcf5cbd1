import { execFileSync } from 'node:child_process';

export interface TestUrls {
  natsUrl: string;
  redisUrl: string;
  /** Set when containers were started for this run; call it in afterAll. */
  stop?: () => Promise<void>;
}

let cached: Promise<TestUrls> | undefined;

function dockerAnswers(): boolean {
  try {
    execFileSync('docker', ['info', '--format', '{{.ServerVersion}}'], { stdio: 'ignore', timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

/**
 * Where integration tests find NATS (with JetStream) and Redis:
 * - `NATS_URL` / `REDIS_URL` when set (CI sets both to the local services);
 * - otherwise, when Docker answers, fresh testcontainers;
 * - otherwise the local default ports.
 */
export function testUrls(): Promise<TestUrls> {
  cached ??= resolveUrls();
  return cached;
}

async function resolveUrls(): Promise<TestUrls> {
  const env = process.env;
  if (env.NATS_URL || env.REDIS_URL || !dockerAnswers()) {
    return { natsUrl: env.NATS_URL ?? 'nats://127.0.0.1:4222', redisUrl: env.REDIS_URL ?? 'redis://127.0.0.1:6379' };
  }
  const { GenericContainer, Wait } = await import('testcontainers');
  const nats = await new GenericContainer('nats:2.10')
    .withCommand(['-js'])
    .withExposedPorts(4222)
    .withWaitStrategy(Wait.forLogMessage(/Server is ready/))
    .start();
  const redis = await new GenericContainer('redis:7').withExposedPorts(6379).start();
  return {
    natsUrl: `nats://${nats.getHost()}:${nats.getMappedPort(4222)}`,
    redisUrl: `redis://${redis.getHost()}:${redis.getMappedPort(6379)}`,
    stop: async () => {
      await Promise.allSettled([nats.stop(), redis.stop()]);
    },
  };
}

export { waitFor } from './wait.ts';

/** A short random suffix so that concurrent or repeated runs never share ids. */
export const uniq = (prefix = 't'): string => `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

export { makePattern, patternVm, guestMemory, MiB, PATTERN_ADDR, PATTERN_SIZE, type TestVmDefinition } from './vm.ts';
export { runNode, lines, stopChild, type RunResult } from './run.ts';
export { freePort, answers, startPasswordRedis } from './servers.ts';
export { NetnsLab, netnsUnavailable, netnsPids, sweepStaleLabs, type NetnsHost, type LabServer } from './netns.ts';
