import path from 'node:path';
import { VmDefinition, type ImageFingerprint, type JobEvent, type RestoreWork } from '@vmsave/contracts';
import type { Logger } from '@vmsave/bus';
import { OpCancelled, OpError, classify, restoreImage, startRestoreHead, type RestoreHead, type RestoreImageOptions } from '@vmsave/ops';
import type { ExecutorContext, InFlight } from './context.ts';
import { jobEvents, jobEventsOfTypes, type JobTrack } from './job-log.ts';
import { resolveImagePath } from './image-path.ts';
import { progressReporter } from './progress.ts';
import { ensureLocalImage } from './replicate.ts';

/** When this executor took the work item (epoch ms) and how long the intake took (ms): for the restore's `timings`. */
export interface IntakeTimes {
  receivedEpochMs: number;
  intakeMs: number;
  /** The image's head read and its QEMU started at receipt ({@link prestartRestore}). */
  head?: Promise<RestoreHead | undefined>;
}

/** Where and when this restore's QEMU may start before its gate finished (the same for the head at receipt and the restore). */
function earlyStart(ctx: ExecutorContext, job: InFlight): Pick<RestoreImageOptions, 'stagingDir' | 'mayStartEarly' | 'hostCaps' | 'warm' | 'accel' | 'signal'> {
  return {
    // A cold QEMU starts beside the gate, its socket here until it is the VM's (the pool's directory: reaped at start).
    stagingDir: path.join(ctx.cfg.qmpDir, 'warm'),
    // Only for a VM that is stopped here: a second QEMU must not touch a running VM's host resources.
    mayStartEarly: async (d) => (await ctx.vms.status(d.name)) === 'stopped',
    hostCaps: ctx.caps,
    warm: ctx.warm?.enabled ? (d) => ctx.warm!.take(d) : undefined,
    accel: ctx.caps.accel,
    signal: job.ac.signal,
  };
}

/**
 * At work receipt, before the job's history is read and the attempt admitted: the image's header
 * and descriptor read and checked, and its QEMU started with `-incoming defer` (warm or cold, in
 * the staging directory), so QEMU's start-up overlaps the intake. It gets no image until the
 * restore's gate and `prepare` (fencing, VM state, RestoreStarted decided) passed; intake
 * discards it (`discardRestoreHead`) when no restore took it. Undefined on any failure (an image
 * not on this host yet, a bad path): the restore then reads it itself and reports the error.
 */
export function prestartRestore(ctx: ExecutorContext, w: RestoreWork, job: InFlight): Promise<RestoreHead | undefined> {
  return resolveImagePath(ctx.cfg.imageDir, w.request.image).then(
    // The seal's state check (reads only) starts with it; `full` (the whole image) waits for the restore.
    (imagePath) => startRestoreHead({ imagePath, ...earlyStart(ctx, job), content: w.request.verify ?? 'state' }),
    () => undefined,
  );
}

/** Run one restore attempt and record its outcome (RestoreStarted, then RestoreCompleted, RestoreFailed or RestoreCancelled) through `decide`. */
export async function runRestore(ctx: ExecutorContext, w: RestoreWork, job: InFlight, track: JobTrack, log: Logger, intake?: IntakeTimes): Promise<void> {
  let imagePath = '';
  let journaled: Promise<void> | undefined;
  // The RestoreStarted publish and the VM definition's write (see prepare).
  let started: Promise<void> | undefined;
  let defined: Promise<unknown> | undefined;
  let refreshed: Promise<void> | undefined;
  try {
    imagePath = await resolveImagePath(ctx.cfg.imageDir, w.request.image);
    // Not on this host but replicated: downloaded (and checked) first (replicate.ts).
    await ensureLocalImage(ctx, w, job, track, imagePath, log);
    // The verifier's fingerprint is read from the log while the gate reads the image (restoreImage awaits it).
    const verifiedAs = verifiedFingerprint(ctx, track.history, imagePath, log);
    verifiedAs.catch(() => undefined);
    // The journal entry is written beside the gate; `prepare` waits for it before RestoreStarted (and so before QEMU gets the image).
    const journalAt = performance.now();
    let journalMs = 0;
    journaled = ctx.journal.write({ jobId: w.jobId, attempt: w.attempt, fencingToken: w.fencingToken, kind: 'restore', imagePath }).then(() => {
      journalMs = performance.now() - journalAt;
    });
    journaled.catch(() => undefined);
    const result = await restoreImage({
      imagePath,
      verifiedAs,
      ...earlyStart(ctx, job),
      head: intake?.head,
      after: w.request.after,
      content: w.request.verify,
      onProgress: progressReporter(ctx, job, 'restore'),
      prepare: async (d, image) => {
        await journaled;
        job.vm = d.name;
        const status = await ctx.vms.status(d.name);
        if (status !== 'stopped') throw new OpError(`VM ${d.name} is already running on ${ctx.host} (${status}); stop it before restoring`, 'prepare', 'vm-running', false);
        ctx.vms.busy.add(d.name);
        // Checked now (before QEMU gets the image); written beside the load, awaited before the guest may run.
        VmDefinition.parse(d);
        defined = ctx.vms.define(d);
        defined.catch(() => undefined);
        // Decided here (the fencing: a stale attempt is refused before QEMU gets the image); its
        // publish runs beside the load and is acknowledged before the guest may run (beforeResume).
        const decided = track.decideNow(
          { type: 'StartRestore', data: { host: ctx.host, attempt: w.attempt, fencingToken: w.fencingToken, imagePath, format: image.header.format, vm: d } },
          w.attempt,
          log,
        );
        if (!decided) throw new OpError('the job log refused RestoreStarted for this attempt', 'prepare', 'stale-attempt', false);
        started = track.publish();
        started.catch(() => undefined);
        return ctx.vms.socketOf(d.name);
      },
      beforeResume: async () => {
        await Promise.all([started, defined]);
        // The log is read again (before RestoreCompleted is decided) beside `cont`.
        refreshed = track.refresh(log);
      },
    });
    ctx.vms.adopt(result.definition.name, result.vm);
    const finishAt = performance.now();
    await Promise.all([result.qmp.close(), refreshed ?? track.refresh(log)]);
    const finishMs = performance.now() - finishAt;
    const published = await track.apply(
      {
        type: 'CompleteRestore',
        data: {
          host: ctx.host,
          attempt: w.attempt,
          fencingToken: w.fencingToken,
          imagePath,
          vm: result.definition.name,
          durationMs: Math.round(result.durationMs),
          vmState: result.vmState,
          qmpSocket: ctx.vms.socketOf(result.definition.name),
          gate: result.gate,
          start: result.start,
          // contentMs: the seal check, part of gateMs.
          // intakeMs (the job's history read), journalMs, finishMs (QMP session closed, the log re-read) and receivedAt
          // (epoch ms the work item arrived) lie outside durationMs.
          timings: Object.fromEntries(
            Object.entries({ ...result.timings, contentMs: result.content.durationMs, journalMs, finishMs, receivedEpochMs: intake?.receivedEpochMs, intakeMs: intake?.intakeMs })
              .filter((e): e is [string, number] => e[1] !== undefined)
              .map(([k, v]) => [k === 'receivedEpochMs' ? 'receivedAt' : k, k === 'receivedEpochMs' ? v : Math.round(v * 10) / 10]),
          ),
        },
      },
      w.attempt,
      log,
    );
    // The pool's replacement starts now that this restore is done (its own timer, 2 s after the
    // hand-out, is the fallback): a QEMU starting up beside the next restore's load slowed it.
    if (result.start === 'warm') ctx.warm?.note(result.definition);
    const content = result.content;
    if (!content.sealed) log.warn({ imagePath }, 'restored an image with no seal: its content was not checked against digests');
    log.info(
      {
        imagePath,
        vm: result.definition.name,
        durationMs: Math.round(result.durationMs),
        gate: result.gate,
        start: result.start,
        timings: result.timings,
        content: content.sealed ? content.scope : 'unsealed',
        contentGateMs: Math.round(content.durationMs),
        contentBytesRead: content.bytesRead,
        published,
      },
      'restore completed',
    );
  } catch (err) {
    // The journal entry written beside a gate that refused: settled before intake removes it.
    await journaled?.catch(() => undefined);
    await started?.catch(() => undefined);
    await defined?.catch(() => undefined);
    await refreshed;
    const c = classify(err);
    const e = err instanceof OpError ? err : new OpError(c.message, 'restore', c.code, c.retryable, { cause: err });
    await track.refresh(log);
    if (e instanceof OpCancelled) {
      await track.apply({ type: 'ConfirmCancelled', reason: 'cancelled on request', stage: e.stage }, w.attempt, log);
      return;
    }
    await track.apply(
      {
        type: 'FailRestore',
        data: {
          attempt: w.attempt,
          stage: e.stage,
          reason: e.message,
          code: e.code,
          retryable: e.retryable,
          host: ctx.host,
          fencingToken: w.fencingToken,
          qemuStderr: e.qemuStderr?.slice(-4000),
        },
      },
      w.attempt,
      log,
    );
    log.warn({ stage: e.stage, code: e.code }, `restore failed: ${e.message}`);
  }
}

/**
 * The fingerprint the verifier recorded for `imagePath` when it passed the save that wrote it.
 * None when the save's events aged out of the log (`VMSAVE_EVENT_MAX_AGE`): the restore then
 * runs the full gate, the image checked against its own descriptor and seal (not refused).
 */
async function verifiedFingerprint(ctx: ExecutorContext, history: readonly JobEvent[], imagePath: string, log: Logger): Promise<ImageFingerprint | undefined> {
  const requested = history.find((e) => e.type === 'RestoreRequested');
  const source = requested?.type === 'RestoreRequested' ? requested.data.sourceJobId : undefined;
  if (!source) return undefined;
  // The verifier's verdicts alone (direct gets), not the save's whole history; the whole history
  // only when there is none, to tell an aged-out save from one never verified.
  const verdicts = (await jobEventsOfTypes(ctx.bus, source, ['ImageVerified', 'ImageRejected'])).map((l) => l.event);
  if (verdicts.length === 0 && (await jobEvents(ctx.bus, source)).length === 0)
    log.info({ sourceJobId: source, imagePath }, "the source save's events are no longer in the log (retention): full gate, the image checked against its descriptor and seal");
  const last = verdicts.at(-1);
  return last?.type === 'ImageVerified' && last.data.imagePath === imagePath ? last.data.fingerprint : undefined;
}
