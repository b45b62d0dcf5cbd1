import { drainIdFor, jobIdFor, type JobEventType } from '@vmsave/contracts';

/**
 * One example payload per message, fixed (no clock, no random ids) so the generated document is
 * stable. The generator validates each against its zod schema and its published JSON Schema.
 */

export const exampleIds = {
  saveRequestId: 'evacuate-host-a-2025-06-01-web-1',
  restoreRequestId: 'restore-web-1-2025-06-01',
  cancelRequestId: 'cancel-evacuate-host-a-web-1',
  host: 'host-a',
  vm: 'web-1',
} as const;

export const saveJobId = jobIdFor('save', exampleIds.saveRequestId);
export const restoreJobId = jobIdFor('restore', exampleIds.restoreRequestId);
const imagePath = '/var/lib/vmsave/images/evacuation/web-1.vmsave';
const at = (s: number) => new Date(Date.UTC(2025, 5, 1, 12, 0, s)).toISOString();

export const saveRequestExample = {
  schemaVersion: 1,
  requestId: exampleIds.saveRequestId,
  vm: exampleIds.vm,
  format: 'sparse',
  channels: 4,
  directIo: false,
  after: 'quit',
  priority: 'high',
  image: 'evacuation/web-1.vmsave',
  deadlineMs: 600_000,
  requestedBy: 'control-plane/evacuate-host-a',
};

/** The smallest save request: every other field has a default. */
export const minimalSaveRequestExample = { requestId: 'hibernate-web-2-2025-06-01', vm: 'web-2' };

/** The content seal summary a sealed image carries (SaveCompleted, ImageVerified). */
const exampleSeal = { algorithm: 'crc32', chunkBytes: 4_194_304, chunks: 32, stateDigest: '5e2a91c4', ramDigest: 'b03d77e1' };

export const restoreRequestExample = {
  schemaVersion: 1,
  requestId: exampleIds.restoreRequestId,
  image: imagePath,
  host: exampleIds.host,
  after: 'running',
  verify: 'state',
  priority: 'normal',
  deadlineMs: 300_000,
  requestedBy: 'control-plane/evacuate-host-a',
};

export const cancelRequestExample = {
  schemaVersion: 1,
  requestId: exampleIds.cancelRequestId,
  jobId: saveJobId,
  reason: 'maintenance window moved',
};

export const drainRequestId = 'drain-host-a-2025-06-01';
export const drainJobId = drainIdFor(drainRequestId);
export const drainRequestExample = {
  schemaVersion: 1,
  requestId: drainRequestId,
  host: exampleIds.host,
  to: 'any',
  after: 'quit',
  format: 'sparse',
  priority: 'high',
  requestedBy: 'control-plane/evacuate-host-a',
};
const drainOutcome = [
  { vm: exampleIds.vm, phase: 'restored', saveJobId, restoreJobId, imagePath, restoredOn: 'host-b' },
  { vm: 'web-2', phase: 'failed', saveJobId: jobIdFor('save', 'drain-web-2'), error: 'at migrate (ENOSPC): no space left on device; the VM runs on host-a' },
];

export const admissionAcceptedExample = { outcome: 'accepted', requestId: exampleIds.saveRequestId, jobId: saveJobId, duplicate: false };
export const admissionRejectedExample = {
  outcome: 'rejected',
  requestId: 'hibernate-web-9-2025-06-01',
  jobId: jobIdFor('save', 'hibernate-web-9-2025-06-01'),
  rule: 'vm-exists',
  field: 'vm',
  message: 'vm: no announced host has a VM named "web-9"',
};

const checks = [
  { name: 'header.magic', status: 'pass', detail: 'VMSAVE01, version 1' },
  { name: 'descriptor.checksum', status: 'pass', detail: 'crc32c matches' },
  { name: 'format.matches-stream', status: 'pass', detail: 'sparse header and mapped-ram stream' },
  { name: 'sparseness', status: 'pass', detail: '61.2 MiB allocated of 128.0 MiB logical' },
];

const envelope = (type: JobEventType, jobId: string, second: number, source: string, data: Record<string, unknown>) => ({
  eventId: `${jobId}.${type}.example`,
  type,
  schemaVersion: 1,
  jobId,
  at: at(second),
  source,
  data,
});

const scheduled = { host: exampleIds.host, attempt: 1, fencingToken: 7, deadlineAt: at(600) };
const vmDefinition = {
  name: exampleIds.vm,
  uuid: '0b7a3c52-6f0e-4d36-9a57-3b1b2a6c9d10',
  machine: 'q35',
  memoryMiB: 128,
  vcpus: 1,
  args: ['-nographic'],
};

export const eventExamples: Record<JobEventType, Record<string, unknown>> = {
  SaveRequested: envelope('SaveRequested', saveJobId, 0, 'scheduler', {
    request: { ...saveRequestExample },
  }),
  SaveRejected: envelope('SaveRejected', admissionRejectedExample.jobId, 0, 'scheduler', {
    rule: 'vm-exists',
    field: 'vm',
    message: 'vm: no announced host has a VM named "web-9"',
  }),
  SaveScheduled: envelope('SaveScheduled', saveJobId, 0, 'scheduler', scheduled),
  SaveStarted: envelope('SaveStarted', saveJobId, 1, `executor@${exampleIds.host}`, {
    host: exampleIds.host,
    attempt: 1,
    fencingToken: 7,
    imagePath,
    format: 'sparse',
    channels: 4,
    directIo: false,
    wasRunning: true,
    ramBytes: 134_217_728,
  }),
  SaveCompleted: envelope('SaveCompleted', saveJobId, 3, `executor@${exampleIds.host}`, {
    host: exampleIds.host,
    attempt: 1,
    fencingToken: 7,
    imagePath,
    format: 'sparse',
    bytes: 135_266_304,
    blocks: 125_352,
    durationMs: 1840,
    throughputBytesPerSec: 72_943_000,
    vmState: 'quit',
    afterError: 'QEMU went away before the VM could be resumed (the image is complete)',
    qemu: { totalTimeMs: 1702, ramTotal: 134_217_728, ramTransferred: 64_180_224, ramNormalPages: 15_669, ramDuplicatePages: 17_099, mbps: 301.6 },
    seal: exampleSeal,
    live: {
      passes: [
        { pass: 1, bytes: 1168113664, startMs: 0 },
        { pass: 2, bytes: 61865984, startMs: 4210 },
      ],
      switchover: 'converged',
      downtimeMs: 11,
      qemuDowntimeMs: 6,
    },
  }),
  SaveFailed: envelope('SaveFailed', saveJobId, 2, `executor@${exampleIds.host}`, {
    attempt: 1,
    stage: 'migrate',
    reason: 'Unable to write to file: No space left on device',
    code: 'ENOSPC',
    retryable: false,
    host: exampleIds.host,
    fencingToken: 7,
    vmResumed: true,
    imageKept: imagePath,
  }),
  SaveRetrying: envelope('SaveRetrying', saveJobId, 3, 'scheduler', { attempt: 2, delayMs: 1000, lastCode: 'executor-lost' }),
  SaveCancelRequested: envelope('SaveCancelRequested', saveJobId, 2, 'scheduler', {
    reason: 'maintenance window moved',
    requestId: exampleIds.cancelRequestId,
  }),
  SaveCancelled: envelope('SaveCancelled', saveJobId, 2, `executor@${exampleIds.host}`, {
    reason: 'maintenance window moved',
    vmResumed: true,
    stage: 'migrate',
  }),
  ImageVerified: envelope('ImageVerified', saveJobId, 4, 'verifier', {
    imagePath,
    host: exampleIds.host,
    checks,
    fingerprint: { ino: '1835029', size: 139460608, mtimeNs: '1795849970108123456', ctimeNs: '1795849970108123456' },
    content: 'state',
    seal: exampleSeal,
  }),
  ImageRejected: envelope('ImageRejected', saveJobId, 4, 'verifier', {
    imagePath,
    host: exampleIds.host,
    checks: [...checks.slice(0, 3), { name: 'seal.ram', status: 'fail', detail: 'RAM differs from the seal in 1 chunk: bytes 20971520–25165824' }],
    fingerprint: { ino: '1835029', size: 139460608, mtimeNs: '1795849970108123456', ctimeNs: '1795849970108123456' },
    content: 'full',
    seal: exampleSeal,
    scrub: true,
  }),
  VerificationOverdue: {
    ...envelope('VerificationOverdue', saveJobId, 125, 'scheduler', { imagePath, host: exampleIds.host, attempt: 1, waitedMs: 120000, notice: 1 }),
    eventId: `${saveJobId}.1.VerificationOverdue.1`,
  },
  ImageDeleted: {
    ...envelope('ImageDeleted', saveJobId, 200, `executor@${exampleIds.host}`, { imagePath, host: exampleIds.host, rule: 'keep-last', bytes: 68157440 }),
    eventId: `${saveJobId}.ImageDeleted`,
  },
  ImageAdopted: envelope('ImageAdopted', 'a-2f8c41d0b7e9a3c65d14', 210, `executor@${exampleIds.host}`, {
    host: exampleIds.host,
    imagePath: '/var/lib/vmsave/images/web-1-by-hand.vmsave',
    vm: 'web-1',
    format: 'sparse',
    bytes: 68157440,
    fingerprint: { ino: '1835011', size: 68157440, mtimeNs: '1764806400000000000', ctimeNs: '1764806400000000000' },
  }),
  ImageReplicated: {
    ...envelope('ImageReplicated', saveJobId, 130, `executor@${exampleIds.host}`, {
      imagePath,
      host: exampleIds.host,
      bucket: 'VMSAVE_IMAGES',
      object: saveJobId,
      bytesMoved: 68157440,
      allocatedBytes: 68157440,
      extents: 12,
      seconds: 0.6,
    }),
    eventId: `${saveJobId}.ImageReplicated`,
  },
  ImageReplicationFailed: envelope('ImageReplicationFailed', saveJobId, 130, `executor@${exampleIds.host}`, {
    imagePath,
    host: exampleIds.host,
    bucket: 'VMSAVE_IMAGES',
    reason: 'nats: maximum bytes exceeded',
    code: 'replica-upload-failed',
  }),
  ImageFetched: envelope('ImageFetched', restoreJobId, 11, 'executor@host-b', {
    imagePath,
    host: 'host-b',
    bucket: 'VMSAVE_IMAGES',
    object: saveJobId,
    sourceJobId: saveJobId,
    bytesMoved: 68157440,
    allocatedBytes: 68157440,
    extents: 12,
    seconds: 0.7,
  }),
  ImageFetchFailed: envelope('ImageFetchFailed', restoreJobId, 11, 'executor@host-b', {
    imagePath,
    host: 'host-b',
    bucket: 'VMSAVE_IMAGES',
    object: saveJobId,
    reason: 'extent 3 at offset 1048576: CRC-32 0x1c291ca3, the manifest says 0x8d3f0a11',
    code: 'replica-checksum',
  }),
  RestoreRequested: envelope('RestoreRequested', restoreJobId, 10, 'scheduler', {
    request: { ...restoreRequestExample },
    sourceJobId: saveJobId,
    vm: exampleIds.vm,
  }),
  RestoreRejected: envelope('RestoreRejected', restoreJobId, 10, 'scheduler', {
    rule: 'image-known',
    field: 'image',
    message: 'image: no save in the log wrote "web-1.vmsave"; name the host that holds it (host)',
  }),
  RestoreScheduled: envelope('RestoreScheduled', restoreJobId, 10, 'scheduler', scheduled),
  RestoreStarted: envelope('RestoreStarted', restoreJobId, 11, `executor@${exampleIds.host}`, {
    host: exampleIds.host,
    attempt: 1,
    fencingToken: 8,
    imagePath,
    format: 'sparse',
    vm: vmDefinition,
  }),
  RestoreCompleted: envelope('RestoreCompleted', restoreJobId, 13, `executor@${exampleIds.host}`, {
    host: exampleIds.host,
    attempt: 1,
    fencingToken: 8,
    imagePath,
    vm: exampleIds.vm,
    durationMs: 1320,
    vmState: 'running',
    qmpSocket: '/var/lib/vmsave/qmp/web-1.qmp',
    gate: 'quick',
    start: 'warm',
    timings: { gateMs: 21.3, prepareMs: 9.8, launchMs: 7.1, qmpMs: 0, loadMs: 36, contMs: 3.8, contentMs: 17.1 },
  }),
  RestoreFailed: envelope('RestoreFailed', restoreJobId, 12, `executor@${exampleIds.host}`, {
    attempt: 1,
    stage: 'start-qemu',
    reason: 'QEMU exited with code 1 before listening on QMP',
    code: 'qemu-start-failed',
    retryable: true,
    host: exampleIds.host,
    fencingToken: 8,
    qemuStderr: 'qemu-system-x86_64: -machine q35: unsupported machine type',
  }),
  RestoreRetrying: envelope('RestoreRetrying', restoreJobId, 13, 'scheduler', { attempt: 2, delayMs: 1000, lastCode: 'qemu-start-failed' }),
  RestoreCancelRequested: envelope('RestoreCancelRequested', restoreJobId, 11, 'scheduler', { reason: 'no longer needed', requestId: 'cancel-restore-web-1' }),
  RestoreCancelled: envelope('RestoreCancelled', restoreJobId, 11, 'scheduler', { reason: 'no longer needed', vmResumed: false, stage: 'requested' }),
  DrainRequested: envelope('DrainRequested', drainJobId, 0, 'scheduler', { request: { ...drainRequestExample }, vms: [exampleIds.vm, 'web-2'], targets: ['host-b', 'host-c'] }),
  DrainVmUpdated: envelope('DrainVmUpdated', drainJobId, 25, 'scheduler', {
    vm: exampleIds.vm,
    phase: 'restored',
    saveJobId,
    restoreJobId,
    imagePath,
    restoredOn: 'host-b',
    error: 'restore attempt 1 failed at start-qemu (qemu-start-failed), attempt 2 completed',
  }),
  DrainCancelRequested: envelope('DrainCancelRequested', drainJobId, 20, 'scheduler', { reason: 'maintenance window moved', requestId: 'cancel-drain-host-a' }),
  DrainCompleted: envelope('DrainCompleted', drainJobId, 30, 'scheduler', { outcome: drainOutcome }),
  DrainFailed: envelope('DrainFailed', drainJobId, 30, 'scheduler', { reason: 'host host-a: no announcement', outcome: [] }),
  DrainCancelled: envelope('DrainCancelled', drainJobId, 30, 'scheduler', { reason: 'maintenance window moved', outcome: drainOutcome }),
};

export const workExample = {
  kind: 'save',
  jobId: saveJobId,
  attempt: 1,
  fencingToken: 7,
  host: exampleIds.host,
  deadlineAt: at(600),
  format: 'sparse',
  request: { ...saveRequestExample },
};

export const hostAnnouncementExample = {
  schemaVersion: 1,
  host: exampleIds.host,
  executorId: 'executor-host-a-5f1c',
  at: at(0),
  startedAt: at(-3600),
  qemu: { version: '10.0.2', mappedRam: true, directIo: true, machines: ['pc-q35-10.0', 'q35', 'pc-i440fx-10.0', 'pc'], accel: 'kvm' },
  imageDir: '/var/lib/vmsave/images',
  sharedImageDir: false,
  freeBytes: 412_316_860_416,
  throughputBytesPerSec: 800_000_000,
  maxConcurrentJobs: 2,
  vms: [{ name: exampleIds.vm, uuid: vmDefinition.uuid, machine: 'pc-q35-10.0', memoryMiB: 128, vcpus: 1, status: 'running', qmpSocket: '/var/lib/vmsave/qmp/web-1.qmp' }],
};

export const heartbeatExample = {
  schemaVersion: 1,
  host: exampleIds.host,
  executorId: 'executor-host-a-5f1c',
  at: at(2),
  jobs: [{ jobId: saveJobId, attempt: 1, stage: 'migrate', fencingToken: 7 }],
};

export const progressExample = {
  jobId: saveJobId,
  at: at(2),
  host: exampleIds.host,
  stage: 'migrate',
  status: 'active',
  totalBytes: 134_217_728,
  transferredBytes: 41_943_040,
  remainingBytes: 92_274_688,
  bytesPerSec: 72_943_000,
  etaMs: 1265,
};

export const controlRequestExample = { action: 'cancel', jobId: saveJobId, reason: 'maintenance window moved' };
export const controlReplyExample = { ok: true, message: 'migration cancelled' };

export const deadLetterExample = {
  service: 'scheduler',
  subject: 'vmsave.cmd.save',
  reason: 'SaveRequest: channels: Invalid input: expected number, received string',
  payload: '{"requestId":"bad-1","vm":"web-1","channels":"lots"}',
  payloadEncoding: 'utf8',
  streamSeq: 4711,
  at: at(5),
};
