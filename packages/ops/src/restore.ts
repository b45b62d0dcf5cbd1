import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { QmpClient } from '@vmsave/qmp';
import { launchVm, prepareIncoming, restoreFromFds, resume, type Accel, type MigrationProgress, type MigrationStats, type PreparedIncoming, type VmProcess } from '@vmsave/qemu';
import { checkRestorable, checkSeal, closeStreamFds, fingerprintImage, openStreamFds, readImage, sameFingerprint, verifyImage, type ImageInfo } from '@vmsave/image/node';
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
  /**
   * Awaited once the image is loaded and before the guest may run (`cont`), or before the result
   * when it stays paused: what `prepare` started and the guest must not run without (the
   * executor's RestoreStarted publish, acknowledged by the log). A rejection fails the restore
   * and kills the QEMU, which ran nothing.
   */
  beforeResume?(): Promise<void>;
  hostCaps: QemuCapabilities;
  /** The definition to start; default the image's own. It must match the image (RAM, machine). */
  definition?: VmDefinition;
  after: 'running' | 'paused' | 'as-saved';
  /** Run the verifier's checks as the gate before QEMU starts (default true). */
  verify?: boolean;
  /**
   * The content check against the image's seal before QEMU starts, whatever `verify` says:
   * `state` (default) the device-state digest, `full` every RAM chunk too (reads all the image's
   * data; refused on an image with no seal). A mismatch refuses the restore (`image-damaged`).
   */
  content?: 'state' | 'full';
  /**
   * The fingerprint the verifier recorded when it passed this image (ImageVerified). When the
   * file still has it, the gate reads only the header and descriptor: the checks already ran on
   * exactly these bytes, and a legacy image would otherwise be read whole before QEMU reads it.
   */
  verifiedAs?: ImageFingerprint | Promise<ImageFingerprint | undefined>;
  accel?: Accel;
  /**
   * A directory (on the file system of the VM's QMP socket) where a QEMU started before the
   * gate and `prepare` finished keeps its QMP socket until it is moved to the VM's path. With it,
   * a cold restore starts QEMU (`-incoming defer`) as soon as the descriptor passed the
   * compatibility check, beside the content gate, the fingerprint and `prepare`: QEMU is given
   * the image only after all of them passed, and is killed when one refuses. Without it, QEMU
   * starts after `prepare` (as with `detached`).
   */
  stagingDir?: string;
  /**
   * Whether a cold QEMU may start before `prepare` (with `stagingDir`): false when the VM may be
   * running here, whose host resources (a listening socket path, a tap device in its arguments) a
   * second QEMU must not touch. Default: yes.
   */
  mayStartEarly?(definition: VmDefinition): boolean | Promise<boolean>;
  /**
   * Start the restored QEMU detached (it outlives this process, stderr appended to the file
   * `logFileOf` names for the definition started: `vmsave restore --local`); default a child of
   * this process whose stderr is piped.
   */
  detached?: { logFileOf(definition: VmDefinition): string };
  signal?: AbortSignal;
  onProgress?(p: MigrationProgress): void;
  /**
   * A QEMU already started with `-incoming defer` from exactly this definition (a warm pool),
   * with a QMP session open on it; undefined starts one as usual. Its socket is moved to the
   * path `prepare` returned. Not used with `detached`.
   */
  warm?(definition: VmDefinition): Promise<{ vm: VmProcess; qmp: QmpClient } | undefined>;
  /**
   * The head of this restore read earlier ({@link startRestoreHead}: the image's header and
   * descriptor, the compatibility check, QEMU started with `-incoming defer`), e.g. at work
   * receipt before the job's history was read. Used when it is of `imagePath` and read without
   * error; otherwise (it failed, another image) the head is read here as without it, and any
   * QEMU it started is killed. It is claimed: {@link discardRestoreHead} leaves it alone then.
   */
  head?: Promise<RestoreHead | undefined>;
}

/** What a restore reads and starts before the rest of its gate (see {@link startRestoreHead}). */
export interface RestoreHead {
  imagePath: string;
  image: ImageInfo;
  definition: VmDefinition;
  /** The QEMU started for it (warm or, with `stagingDir`, cold), or none. */
  early: Promise<EarlyQemu | undefined> | undefined;
  /** Set once a restore took it. */
  claimed: boolean;
  /** `performance.now()` when its read began. */
  startedAt: number;
  /** The content gate (`state` scope only: a few KiB to MiB) started with the head, if it was. */
  content?: { scope: 'state' | 'full'; result: Promise<ContentGate> };
}

type HeadOptions = Pick<RestoreImageOptions, 'imagePath' | 'definition' | 'hostCaps' | 'detached' | 'warm' | 'stagingDir' | 'mayStartEarly' | 'accel' | 'signal'> & {
  /** Also start the content gate of this scope now (`state` only; `full` reads the whole image and waits for the restore). */
  content?: 'state' | 'full';
};

/**
 * Read an image's header and descriptor, check it may be restored here (the refusals of
 * {@link restoreImage}, thrown as the same `OpError`s), and start its QEMU (warm, or with
 * `stagingDir` cold, `-incoming defer`: it gets no image until a restore's gate and `prepare`
 * passed). For a caller that knows the image before it may restore it (the executor at work
 * receipt, before the job's history is read and the attempt admitted): pass the promise as
 * `head`, and {@link discardRestoreHead} it when no restore ran. Never rejects: undefined when
 * the read or a check failed (the restore then reads again and reports it).
 */
export function startRestoreHead(o: HeadOptions): Promise<RestoreHead | undefined> {
  return readRestoreHead(o).catch(() => undefined);
}

/** Kill the QEMU a head started unless a restore claimed it. */
export async function discardRestoreHead(head: Promise<RestoreHead | undefined> | undefined): Promise<void> {
  const h = await head?.catch(() => undefined);
  if (!h || h.claimed) return;
  h.claimed = true;
  await discardEarly(h.early);
}

async function readRestoreHead(o: HeadOptions): Promise<RestoreHead> {
  const startedAt = performance.now();
  let image: ImageInfo;
  try {
    image = await readImage(o.imagePath);
  } catch (err) {
    const c = classify(err);
    throw new OpError(`cannot read image ${o.imagePath}: ${c.message}`, 'prepare', c.code, false, { cause: err });
  }
  const definition = o.definition ?? image.descriptor.vm;
  // The gate also compares the VM's RAM with this host's memory (and its QEMU version, -cpu, machine).
  const verdict = checkRestorable(image, { definition, hostCaps: { memoryMiB: Math.floor(os.totalmem() / 2 ** 20), ...o.hostCaps } });
  if (!verdict.ok) {
    const why = verdict.refusals.map((r) => r.message).join('; ');
    throw new OpError(`refusing to restore ${o.imagePath}: ${why}`, 'prepare', `image-${verdict.refusals[0]!.code}`, false);
  }
  // QEMU starts now, beside the rest of the gate (see `stagingDir`); it gets the image only after
  // the gate and `prepare` passed.
  const early = o.detached ? undefined : startEarly(o, definition, image);
  // Only reads (the seal against the file): its verdict is awaited by the restore's gate, before QEMU gets the image.
  const content = o.content === 'state' ? { scope: o.content, result: contentGate(o.imagePath, o.content, image, o.signal) } : undefined;
  content?.result.catch(() => undefined);
  return { imagePath: o.imagePath, image, definition, early, claimed: false, startedAt, content };
}

/** Where a restore's milliseconds went (ms, from our own clock). */
export interface RestoreTimings {
  /** Reading the image, the checks, the fingerprint or the verifier gate. */
  gateMs: number;
  /** `prepare` (the executor's own bookkeeping: VM state, definition, RestoreStarted). */
  prepareMs: number;
  /**
   * Waiting for QEMU to answer QMP once the gate and `prepare` are done (warm: taking it from the
   * pool). A QEMU started early (`stagingDir`, warm) overlaps the gate; only the rest counts here.
   */
  launchMs: number;
  /** Starting QEMU (or taking the warm one) until it answers QMP, overlapped or not. */
  launchWallMs: number;
  /** Opening the QMP session (warm: 0, the pool's session is handed over). */
  qmpMs: number;
  /** Opening the image and QEMU's incoming migration (set-up included). */
  loadMs: number;
  /** `cont` (about 0 when the VM stays paused). */
  contMs: number;
  /**
   * How long before this restore the head (header, descriptor, QEMU start) was begun at work
   * receipt (`head`); 0 when it was read here.
   */
  headLeadMs: number;
  /** Waiting here for that head (part of `gateMs`). */
  headWaitMs: number;
  /** Of `loadMs`: QMP queries, fdset and settings before `migrate-incoming`; QEMU's load to `completed`; the fdset removed after it. */
  loadSetupMs: number;
  loadTransferMs: number;
  loadCleanupMs: number;
}

export interface ContentGate {
  sealed: boolean;
  scope: 'state' | 'full';
  bytesRead: number;
  durationMs: number;
}

export interface RestoreImageResult {
  vm: VmProcess;
  qmp: QmpClient;
  definition: VmDefinition;
  image: ImageInfo;
  vmState: 'running' | 'paused';
  /** Which gate ran before QEMU started (see `verifiedAs`). */
  gate: 'full' | 'quick';
  /** The content check against the seal (`sealed: false`: the image has none, nothing was checked). */
  content: ContentGate;
  durationMs: number;
  stats: MigrationStats;
  /** `warm`: a pool QEMU took the image; `cold`: one was started for it. */
  start: 'warm' | 'cold';
  timings: RestoreTimings;
}

/**
 * Restore a vmsave image into a new QEMU: refuse, before QEMU starts, an image that is partial,
 * of an unknown version, of a format this QEMU lacks, or whose RAM/machine do not match the
 * definition; then (a warm QEMU, or with `stagingDir` a cold one started now, beside the content
 * gate, the fingerprint and `prepare`; else one started after them) with `-incoming defer`, and
 * only once the gate and `prepare` passed: pass read-only fds, `migrate-incoming` at the stream
 * offset, and `cont` if asked (or if the VM was running when saved). On failure, or a refusal of
 * the gate or `prepare`, the new QEMU is killed (it never saw the image) and its stderr is in the error.
 */
export async function restoreImage(o: RestoreImageOptions): Promise<RestoreImageResult> {
  const t0 = performance.now();
  let stage: OpStage = 'prepare';
  // A head read (and QEMU started) at work receipt, if it is still this image's; else read now.
  const pre = o.head ? await o.head.catch(() => undefined) : undefined;
  const headWaitMs = o.head ? performance.now() - t0 : 0;
  const usable = pre && !pre.claimed && pre.imagePath === o.imagePath && !o.detached && (o.definition ?? pre.image.descriptor.vm) === pre.definition ? pre : undefined;
  if (pre && !usable) await discardRestoreHead(Promise.resolve(pre));
  if (usable) usable.claimed = true;
  const head = usable ?? (await readRestoreHead(o));
  const { image, definition, early } = head;
  let content: ContentGate;
  let gate: 'full' | 'quick';
  try {
    // The seal's content check, the file's fingerprint and the verifier's recorded one are independent reads.
    const scope = o.content ?? 'state';
    const [c, current, verifiedAs] = await Promise.all([
      head.content && head.content.scope === scope ? head.content.result : contentGate(o.imagePath, scope, image, o.signal),
      o.verifiedAs ? fingerprintImage(o.imagePath).catch(() => undefined) : undefined,
      Promise.resolve(o.verifiedAs).catch(() => undefined),
    ]);
    content = c;
    const unchanged = !!current && !!verifiedAs && sameFingerprint(current, verifiedAs);
    gate = o.verify === false || unchanged ? 'quick' : 'full';
    if (gate === 'full') {
      // The verifier is the gate: QEMU crashes or "completes" with garbage on some damaged images.
      const v = await verifyImage(o.imagePath, { hostCaps: o.hostCaps });
      const failed = v.checks.filter((c) => c.status === 'fail');
      if (failed.length) {
        throw new OpError(`refusing to restore ${o.imagePath}: ${failed.map((c) => `${c.name}: ${c.detail}`).join('; ')}`, 'prepare', `image-check-${failed[0]!.name}`, false);
      }
    }
  } catch (err) {
    await discardEarly(early);
    throw err;
  }

  let vm: VmProcess | undefined;
  let qmp: QmpClient | undefined;
  let fds: { buffered: number; direct?: number } | undefined;
  // The image's read-only fds are opened now, beside `prepare` and the hand-over; QEMU gets them
  // only after both (closed here on any failure, QEMU never having seen them).
  const opening = openStreamFds(o.imagePath, { mode: 'restore', directIo: image.header.directIo });
  opening.catch(() => undefined);
  let fdsTaken = false;
  const closeFds = () => {
    if (!fdsTaken) {
      fdsTaken = true;
      void opening.then(closeStreamFds, () => undefined);
    }
    closeStreamFds(fds);
    fds = undefined;
  };
  const timings: RestoreTimings = {
    gateMs: performance.now() - t0,
    prepareMs: 0,
    launchMs: 0,
    launchWallMs: 0,
    qmpMs: 0,
    loadMs: 0,
    contMs: 0,
    headLeadMs: usable ? t0 - usable.startedAt : 0,
    headWaitMs: usable ? headWaitMs : 0,
    loadSetupMs: 0,
    loadTransferMs: 0,
    loadCleanupMs: 0,
  };
  let start: 'warm' | 'cold' = 'cold';
  let prepared: Promise<PreparedIncoming | undefined> | undefined;
  try {
    let mark = performance.now();
    const lap = () => {
      const now = performance.now();
      const ms = now - mark;
      mark = now;
      return ms;
    };
    let socket: string | undefined;
    try {
      socket = o.prepare ? await o.prepare(definition, image) : o.qmpSocketPath;
      if (!socket) throw new OpError('no QMP socket path for the restored VM', 'prepare', 'config', false);
    } catch (err) {
      await discardEarly(early);
      throw err;
    }
    timings.prepareMs = lap();
    stage = 'start-qemu';
    const got = early && (await handOver(await early, socket));
    if (got) {
      ({ vm, qmp, prepared } = got);
      start = got.start;
      timings.launchWallMs = got.wallMs;
      timings.launchMs = lap();
    } else {
      const launched = performance.now();
      vm = await launchVm(definition, {
        qmpSocketPath: socket,
        incoming: 'defer',
        accel: o.accel,
        signal: o.signal,
        detached: o.detached && { logFile: o.detached.logFileOf(definition) },
        keepQmp: !o.detached,
      });
      timings.launchMs = lap();
      timings.launchWallMs = performance.now() - launched;
      qmp = vm.takeQmp?.() ?? (await vm.connectQmp());
      timings.qmpMs = lap();
    }
    stage = 'restore';
    const h = image.header;
    fdsTaken = true;
    fds = await opening;
    const stats = await restoreFromFds(qmp, {
      // The queries and settings made on the early QEMU while the gate ran (made again here if that failed).
      prepared: await prepared,
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
    timings.loadMs = lap();
    timings.loadSetupMs = stats.setupMs ?? 0;
    timings.loadTransferMs = stats.wallTimeMs;
    timings.loadCleanupMs = stats.cleanupMs ?? 0;
    stage = 'resume';
    await o.beforeResume?.();
    const run = o.after === 'running' || (o.after === 'as-saved' && h.wasRunning);
    // The incoming migration completed: `cont` without asking the state first.
    if (run) await resume(qmp, { signal: o.signal, incomingCompleted: true });
    timings.contMs = lap();
    return { vm, qmp, definition, image, vmState: run ? 'running' : 'paused', gate, content, durationMs: performance.now() - t0, stats, start, timings };
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

/**
 * The content gate: the image's bytes against its seal, before anything is started. A sealed
 * image is always checked (`state`: the device-state region, a few KiB to MiB; `full`: every RAM
 * chunk too); a mismatch refuses the restore naming the region and the offsets. An image with no
 * seal passes `state` unchecked (`sealed: false`, the caller warns) and is refused for `full`.
 */
async function contentGate(imagePath: string, scope: 'state' | 'full', image: ImageInfo, signal?: AbortSignal): Promise<ContentGate> {
  let sc: Awaited<ReturnType<typeof checkSeal>>;
  try {
    // The header and descriptor the gate already read (not read a second time); the seal is checked against the file's bytes.
    sc = await checkSeal(imagePath, { scope, signal, head: image });
  } catch (err) {
    const c = classify(err);
    throw new OpError(`cannot check the content of ${imagePath}: ${c.message}`, 'prepare', c.code, c.retryable, { cause: err });
  }
  if (!sc.sealed && scope === 'full') {
    throw new OpError(
      `refusing to restore ${imagePath}: cannot verify content: image has no seal (verify: 'full' needs one; 'state' restores it unchecked)`,
      'prepare',
      'image-unsealed',
      false,
    );
  }
  if (sc.sealed && !sc.ok) {
    const failed = sc.checks.filter((c) => c.status === 'fail');
    const where = sc.mismatches
      .slice(0, 8)
      .map((m) => `${m.region} bytes ${m.start}–${m.end}`)
      .join(', ');
    const more = sc.mismatches.length > 8 ? ` and ${sc.mismatches.length - 8} more range(s)` : '';
    const why = where ? `${where}${more}` : failed.map((c) => `${c.name}: ${c.detail}`).join('; ');
    throw new OpError(`refusing to restore ${imagePath}: image damaged: its content differs from its seal at ${why}`, 'prepare', 'image-damaged', false);
  }
  return { sealed: sc.sealed, scope, bytesRead: sc.bytesRead, durationMs: sc.durationMs };
}

export interface EarlyQemu {
  vm: VmProcess;
  qmp: QmpClient;
  start: 'warm' | 'cold';
  /** From the start (or the take) until QEMU answered QMP. */
  wallMs: number;
  /** The restore's QMP set-up made on it at once (`prepareIncoming`: no image, no fd); undefined when that failed. */
  prepared?: Promise<PreparedIncoming | undefined>;
}

/**
 * A QEMU for `definition` started before the gate finished: a warm one from the pool, else (with
 * `stagingDir`) one started with `-incoming defer` on a socket in that directory. Never rejects:
 * undefined when neither is there or the start failed (the restore then starts one as before,
 * whose error, if any, is the one reported).
 */
function startEarly(o: HeadOptions, definition: VmDefinition, image: ImageInfo): Promise<EarlyQemu | undefined> | undefined {
  if (!o.warm && !o.stagingDir) return undefined;
  const h = image.header;
  const incoming = (qmp: QmpClient, vm?: VmProcess): Promise<PreparedIncoming | undefined> =>
    prepareIncoming(qmp, {
      format: h.format,
      channels: h.format === 'sparse' ? Math.max(1, h.channels) : undefined,
      directIo: h.directIo,
      offset: h.streamOffset,
      signal: o.signal,
      process: vm,
    }).catch(() => undefined);
  const prepare = (got: EarlyQemu, prepared?: Promise<PreparedIncoming | undefined>): EarlyQemu => ({ ...got, prepared: prepared ?? incoming(got.qmp, got.vm) });
  return (async () => {
    const t = performance.now();
    const warm = o.warm ? await o.warm(definition).catch(() => undefined) : undefined;
    if (warm) return prepare({ ...warm, start: 'warm' as const, wallMs: performance.now() - t });
    if (!o.stagingDir || o.signal?.aborted) return undefined;
    let vm: VmProcess | undefined;
    try {
      if (!(await (o.mayStartEarly?.(definition) ?? true))) return undefined;
      await mkdir(o.stagingDir, { recursive: true });
      // The migration queries go out on the launch's own session with its readiness query (one round trip).
      let prepared: Promise<PreparedIncoming | undefined> | undefined;
      vm = await launchVm(definition, {
        qmpSocketPath: path.join(o.stagingDir, `r${process.pid}-${randomUUID().slice(0, 8)}.qmp`),
        incoming: 'defer',
        accel: o.accel,
        signal: o.signal,
        keepQmp: true,
        onSession: (session) => {
          prepared = incoming(session);
        },
      });
      const kept = vm.takeQmp?.();
      const qmp = kept ?? (await vm.connectQmp());
      return prepare({ vm, qmp, start: 'cold' as const, wallMs: performance.now() - t }, kept ? prepared : undefined);
    } catch {
      await vm?.kill().catch(() => undefined);
      return undefined;
    }
  })();
}

/**
 * The early QEMU, its socket moved to `socket`, if it still lives (its process, its QMP session);
 * otherwise it is killed and undefined is returned.
 */
async function handOver(got: EarlyQemu | undefined, socket: string): Promise<EarlyQemu | undefined> {
  if (!got) return undefined;
  try {
    if (got.vm.exitStatus !== undefined || got.qmp.runState !== 'running') throw new Error('the early QEMU is gone');
    await got.vm.moveQmpSocket(socket);
    return got;
  } catch {
    await discardEarly(Promise.resolve(got));
    return undefined;
  }
}

/** Kill a QEMU started early for a restore that was refused before it was handed over. */
async function discardEarly(early: Promise<EarlyQemu | undefined> | undefined): Promise<void> {
  const got = await early?.catch(() => undefined);
  if (!got) return;
  await got.qmp.close().catch(() => undefined);
  await got.vm.kill().catch(() => undefined);
  await Promise.resolve(got.vm[Symbol.asyncDispose]()).catch(() => undefined);
}
