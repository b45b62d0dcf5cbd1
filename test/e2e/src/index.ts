export { Stack, REPO, type HostDirs, type ServiceName } from './stack.ts';
export { recordFault, writeReliabilityDoc, type FaultRow } from './report.ts';
export { NatsCluster } from './cluster.ts';
