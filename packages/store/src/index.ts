export { Projection, type JobView, type LatestImage } from './projection.ts';
export { Leases, type Lease } from './lease.ts';
export { keys, type Keys } from './keys.ts';
export { connectRedis } from './redis.ts';
