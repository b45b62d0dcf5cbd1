/**
 * `vmsave jobs` against a Redis that asks for a password the URL lacks: one error naming
 * REDIS_URL, exit 1, and the process ends (it used to print its table, then log NOAUTH forever).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testUrls, startPasswordRedis } from '@vmsave/testkit';
import { EXIT } from '../src/errors.ts';
import { lines, vmsave } from './helpers.ts';

let redis: Awaited<ReturnType<typeof startPasswordRedis>> | undefined;
let port: number;

beforeAll(async () => {
  redis = await startPasswordRedis('sekrit');
  port = redis.port;
});
afterAll(() => {
  redis?.stop();
});

describe('vmsave jobs with a REDIS_URL lacking the password', () => {
  it('fails fast with one line naming REDIS_URL, exit 1, and never hangs', async () => {
    const { natsUrl } = await testUrls();
    const started = Date.now();
    const r = await vmsave(['jobs'], { NATS_URL: natsUrl, REDIS_URL: `redis://127.0.0.1:${port}` }, { timeoutMs: 20_000 });
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(r.code).toBe(EXIT.error);
    expect(lines(r.stderr)).toEqual([
      expect.stringMatching(/^vmsave: REDIS_URL: Redis at redis:\/\/127\.0\.0\.1:\d+ refused the connection \(NOAUTH.*\): the URL must carry the server's password/),
    ]);
    expect(r.stdout).toBe('');
  });

  it('names REDIS_URL in --json too, and hides a wrong password', async () => {
    const { natsUrl } = await testUrls();
    const r = await vmsave(['jobs', '--json'], { NATS_URL: natsUrl, REDIS_URL: `redis://:wrong@127.0.0.1:${port}` }, { timeoutMs: 20_000 });
    expect(r.code).toBe(EXIT.error);
    expect(r.json<{ error: { message: string; exitCode: number } }>().error).toMatchObject({ exitCode: EXIT.error, message: expect.stringMatching(/^REDIS_URL: .*WRONGPASS/) });
    expect(r.stdout + r.stderr).not.toContain('wrong');
  });

  it('with the password it lists the jobs', async () => {
    const { natsUrl } = await testUrls();
    const r = await vmsave(['jobs', '--json'], { NATS_URL: natsUrl, REDIS_URL: `redis://:sekrit@127.0.0.1:${port}` }, { timeoutMs: 20_000 });
    expect(r.code).toBe(EXIT.ok);
    expect(r.json()).toHaveProperty('jobs');
  });
});
