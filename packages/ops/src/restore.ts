import type { QmpClient } from '@vmsave/qmp';
import { launchVm, restoreFromFds, resume, type Accel, type MigrationProgress, type MigrationStats, type VmProcess } from '@vmsave/qemu';
import { checkRestorable, closeStreamFds, fingerprintImage, openStreamFds, readImage, sameFingerprint, verifyImage, type ImageInfo } from '@vmsave/image/node';
import type { ImageFingerprint, QemuCapabilities, VmDefinition } from '@vmsave/contracts';
import { classify, OpCancelled, OpError, type OpStage } from './errors.ts';

export interface RestoreImageOptions {
  imagePath: string;
  /** Where the restored VM's QMP socket goes (or use `prepare`). */
  qmpSocketPath?: string;
  /**
   * Called once the image passed the gate, before QEMU starts; may refuse by throwing, and
   * returns the QMP socket path for the new QEMU.
   */
  prepare?(definition: VmDefinition, image: ImageInfo): Promise<string>;
  hostCaps: QemuCapabilities;
  /** The definition to start; default the image's own. It must match the image (RAM, machine). */
  definition?: VmDefinition;
  after: 'running' | 'paused' | 'as-saved';
  /** Run the verifier's checks as the gate before QEMU starts (default true). */
  verify?: boolean;
  /**
   * The fingerprint the verifier recorded when it passed this image (ImageVerified). When the
   * file still has it, the gate reads only the header and descriptor: the checks already ran on
   * exactly these bytes, and a legacy image would otherwise be read whole before QEMU reads it.
   */
  verifiedAs?: ImageFingerprint;
  accel?: Accel;
  /**
   * Start the restored QEMU detached (it outlives this process, stderr appended to the file
   * `logFileOf` names for the definition started: `vmsave restore --local`); default a child of
   * this process whose stderr is piped.
   */
  detached?: { logFileOf(definition: VmDefinition): string };
  signal?: AbortSignal;
  onProgress?(p: MigrationProgress): void;
}

export interface RestoreImageResult {
  vm: VmProcess;
  qmp: QmpClient;
  definition: VmDefinition;
  image: ImageInfo;
  vmState: 'running' | 'paused';
  /** Which gate ran before QEMU started (see `verifiedAs`). */
  gate: 'full' | 'quick';
  durationMs: number;
  stats: MigrationStats;
}

/**
 * Restore a vmsave image into a new QEMU: refuse, before QEMU starts, an image that is partial,
 * of an unknown version, of a format this QEMU lacks, or whose RAM/machine do not match the
 * definition; then start QEMU with `-incoming defer`, pass read-only fds, `migrate-incoming`
 * at the stream offset, and `cont` if asked (or if the VM was running when saved). On failure
 * the new QEMU is killed and its stderr is in the error.
 */
export async function restoreImage(o: RestoreImageOptions): Promise<RestoreImageResult> {
  const t0 = performance.now();
  let stage: OpStage = 'prepare';
  let image: ImageInfo;
  try {
    image = await readImage(o.imagePath);
  } catch (err) {
    const c = classify(err);
    throw new OpError(`cannot read image ${o.imagePath}: ${c.message}`, 'prepare', c.code, false, { cause: err });
  }
  const definition = o.definition ?? image.descriptor.vm;
  const verdict = checkRestorable(image, { definition, hostCaps: o.hostCaps });
  if (!verdict.ok) {
    const why = verdict.refusals.map((r) => r.message).join('; ');
    throw new OpError(`refusing to restore ${o.imagePath}: ${why}`, 'prepare', `image-${verdict.refusals[0]!.code}`, false);
  }
  const current = o.verifiedAs && (await fingerprintImage(o.imagePath).catch(() => undefined));
  const unchanged = !!current && sameFingerprint(current, o.verifiedAs!);
  const gate = o.verify === false || unchanged ? 'quick' : 'full';
  if (gate === 'full') {
    // The verifier is the gate: QEMU crashes or "completes" with garbage on some damaged images.
    const v = await verifyImage(o.imagePath, { hostCaps: o.hostCaps });
    const failed = v.checks.filter((c) => c.status === 'fail');
    if (failed.length) {
      throw new OpError(`refusing to restore ${o.imagePath}: ${failed.map((c) => `${c.name}: ${c.detail}`).join('; ')}`, 'prepare', `image-check-${failed[0]!.name}`, false);
    }
  }

  let vm: VmProcess | undefined;
  let qmp: QmpClient | undefined;
  let fds: { buffered: number; direct?: number } | undefined;
  const closeFds = () => {
    closeStreamFds(fds);
    fds = undefined;
  };
  try {
    const socket = o.prepare ? await o.prepare(definition, image) : o.qmpSocketPath;
    if (!socket) throw new OpError('no QMP socket path for the restored VM', 'prepare', 'config', false);
    stage = 'start-qemu';
    vm = await launchVm(definition, {
      qmpSocketPath: socket,
      incoming: 'defer',
      accel: o.accel,
      signal: o.signal,
      detached: o.detached && { logFile: o.detached.logFileOf(definition) },
    });
    qmp = await vm.connectQmp();
    stage = 'restore';
    const h = image.header;
    fds = await openStreamFds(o.imagePath, { mode: 'restore', directIo: h.directIo });
    const stats = await restoreFromFds(qmp, {
      fds,
      offset: h.streamOffset,
      format: h.format,
      channels: h.format === 'sparse' ? Math.max(1, h.channels) : undefined,
      directIo: h.directIo,
      signal: o.signal,
      onProgress: o.onProgress,
      process: vm,
    });
    closeFds();
    stage = 'resume';
    const run = o.after === 'running' || (o.after === 'as-saved' && h.wasRunning);
    if (run) await resume(qmp, { signal: o.signal });
    return { vm, qmp, definition, image, vmState: run ? 'running' : 'paused', gate, durationMs: performance.now() - t0, stats };
  } catch (err) {
    closeFds();
    const stderr = vm?.stderr();
    await qmp?.close().catch(() => undefined);
    await vm?.kill().catch(() => undefined);
    if (o.signal?.aborted && o.signal.reason === 'cancelled') throw new OpCancelled('restore cancelled', stage, 'cancelled', false, { cause: err, qemuStderr: stderr });
    if (o.signal?.aborted && o.signal.reason === 'deadline')
      throw new OpError('restore ran past its deadline', 'deadline', 'deadline-exceeded', false, { cause: err, qemuStderr: stderr });
    const c = classify(err);
    throw new OpError(c.message, stage, c.code, c.retryable, { cause: err, qemuStderr: stderr });
  }
}
