import { Redis } from 'ioredis';
import { RedisConnectError } from './errors.ts';

/** `redis://user:***@host:port/db`: a URL fit for an error message. */
export function redactRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparsable URL)';
  }
}

/**
 * Connect to Redis from a URL (`redis://[:password@]host:port[/db]`), failing fast when it does
 * not answer or refuses the credentials: the first connection is tried once and, when it fails,
 * the client is disconnected (ioredis would otherwise retry forever in the background, keeping
 * the process alive) and a `RedisConnectError` thrown. Once connected, ioredis reconnects as usual.
 */
export async function connectRedis(url: string, opts: { name?: string } = {}): Promise<Redis> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 3, connectionName: opts.name, enableAutoPipelining: true });
  let lastError: Error | undefined;
  const remember = (err: Error) => {
    lastError = err;
  };
  redis.on('error', remember);
  try {
    await redis.connect();
    // The ready check passes with no password on some servers; a command proves access.
    await redis.ping();
    return redis;
  } catch (err) {
    redis.disconnect();
    const cause = lastError ?? (err as Error);
    const auth = /NOAUTH|WRONGPASS|invalid password|invalid username-password/i.test(`${cause?.message} ${(err as Error)?.message}`);
    const where = redactRedisUrl(url);
    throw new RedisConnectError(
      auth
        ? `Redis at ${where} refused the connection (${cause.message.split('\n')[0]}): the URL must carry the server's password, redis://:<password>@host:port`
        : `cannot connect to Redis at ${where}: ${cause?.message ?? String(err)}`,
      auth ? 'auth' : 'unreachable',
      { cause },
    );
  } finally {
    redis.off('error', remember);
  }
}
