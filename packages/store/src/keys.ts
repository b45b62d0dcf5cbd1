/** Redis key layout of the read models, under one prefix (default `vmsave`). */
export function keys(prefix = 'vmsave') {
  return {
    prefix,
    job: (jobId: string) => `${prefix}:job:${jobId}`,
    jobsAll: `${prefix}:jobs:all`,
    jobsByVm: (vm: string) => `${prefix}:jobs:vm:${vm}`,
    jobsByHost: (host: string) => `${prefix}:jobs:host:${host}`,
    /** Jobs in one status (sorted by request time, like every `jobs:*` index). */
    jobsByState: (state: string) => `${prefix}:jobs:state:${state}`,
    jobsByKind: (kind: string) => `${prefix}:jobs:kind:${kind}`,
    /** The version of the `jobs:state:*` / `jobs:kind:*` indexes built over the stored jobs. */
    indexVersion: `${prefix}:proj:indexes`,
    /** Scratch sorted sets of one query (intersections), deleted in the same transaction. */
    scratch: (id: string) => `${prefix}:tmp:${id}`,
    latestImage: (vm: string) => `${prefix}:image:latest:${vm}`,
    /** Every verified image of a VM still standing (jobId → LatestImage JSON): what `latestImage` falls back on. */
    verifiedImages: (vm: string) => `${prefix}:image:verified:${vm}`,
    imageIndex: `${prefix}:image:byPath`,
    appliedSeq: `${prefix}:proj:seq`,
    lease: (vm: string) => `${prefix}:lease:${vm}`,
    leaseToken: `${prefix}:lease:token`,
  };
}
export type Keys = ReturnType<typeof keys>;
