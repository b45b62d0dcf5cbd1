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

/** Poll until `check` returns a truthy value or the time is up (then throw with `what`). */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 20_000, everyMs = 50): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A short random suffix so that concurrent or repeated runs never share ids. */
export const uniq = (prefix = 't'): string => `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

export { makePattern, patternVm, guestMemory, MiB, PATTERN_ADDR, PATTERN_SIZE, type TestVmDefinition } from './vm.ts';
export { runNode, lines, type RunResult } from './run.ts';
