export { Stack, REPO, type HostDirs, type ServiceName } from './stack.ts';
