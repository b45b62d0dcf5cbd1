export { Projection, type JobView, type LatestImage } from './projection.ts';
export { Leases, type Lease } from './lease.ts';
export { keys, type Keys } from './keys.ts';
export { connectRedis, redactRedisUrl } from './redis.ts';
export { StoreError, RedisConnectError } from './errors.ts';
export { queryJobs, type JobQuery, type JobQueryPage } from './query.ts';
