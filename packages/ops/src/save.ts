import { stat, unlink } from 'node:fs/promises';
import type { QmpClient } from '@vmsave/qmp';
import {
  pauseIfRunning,
  queryStatus,
  resume,
  saveToFds,
  MigrationAbortedError,
  type LiveSaveOptions,
  type MigrationPass,
  type MigrationProgress,
  type MigrationStats,
} from '@vmsave/qemu';
import {
  closeStreamFds,
  createImage,
  finalizeImage,
  openStreamFds,
  sealImage,
  startSealFollower,
  updateDescriptor,
  ImageExistsError,
  type ImageDescriptorInput,
  type SealFollower,
} from '@vmsave/image/node';
import type { QemuCapabilities, SaveFormat, SealSummary, VmDefinition } from '@vmsave/contracts';
import { classify, OpCancelled, OpError, type OpStage } from './errors.ts';

export interface SaveVmOptions {
  qmp: QmpClient;
  /** Where the image goes; it must not exist. */
  imagePath: string;
  format: SaveFormat;
  channels: number;
  directIo: boolean;
  after: 'running' | 'paused' | 'quit';
  vm: VmDefinition;
  host: string;
  jobId: string;
  hostCaps?: QemuCapabilities;
  /** Keep a failed save's partial image (still marked partial) instead of deleting it. */
  keepPartial?: boolean;
  /** Cap on the save's write rate in bytes/s (0 or absent: unlimited). */
  maxBandwidth?: number;
  signal?: AbortSignal;
  onProgress?(p: MigrationProgress): void;
  /** `paused`: the VM is paused (or was already); `started`: the image exists and migrate comes next. */
  onStage?(stage: 'paused' | 'started', info: { wasRunning: boolean; streamOffset?: number }): void;
  /**
   * Awaited at each point of a save where a crash matters (fault injection: the executor's
   * failpoints). Throwing fails the save like any error at that point.
   */
  checkpoint?(point: SavePoint): Promise<void>;
  /**
   * Live checkpoint: copy RAM while the guest runs and stop it only for the final pass (QEMU
   * precopy; with the sparse format every pass rewrites pages at their fixed place). `true` takes
   * the defaults of {@link LiveSaveOptions}. A guest that is not running is saved as usual.
   */
  live?: boolean | LiveSaveOptions;
  /**
   * Seal a legacy buffered image while QEMU writes it (`startSealFollower`: its chunks hashed and
   * walked behind QEMU, so only the tail is left after completion; the same seal). Default true;
   * false seals after completion only (`sealImage`).
   */
  sealWhileWriting?: boolean;
}

/** Points of a save the fault suite injects at: before `migrate`, and after QEMU completed but before the magic flips. */
export const savePoints = ['before-migrate', 'after-completed'] as const;
export type SavePoint = (typeof savePoints)[number];

export interface SaveVmResult {
  imagePath: string;
  format: SaveFormat;
  wasRunning: boolean;
  vmState: 'running' | 'paused' | 'quit';
  /** Why the VM could not be left as `after` asked (the image is complete regardless). */
  afterError?: string;
  /** Logical size and allocated 512-byte blocks of the finished image. */
  bytes: number;
  blocks: number;
  durationMs: number;
  ramBytes: number;
  stats: MigrationStats;
  /** The content seal written into the image before its magic flipped (`SaveCompleted.seal`). */
  seal: SealSummary;
  /** How long sealing took (reading the image's data once). */
  sealMs: number;
  /** Set for a live save. */
  live?: LiveSaveResult;
}

/** What a live save did: its passes and how long the guest was stopped. */
export interface LiveSaveResult {
  passes: MigrationPass[];
  /** `converged`: QEMU's final pass fit the downtime limit; `passes`/`time`: vmsave stopped the guest (a stopped copy of the rest). */
  switchover: 'converged' | 'passes' | 'time';
  /** From QEMU's STOP event to the end of `cont` (after: running), by the host clock; absent when the VM stays stopped. */
  downtimeMs?: number;
  /** QEMU's own `downtime` (stop to completion of the migration). */
  qemuDowntimeMs?: number;
}

/**
 * Save a VM's memory state to a vmsave image (DESIGN §4, executor): pause, write the partial
 * header, pass two fds in an fdset, migrate, seal (digests of the data, into the descriptor),
 * fdatasync, flip the magic, then leave the VM as
 * asked. On any failure the migration is cancelled, the partial image removed (or kept),
 * and a VM that was running runs again. Throws OpError (OpCancelled when `signal` aborted
 * with reason `'cancelled'`).
 */
export async function saveVm(o: SaveVmOptions): Promise<SaveVmResult> {
  const t0 = performance.now();
  const { qmp, signal } = o;
  let stage: OpStage = 'pause';
  let wasRunning = false;
  let created = false;
  let fds: { buffered: number; direct?: number } | undefined;
  let follower: SealFollower | undefined;
  const closeFds = () => {
    closeStreamFds(fds);
    fds = undefined;
  };
  try {
    const status = await queryStatus(qmp, { signal });
    if (status.status === 'postmigrate') {
      // A completed save leaves QEMU in postmigrate; it refuses a new migrate until cont+stop.
      await qmp.execute('cont', undefined, { signal });
      await qmp.execute('stop', undefined, { signal });
    } else if (status.status === 'inmigrate') {
      throw new OpError(`VM ${o.vm.name} is ${status.status}; nothing to save`, 'pause', 'vm-state', false);
    }
    // Under KVM and under TCG alike: an earlier "TCG loses writes" finding was the restore letting
    // the loaded guest run (an incoming QEMU without -S), not the live copy.
    const live = o.live ? (o.live === true ? {} : o.live) : undefined;
    // Live: the guest runs on while QEMU copies; `paused` then means "about to copy".
    if (live) wasRunning = (await queryStatus(qmp, { signal })).running;
    else wasRunning = await pauseIfRunning(qmp, { signal });
    o.onStage?.('paused', { wasRunning });

    stage = 'image';
    const qemuVersion = o.hostCaps?.version ?? 'unknown';
    const descriptor: ImageDescriptorInput = {
      descriptorVersion: 1,
      vm: o.vm,
      format: o.format,
      qemu: {
        version: qemuVersion,
        capabilities: o.format === 'sparse' ? { 'mapped-ram': true, multifd: true, events: true } : { 'mapped-ram': false, multifd: false, events: true },
        parameters: { 'multifd-channels': o.format === 'sparse' ? o.channels : null, 'direct-io': o.directIo, 'max-bandwidth': o.maxBandwidth ?? 0 },
        hostCapabilities: o.hostCaps,
      },
      host: o.host,
      jobId: o.jobId,
      createdAt: new Date().toISOString(),
    };
    const img = await createImage(o.imagePath, { format: o.format, channels: o.format === 'sparse' ? o.channels : 0, directIo: o.directIo, wasRunning, descriptor });
    created = true;
    fds = await openStreamFds(o.imagePath, { mode: 'save', directIo: o.directIo });
    if (o.format === 'legacy' && !o.directIo && o.sealWhileWriting !== false) follower = startSealFollower(o.imagePath);
    o.onStage?.('started', { wasRunning, streamOffset: img.streamOffset });
    await o.checkpoint?.('before-migrate');

    stage = 'migrate';
    const stats = await saveToFds(qmp, {
      fds,
      offset: img.streamOffset,
      format: o.format,
      channels: o.channels,
      directIo: o.directIo,
      maxBandwidth: o.maxBandwidth,
      signal,
      onProgress: o.onProgress,
      live: live && wasRunning ? live : undefined,
    });
    closeFds();
    const liveResult = stats.live ? await resumeAfterLive(qmp, o.after, stats) : undefined;

    stage = 'finalize';
    await o.checkpoint?.('after-completed');
    // Seal → descriptor → magic flip: a crash before the flip leaves a partial image, as before.
    const sealed = follower ? await follower.finish({ signal }) : await sealImage(o.imagePath, { signal });
    await updateDescriptor(o.imagePath, { ...img.descriptor, seal: sealed.seal, completedAt: new Date().toISOString() });
    await finalizeImage(o.imagePath);
    const st = await stat(o.imagePath);

    // The image is complete and synced: the save has succeeded whatever happens to the VM now
    // (a cancel that arrives this late changes nothing). Leave the VM as asked, or say why not.
    stage = 'resume';
    let vmState: SaveVmResult['vmState'] = 'paused';
    let afterError: string | undefined;
    try {
      if (o.after === 'running') {
        await resume(qmp);
        vmState = 'running';
      } else if (o.after === 'quit') {
        await qmp.execute('quit').catch(() => undefined);
        vmState = 'quit';
      }
    } catch (err) {
      afterError = classify(err).message;
      vmState = await queryStatus(qmp).then(
        (s) => (s.running ? 'running' : 'paused'),
        () => 'quit' as const,
      );
    }
    return {
      imagePath: o.imagePath,
      format: o.format,
      wasRunning,
      vmState,
      afterError,
      bytes: st.size,
      blocks: st.blocks,
      durationMs: performance.now() - t0,
      ramBytes: o.vm.memoryMiB * 1024 * 1024,
      stats,
      seal: sealed.summary,
      sealMs: sealed.durationMs,
      ...(liveResult ? { live: liveResult } : {}),
    };
  } catch (err) {
    follower?.abort();
    closeFds();
    let imageKept: string | undefined;
    if (created && !(err instanceof ImageExistsError)) {
      if (o.keepPartial) imageKept = o.imagePath;
      else await unlink(o.imagePath).catch(() => undefined);
    }
    // Never leave a VM that was running paused while its QEMU is alive.
    let vmResumed = false;
    if (wasRunning) {
      try {
        await resume(qmp);
        vmResumed = true;
      } catch {
        /* QEMU gone or unresponsive: reported as vmResumed=false */
      }
    }
    const reason = signal?.aborted ? signal.reason : undefined;
    if (reason === 'cancelled' || (err instanceof MigrationAbortedError && reason === 'cancelled')) {
      throw new OpCancelled('save cancelled', stage, 'cancelled', false, { cause: err, vmResumed, imageKept });
    }
    if (reason === 'deadline') {
      throw new OpError('save ran past its deadline', 'deadline', 'deadline-exceeded', false, { cause: err, vmResumed, imageKept });
    }
    if (err instanceof OpError) {
      err.vmResumed = vmResumed;
      err.imageKept = imageKept;
      throw err;
    }
    const c = classify(err);
    throw new OpError(c.message, stage, c.code, c.retryable, { cause: err, vmResumed, imageKept });
  }
}

/**
 * After a live save's migration completed: with `after: running`, resume the guest at once — the
 * image already holds the state of the moment of the stop, and sealing and syncing it read the
 * file, not the guest, so the guest need not wait for them. A failed resume is retried (and
 * reported) where every save leaves its VM as asked.
 */
async function resumeAfterLive(qmp: QmpClient, after: SaveVmOptions['after'], stats: MigrationStats): Promise<LiveSaveResult> {
  const outcome = stats.live!;
  let resumedAt: number | undefined;
  if (after === 'running') {
    try {
      await resume(qmp);
      resumedAt = Date.now();
    } catch {
      /* retried below, where the VM is left as asked */
    }
  }
  const stoppedAt = outcome.stoppedAtEpochMs;
  return {
    passes: stats.passes,
    switchover: outcome.switchover,
    ...(resumedAt !== undefined && stoppedAt !== undefined ? { downtimeMs: Math.max(0, resumedAt - stoppedAt) } : {}),
    ...(stats.downtimeMs !== undefined ? { qemuDowntimeMs: stats.downtimeMs } : {}),
  };
}
