export { Stack, REPO, schedulerName, type HostDirs, type PartitionsOwned, type ServiceName } from './stack.ts';
export { attemptWindows, byJob, groupBy, maxOverlap, repeated, type AttemptWindow, type Interval } from './schedule-checks.ts';
export { recordFault, writeReliabilityDoc, type FaultRow } from './report.ts';
export { NatsCluster } from './cluster.ts';
