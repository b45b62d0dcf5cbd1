export { launchVm, buildVmArgs, type VmDefinition, type LaunchOptions } from './vm.ts';
export { spawnQemu, execWithoutInheritedFds, qemuEnvironment, qemuOptValue, DEFAULT_QEMU_BINARY, type VmProcess, type VmExit, type SpawnQemuOptions } from './process.ts';
export { probeQemu, detectAccel, type Accel, type QemuCapabilities, type ProbeOptions } from './probe.ts';
export { pauseIfRunning, resume, queryStatus, type VmStatus } from './runstate.ts';
export {
  saveToFds,
  restoreFromFds,
  cancelMigration,
  abandonMigration,
  planMigration,
  buildMigrationUri,
  toProgress,
  type SaveFormat,
  type MigrationFds,
  type MigrationOptions,
  type SaveOptions,
  type LiveSaveOptions,
  type LiveSaveOutcome,
  type MigrationPass,
  type RestoreOptions,
  type MigrationProgress,
  type MigrationStats,
  type MigrationRamStats,
  type MigrationSupport,
  type MigrationPlan,
  type MigrationProcessInfo,
} from './migration.ts';
export {
  QemuError,
  QemuLaunchError,
  QemuProbeError,
  QemuStateError,
  QemuUnsupportedError,
  QemuInvalidArgumentError,
  MigrationError,
  MigrationFailedError,
  MigrationCancelledError,
  MigrationStalledError,
  MigrationAbortedError,
  QemuExitedError,
  type QemuErrorCode,
  type QemuStage,
  type MigrationDirection,
} from './errors.ts';
