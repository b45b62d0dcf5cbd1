import { Redis } from 'ioredis';

/** Connect to Redis from a URL (`redis://[:password@]host:port[/db]`), failing fast when it does not answer. */
export async function connectRedis(url: string, opts: { name?: string } = {}): Promise<Redis> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 3, connectionName: opts.name, enableAutoPipelining: true });
  await redis.connect();
  return redis;
}
