/**
 * Images on the bus's own storage (`@vmsave/replica`): after a save of this host is verified, its
 * image is uploaded into the JetStream object store when the save asked `replicate: bus` (or the
 * host's default `VMSAVE_REPLICATE=bus` and the save did not say `none`); before a restore whose
 * image is not here but was replicated, it is downloaded first (`ensureLocalImage`).
 *
 * The uploads follow the log's `ImageVerified` events (an ordered consumer on that type; those older
 * than `VMSAVE_REPLICATE_LOOKBACK` are passed over without reading their jobs), so a restart picks up an upload a crash interrupted: the
 * upload runs again, keeps the parts the killed run finished, sweeps the chunks it left, and ends
 * with `ImageReplicated` or `ImageReplicationFailed` on the save's job. Nothing is uploaded while
 * the log cannot say the image is verified, and one upload runs at a time.
 */
import { access } from 'node:fs/promises';
import path from 'node:path';
import { messages, subjects, type RestoreWork } from '@vmsave/contracts';
import { eventsOfJob, publishCore, readLog, type Logger } from '@vmsave/bus';
import { fold, type JobState } from '@vmsave/jobs';
import { OpError } from '@vmsave/ops';
import { NatsObjectImageStore, ReplicaError, downloadImage, replicaCodeOf, uploadImage, type ImageStore, type TransferProgress } from '@vmsave/replica';
import type { ExecutorContext, InFlight } from './context.ts';
import { resolveImagePath } from './image-path.ts';
import { JobTrack } from './job-log.ts';

const stores = new WeakMap<object, Promise<ImageStore>>();

/** The image store of this executor's connection (opened once; the bucket is created when missing). */
export function imageStoreOf(ctx: Pick<ExecutorContext, 'bus'>): Promise<ImageStore> {
  let s = stores.get(ctx.bus);
  if (!s) {
    s = NatsObjectImageStore.open(ctx.bus.js, ctx.bus.jsm);
    s.catch(() => stores.delete(ctx.bus));
    stores.set(ctx.bus, s);
  }
  return s;
}

/** Use `store` for this executor's connection instead of the bucket (tests; a future shared-directory or S3 store). */
export function useImageStore(ctx: Pick<ExecutorContext, 'bus'>, store: ImageStore): void {
  stores.set(ctx.bus, Promise.resolve(store));
}

/** Whether a save wants its image replicated: its request's `replicate`, else the host's default. */
export function wantsReplica(s: JobState, hostDefault: 'bus' | 'none'): boolean {
  return (s.saveRequest?.replicate ?? hostDefault) === 'bus';
}

/** The object key of a save's image: its job id (one image per save job). */
export const replicaKeyOf = (jobId: string): string => jobId;

/** Samples on `vmsave.progress.<jobId>` (≤ 5/s, best effort), stage `replicate` or `fetch`. */
function transferProgress(ctx: Pick<ExecutorContext, 'bus' | 'host'>, jobId: string, stage: 'replicate' | 'fetch', job?: InFlight) {
  let last = 0;
  return (p: TransferProgress, final = false) => {
    const now = Date.now();
    if (!final && now - last < 200) return;
    last = now;
    const rate = p.elapsedMs > 0 ? (p.doneBytes / p.elapsedMs) * 1000 : 0;
    const remaining = Math.max(0, p.totalBytes - p.doneBytes);
    try {
      publishCore(ctx.bus, messages.progress, subjects.progress(jobId), {
        jobId,
        at: new Date(now).toISOString(),
        host: ctx.host,
        stage,
        status: final ? 'completed' : 'active',
        totalBytes: p.totalBytes,
        transferredBytes: p.doneBytes,
        remainingBytes: remaining,
        bytesPerSec: rate,
        ...(rate > 0 ? { etaMs: (remaining / rate) * 1000 } : {}),
      });
    } catch {
      /* progress is best effort */
    }
    if (job) job.stage = `${stage}:${final ? 'completed' : 'active'}`;
  };
}

/**
 * Upload the image of save job `jobId` when it is this host's, verified, still there, wanted and
 * not yet replicated. Records `ImageReplicated` or `ImageReplicationFailed`; never throws.
 */
export async function replicateSave(ctx: ExecutorContext, jobId: string, signal: AbortSignal): Promise<'replicated' | 'failed' | 'skipped'> {
  const log = ctx.log.child({ jobId });
  let track: JobTrack;
  try {
    track = await JobTrack.load(ctx, jobId);
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'replication: could not read the job from the log');
    return 'failed';
  }
  const s = track.state;
  if (s.kind !== 'save' || s.status !== 'verified' || s.host !== ctx.host || !s.imagePath || s.imageDeleted || s.replicated) return 'skipped';
  if (!wantsReplica(s, ctx.cfg.VMSAVE_REPLICATE)) return 'skipped';
  const imagePath = s.imagePath;
  const progress = transferProgress(ctx, jobId, 'replicate');
  let bucket: string | undefined;
  try {
    const store = await imageStoreOf(ctx);
    bucket = store.bucket;
    const local = await resolveImagePath(ctx.cfg.imageDir, imagePath);
    log.info({ imagePath, bucket }, 'replication: uploading the verified image');
    const r = await uploadImage(store, local, replicaKeyOf(jobId), { host: ctx.host, jobId, imagePath, signal, onProgress: (p) => progress(p) });
    progress({ doneBytes: r.dataBytes, totalBytes: r.dataBytes, elapsedMs: r.seconds * 1000 }, true);
    const data = {
      imagePath,
      host: ctx.host,
      bucket: r.bucket,
      object: r.key,
      bytesMoved: r.bytesMoved,
      allocatedBytes: r.allocatedBytes,
      extents: r.extents,
      seconds: Math.round(r.seconds * 1000) / 1000,
    };
    await track.apply({ type: 'RecordReplication', data }, s.attempt, log);
    log.info({ ...data, partsKept: r.partsKept, alreadyComplete: r.alreadyComplete }, 'replication: image uploaded');
    return 'replicated';
  } catch (err) {
    if (signal.aborted) {
      // Stopping: the next start uploads it again (the log still says it is not replicated).
      log.info({ imagePath }, 'replication: interrupted by the executor stopping; resumed at the next start');
      return 'failed';
    }
    const code = replicaCodeOf(err);
    const reason = (err as Error)?.message ?? String(err);
    await track
      .apply({ type: 'FailReplication', data: { imagePath, host: ctx.host, reason, code, ...(bucket ? { bucket } : {}) } }, s.attempt, log)
      .catch((e: unknown) => log.warn({ err: (e as Error).message }, 'replication: could not record the failure'));
    log.warn({ imagePath, code }, `replication failed: ${reason}`);
    return 'failed';
  }
}

/**
 * Follow the log's `ImageVerified` events (those of the last `VMSAVE_REPLICATE_LOOKBACK`) and upload each
 * of this host's images that should be replicated, one at a time, until `signal` aborts.
 */
export async function runReplication(ctx: ExecutorContext, signal: AbortSignal): Promise<void> {
  const since = Date.now() - ctx.cfg.VMSAVE_REPLICATE_LOOKBACK;
  try {
    for await (const { event } of readLog(ctx.bus, {
      filter: subjects.evtOfType('ImageVerified'),
      follow: true,
      signal,
      onResume: (reason) => ctx.log.warn({ err: (reason as Error)?.message }, 'replication: reading the log again'),
    })) {
      if (event.type !== 'ImageVerified' || (event.data.host && event.data.host !== ctx.host)) continue;
      if (Date.parse(event.at) < since) continue;
      await replicateSave(ctx, event.jobId, signal);
      if (signal.aborted) return;
    }
  } catch (err) {
    if (!signal.aborted) ctx.log.error({ err: (err as Error).message }, 'replication: the log follower stopped');
  }
}

/**
 * The save job whose replicated image is `rel` (relative to an image directory) or `requested`
 * (as the restore named it), the newest first: for a restore the scheduler placed on a host that
 * does not hold the image (`--host`), whose request then names no source job.
 */
async function replicatedSaveOf(ctx: ExecutorContext, rel: string, requested: string): Promise<string | undefined> {
  let found: string | undefined;
  for await (const { event } of readLog(ctx.bus, { filter: subjects.evtOfType('ImageReplicated') })) {
    if (event.type !== 'ImageReplicated') continue;
    const p = event.data.imagePath;
    if (p === requested || p === rel || p.endsWith(`/${rel}`)) found = event.jobId;
  }
  return found;
}

/** A complete copy of a save's image in this host's bucket, found by its key alone (no event needed). */
async function storedReplicaOf(ctx: ExecutorContext, sourceJobId: string, log: Logger): Promise<{ bucket: string; object: string } | undefined> {
  try {
    const store = await imageStoreOf(ctx);
    const key = replicaKeyOf(sourceJobId);
    return (await store.getManifest(key)) ? { bucket: store.bucket, object: key } : undefined;
  } catch (err) {
    log.warn({ sourceJobId, err: (err as Error)?.message }, 'fetch: could not look for a copy of the image in the bucket');
    return undefined;
  }
}
/**
 * Before a restore: when `imagePath` is not on this host but the log says the save that wrote it
 * (the restore's `sourceJobId`, else the newest `ImageReplicated` of that path) was replicated, download it into place (extents and seal checked)
 * and record `ImageFetched`; a failed download records `ImageFetchFailed` and throws an OpError
 * (stage `prepare`) for the restore's failure. Does nothing when the file is here or the image was
 * never replicated (the restore's own checks then speak).
 */
export async function ensureLocalImage(ctx: ExecutorContext, w: RestoreWork, job: InFlight, track: JobTrack, imagePath: string, log: Logger): Promise<void> {
  if (
    await access(imagePath).then(
      () => true,
      () => false,
    )
  )
    return;
  const requested = track.history.find((e) => e.type === 'RestoreRequested');
  const sourceJobId =
    (requested?.type === 'RestoreRequested' ? requested.data.sourceJobId : undefined) ?? (await replicatedSaveOf(ctx, path.relative(ctx.cfg.imageDir, imagePath), w.request.image));
  if (!sourceJobId) return;
  const source = fold((await eventsOfJob(ctx.bus, sourceJobId)).map((l) => l.event));
  // The save's events may have aged out of the log (VMSAVE_EVENT_MAX_AGE): then the store itself
  // says whether its copy is complete (a manifest is written last).
  const rep = source.replicated ?? (await storedReplicaOf(ctx, sourceJobId, log));
  if (!rep) return;
  const progress = transferProgress(ctx, w.jobId, 'fetch', job);
  try {
    const store = await imageStoreOf(ctx);
    if (store.bucket !== rep.bucket) throw new ReplicaError('replica-missing', `the image was replicated to bucket ${rep.bucket}; this executor uses ${store.bucket}`);
    log.info({ imagePath, bucket: rep.bucket, object: rep.object, sourceJobId }, 'fetch: the image is not on this host; downloading its replica');
    const r = await downloadImage(store, rep.object, imagePath, { signal: job.ac.signal, onProgress: (p) => progress(p) });
    progress({ doneBytes: r.dataBytes, totalBytes: r.dataBytes, elapsedMs: r.seconds * 1000 }, true);
    const data = {
      imagePath,
      host: ctx.host,
      bucket: r.bucket,
      object: r.key,
      sourceJobId,
      bytesMoved: r.bytesMoved,
      allocatedBytes: r.allocatedBytes,
      extents: r.extents,
      seconds: Math.round(r.seconds * 1000) / 1000,
    };
    await track.apply({ type: 'RecordFetch', data }, w.attempt, log);
    log.info(data, 'fetch: image downloaded');
  } catch (err) {
    if (job.ac.signal.aborted) throw err;
    const code = replicaCodeOf(err);
    const reason = (err as Error)?.message ?? String(err);
    await track.apply({ type: 'FailFetch', data: { imagePath, host: ctx.host, bucket: rep.bucket, object: rep.object, reason, code } }, w.attempt, log);
    // A damaged or missing replica stays so: only an I/O or bus failure is worth another attempt.
    const retryable = !(err instanceof ReplicaError) || err.code === 'replica-exists';
    throw new OpError(`fetching the image from bucket ${rep.bucket}: ${reason}`, 'prepare', code, retryable, { cause: err });
  }
}
