export {
  GUEST_KERNEL,
  guestKernelMissing,
  hostTscKhz,
  testGuestArgs,
  testGuestDefinition,
  launchTestGuest,
  readGuestMemory,
  sampleHeartbeat,
  waitForGuest,
  type TestGuestOptions,
} from './launch.ts';
