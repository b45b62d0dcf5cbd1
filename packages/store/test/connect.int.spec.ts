/**
 * connectRedis fails fast and lets go: a Redis that wants a password the URL lacks (or does not
 * answer) gives one RedisConnectError, and no client is left reconnecting in the background
 * (which kept `vmsave jobs` alive forever, logging NOAUTH).
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startPasswordRedis } from '@vmsave/testkit';
import { RedisConnectError, connectRedis } from '../src/index.ts';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'connect-child.ts');
let redis: Awaited<ReturnType<typeof startPasswordRedis>> | undefined;
let port: number;

/** Connect from a fresh process; resolves with its output and how long it took to end by itself. */
function connectInChild(url: string): Promise<{ out: Record<string, unknown>; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--conditions=development', '--import', 'tsx', CHILD, url], { timeout: 20_000 }, (err, stdout) => {
      if (err) return reject(new Error(`the child did not end by itself: ${err.message}`));
      resolve({ out: JSON.parse(stdout.trim().split('\n').at(-1)!), ms: Date.now() - started });
    });
  });
}

beforeAll(async () => {
  redis = await startPasswordRedis('sekrit');
  port = redis.port;
});
afterAll(() => {
  redis?.stop();
});

describe('connectRedis', () => {
  it('refuses a URL without the password at once, with code auth, and names the rule', async () => {
    const started = Date.now();
    const err = await connectRedis(`redis://127.0.0.1:${port}`).catch((e: unknown) => e);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(err).toBeInstanceOf(RedisConnectError);
    expect(err).toMatchObject({ code: 'auth', retryable: false, message: expect.stringMatching(/NOAUTH.*the URL must carry the server's password/) });
  });

  it('hides the password of a wrong one in the message', async () => {
    const err = await connectRedis(`redis://:wrong@127.0.0.1:${port}`).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'auth', message: expect.stringContaining('redis://:***@127.0.0.1') });
    expect((err as Error).message).not.toContain('wrong');
  });

  it('leaves no client reconnecting behind: a process whose connection was refused ends by itself', async () => {
    const refused = await connectInChild(`redis://127.0.0.1:${port}`);
    expect(refused.out).toMatchObject({ ok: false, name: 'RedisConnectError', code: 'auth' });
    const unreachable = await connectInChild(`redis://127.0.0.1:${await freePort()}`);
    expect(unreachable.out).toMatchObject({ ok: false, name: 'RedisConnectError', code: 'unreachable', retryable: true });
    const ok = await connectInChild(`redis://:sekrit@127.0.0.1:${port}`);
    expect(ok.out).toEqual({ ok: true });
  }, 60_000);
});
