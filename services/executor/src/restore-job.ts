import type { ImageFingerprint, JobEvent, RestoreWork } from '@vmsave/contracts';
import { eventsOfJob, type Logger } from '@vmsave/bus';
import { OpCancelled, OpError, classify, restoreImage } from '@vmsave/ops';
import type { ExecutorContext, InFlight } from './context.ts';
import type { JobTrack } from './job-log.ts';
import { resolveImagePath } from './image-path.ts';
import { progressReporter } from './progress.ts';

/** Run one restore attempt and record its outcome (RestoreStarted, then RestoreCompleted, RestoreFailed or RestoreCancelled) through `decide`. */
export async function runRestore(ctx: ExecutorContext, w: RestoreWork, job: InFlight, track: JobTrack, log: Logger): Promise<void> {
  let imagePath = '';
  try {
    imagePath = await resolveImagePath(ctx.cfg.imageDir, w.request.image);
    const verifiedAs = await verifiedFingerprint(ctx, track.history, imagePath);
    await ctx.journal.write({ jobId: w.jobId, attempt: w.attempt, fencingToken: w.fencingToken, kind: 'restore', imagePath });
    const result = await restoreImage({
      imagePath,
      verifiedAs,
      hostCaps: ctx.caps,
      after: w.request.after,
      content: w.request.verify,
      warm: ctx.warm?.enabled ? (d) => ctx.warm!.take(d) : undefined,
      accel: ctx.caps.accel,
      signal: job.ac.signal,
      onProgress: progressReporter(ctx, job, 'restore'),
      prepare: async (d, image) => {
        job.vm = d.name;
        const status = await ctx.vms.status(d.name);
        if (status !== 'stopped') throw new OpError(`VM ${d.name} is already running on ${ctx.host} (${status}); stop it before restoring`, 'prepare', 'vm-running', false);
        ctx.vms.busy.add(d.name);
        await ctx.vms.define(d);
        const ok = await track.apply(
          { type: 'StartRestore', data: { host: ctx.host, attempt: w.attempt, fencingToken: w.fencingToken, imagePath, format: image.header.format, vm: d } },
          w.attempt,
          log,
        );
        if (!ok) throw new OpError('the job log refused RestoreStarted for this attempt', 'prepare', 'stale-attempt', false);
        return ctx.vms.socketOf(d.name);
      },
    });
    ctx.vms.adopt(result.definition.name, result.vm);
    await result.qmp.close();
    await track.refresh(log);
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
          timings: Object.fromEntries(Object.entries({ ...result.timings, contentMs: result.content.durationMs }).map(([k, v]) => [k, Math.round(v * 10) / 10])),
        },
      },
      w.attempt,
      log,
    );
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

/** The fingerprint the verifier recorded for `imagePath` when it passed the save that wrote it. */
async function verifiedFingerprint(ctx: ExecutorContext, history: readonly JobEvent[], imagePath: string): Promise<ImageFingerprint | undefined> {
  const requested = history.find((e) => e.type === 'RestoreRequested');
  const source = requested?.type === 'RestoreRequested' ? requested.data.sourceJobId : undefined;
  if (!source) return undefined;
  const verdicts = (await eventsOfJob(ctx.bus, source)).map((l) => l.event).filter((e) => e.type === 'ImageVerified' || e.type === 'ImageRejected');
  const last = verdicts.at(-1);
  return last?.type === 'ImageVerified' && last.data.imagePath === imagePath ? last.data.fingerprint : undefined;
}
