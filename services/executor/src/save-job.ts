import type { SaveWork } from '@vmsave/contracts';
import type { Logger } from '@vmsave/bus';
import { QmpBusyError, QmpClient } from '@vmsave/qmp';
import { OpCancelled, OpError, classify, saveVm } from '@vmsave/ops';
import type { ExecutorContext, InFlight } from './context.ts';
import type { JobTrack } from './job-log.ts';
import { failpoint } from './failpoints.ts';
import { resolveImagePath } from './image-path.ts';
import { progressReporter } from './progress.ts';

/** Run one save attempt and record its outcome (SaveStarted, then SaveCompleted, SaveFailed or SaveCancelled) through `decide`. */
export async function runSave(ctx: ExecutorContext, w: SaveWork, job: InFlight, track: JobTrack, log: Logger): Promise<void> {
  const req = w.request;
  job.vm = req.vm;
  let imagePath = '';
  let qmp: QmpClient | undefined;
  let wasRunning = false;
  let started: Promise<void> = Promise.resolve();
  const record = (extra: { wasRunning?: boolean } = {}) =>
    ctx.journal.write({ jobId: w.jobId, attempt: w.attempt, fencingToken: w.fencingToken, kind: 'save', vm: req.vm, imagePath, ...extra });
  try {
    const def = await ctx.vms.get(req.vm);
    if (!def) throw new OpError(`VM ${req.vm} is not defined on host ${ctx.host}`, 'prepare', 'vm-unknown', false);
    imagePath = await resolveImagePath(ctx.cfg.imageDir, req.image ?? `${req.vm}-${w.jobId}-${w.attempt}.vmsave`);
    ctx.vms.busy.add(req.vm);
    job.stage = 'connect';
    try {
      qmp = await QmpClient.connect(ctx.vms.socketOf(req.vm), { timeoutMs: 5000 });
    } catch (err) {
      // A socket that accepts but does not greet is held by another QMP client: that passes.
      // Nothing listening means no QEMU: retrying cannot help.
      if (err instanceof QmpBusyError) throw new OpError(`VM ${req.vm}'s QMP socket is held by another client: ${err.message}`, 'connect', 'qmp-busy', true, { cause: err });
      throw new OpError(
        `VM ${req.vm} is not running on host ${ctx.host} (its QMP socket does not answer: ${(err as Error).message}); start it or restore it from an image`,
        'connect',
        'vm-not-running',
        false,
        { cause: err },
      );
    }
    await record();
    const result = await saveVm({
      qmp,
      imagePath,
      format: w.format,
      channels: req.channels,
      directIo: req.directIo,
      after: req.after,
      vm: def,
      host: ctx.host,
      jobId: w.jobId,
      hostCaps: ctx.caps,
      keepPartial: ctx.cfg.VMSAVE_KEEP_PARTIAL,
      maxBandwidth: ctx.cfg.VMSAVE_SAVE_MAX_BANDWIDTH,
      // Live by default for a sparse save that leaves the VM running; a legacy one only when asked.
      live: req.live ?? (w.format === 'sparse' && req.after === 'running'),
      signal: job.ac.signal,
      onProgress: progressReporter(ctx, job, 'save'),
      checkpoint: (point) => failpoint({ points: ctx.cfg.VMSAVE_FAILPOINTS, jobsDir: ctx.cfg.jobsDir }, point, w.jobId, job.ac.signal, log),
      onStage: (stage, info) => {
        job.stage = stage;
        wasRunning = info.wasRunning;
        // Recorded as soon as the VM is paused: after a crash, only a VM that was running is resumed.
        if (stage === 'paused') void record({ wasRunning }).catch((err) => log.warn({ err: (err as Error).message }, 'could not update the job record'));
        if (stage === 'started') {
          // Decided now (the outcome is decided against it), published while QEMU migrates.
          const events = track.decideNow(
            {
              type: 'StartSave',
              data: {
                host: ctx.host,
                attempt: w.attempt,
                fencingToken: w.fencingToken,
                imagePath,
                format: w.format,
                channels: w.format === 'sparse' ? req.channels : 1,
                directIo: req.directIo,
                wasRunning,
                ramBytes: def.memoryMiB * 1024 * 1024,
              },
            },
            w.attempt,
            log,
          );
          // A failed publish is retried before the outcome is published (JobTrack keeps it pending).
          if (events) started = track.publish().catch((err) => log.warn({ err: (err as Error).message }, 'could not publish SaveStarted yet'));
        }
      },
    });
    await started;
    const secs = result.durationMs / 1000;
    if (secs > 0) ctx.throughput = result.ramBytes / secs;
    const s = result.stats;
    await track.refresh(log);
    const published = await track.apply(
      {
        type: 'CompleteSave',
        data: {
          host: ctx.host,
          attempt: w.attempt,
          fencingToken: w.fencingToken,
          imagePath,
          format: w.format,
          bytes: result.bytes,
          blocks: result.blocks,
          durationMs: Math.round(result.durationMs),
          throughputBytesPerSec: secs > 0 ? result.ramBytes / secs : 0,
          vmState: result.vmState,
          afterError: result.afterError,
          seal: result.seal,
          live: result.live && { ...result.live, passes: result.live.passes.map((p) => ({ ...p, startMs: Math.round(p.startMs) })) },
          qemu: {
            totalTimeMs: s.totalTimeMs,
            ramTotal: s.ram?.total,
            ramTransferred: s.ram?.transferred,
            ramNormalPages: s.ram?.normal,
            ramDuplicatePages: s.ram?.duplicate,
            mbps: s.ram?.mbps,
          },
        },
      },
      w.attempt,
      log,
    );
    log.info(
      {
        imagePath,
        bytes: result.bytes,
        blocks: result.blocks,
        durationMs: Math.round(result.durationMs),
        sealMs: Math.round(result.sealMs),
        vmState: result.vmState,
        live: result.live,
        published,
      },
      'save completed',
    );
    if (result.afterError) log.warn({ vmState: result.vmState, after: req.after }, `save completed, but the VM could not be left as asked: ${result.afterError}`);
  } catch (err) {
    await started;
    await saveFailed(ctx, w, job, track, err, imagePath, wasRunning, log);
  } finally {
    await qmp?.close().catch(() => undefined);
  }
}

async function saveFailed(ctx: ExecutorContext, w: SaveWork, job: InFlight, track: JobTrack, err: unknown, imagePath: string, wasRunning: boolean, log: Logger): Promise<void> {
  const c = classify(err);
  const e = err instanceof OpError ? err : new OpError(c.message, 'prepare', c.code, c.retryable, { cause: err });
  await track.refresh(log);
  if (e instanceof OpCancelled || (ctx.signal.aborted && e.code === 'cancelled')) {
    await track.apply({ type: 'ConfirmCancelled', reason: 'cancelled on request', vmResumed: e.vmResumed, stage: e.stage }, w.attempt, log);
    log.info({ vmResumed: e.vmResumed }, 'save cancelled');
    return;
  }
  // Stopping aborts each job with 'shutdown' before the executor's own signal: either means the
  // attempt ended because this executor stops, which another attempt can redo.
  const shutdown = ctx.signal.aborted || job.ac.signal.reason === 'shutdown';
  await track.apply(
    {
      type: 'FailSave',
      data: {
        attempt: w.attempt,
        stage: e.stage,
        reason: shutdown ? `executor shutting down: ${e.message}` : e.message,
        code: shutdown ? 'executor-shutdown' : e.code,
        retryable: shutdown || e.retryable,
        host: ctx.host,
        fencingToken: w.fencingToken,
        vmResumed: e.vmResumed || !wasRunning ? e.vmResumed : false,
        imageKept: e.imageKept,
      },
    },
    w.attempt,
    log,
  );
  log.warn({ stage: e.stage, code: e.code, vmResumed: e.vmResumed, imagePath }, `save failed: ${e.message}`);
}
