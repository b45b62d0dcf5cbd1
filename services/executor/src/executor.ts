import { access, mkdir, readdir, readFile, realpath, rm, statfs, unlink, writeFile, lstat } from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import {
  ControlReply, ControlRequest, WorkItem, makeEvent, messages, subjects, streams,
  type ImageFingerprint, type JobEvent, type QemuCapabilities, type RestoreWork, type SaveWork, type VmDefinition,
} from '@vmsave/contracts';
import {
  ack, decodeMessage, eventsOfJob, publishCore, publishEvent, publishValidated, runConsumer,
  type Bus, type Logger, type MessageContext, type Outcome,
} from '@vmsave/bus';
import { probeQemu, detectAccel, resume, type Accel, type MigrationProgress } from '@vmsave/qemu';
import { QmpBusyError, QmpClient } from '@vmsave/qmp';
import type { ExecutorConfig } from './config.ts';
import { VmRegistry } from './vms.ts';
import { saveVm, type SavePoint } from './ops/save.ts';
import { restoreImage } from './ops/restore.ts';
import { OpCancelled, OpError, classify } from './ops/errors.ts';

interface InFlight {
  jobId: string;
  attempt: number;
  fencingToken: number;
  kind: 'save' | 'restore';
  vm?: string;
  stage: string;
  ac: AbortController;
}

/** What survives an executor crash: enough to close the job and resume the VM after a restart. */
interface JobRecord {
  jobId: string;
  attempt: number;
  fencingToken: number;
  kind: 'save' | 'restore';
  vm?: string;
  imagePath?: string;
  wasRunning?: boolean;
}

/**
 * One executor per hypervisor host: takes work from `vmsave.work.<host>`, drives QEMU,
 * announces the host and its VMs, sends heartbeats naming its in-flight jobs, and answers
 * cancel requests on `vmsave.ctl.<host>`.
 */
export class Executor {
  readonly vms: VmRegistry;
  caps!: QemuCapabilities;
  private accel: Accel = 'tcg';
  private readonly inflight = new Map<string, InFlight>();
  private readonly cancelled = new Map<string, string>();
  private readonly ac = new AbortController();
  private readonly tasks: Promise<unknown>[] = [];
  private readonly executorId = randomUUID();
  private readonly startedAt = new Date().toISOString();
  private throughput: number | undefined;
  private readonly source: string;

  constructor(private readonly bus: Bus, private readonly cfg: ExecutorConfig, private readonly log: Logger) {
    this.vms = new VmRegistry(cfg.vmDir, cfg.qmpDir, 'tcg');
    this.source = `executor@${cfg.VMSAVE_HOST}`;
  }

  get host(): string {
    return this.cfg.VMSAVE_HOST;
  }

  async init(): Promise<void> {
    this.accel = await detectAccel();
    const q = await probeQemu();
    this.caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel: this.accel };
    (this.vms as unknown as { accel: Accel }).accel = this.accel;
    await this.vms.init();
    await mkdir(this.cfg.imageDir, { recursive: true });
    await mkdir(this.cfg.jobsDir, { recursive: true });
  }

  async start(): Promise<void> {
    await this.init();
    const signal = this.ac.signal;
    await this.reconcile();
    await this.autostart();
    await this.announce();
    const announce = setInterval(() => void this.announce().catch((err) => this.log.warn({ err }, 'announce failed')), this.cfg.VMSAVE_ANNOUNCE_MS);
    const hb = setInterval(() => this.heartbeat(), this.cfg.VMSAVE_HEARTBEAT_MS);
    this.heartbeat();
    const off = this.bus.onReconnect(() => this.heartbeat());
    signal.addEventListener('abort', () => { clearInterval(announce); clearInterval(hb); off(); }, { once: true });

    const ctl = this.bus.nc.subscribe(subjects.control(this.host));
    signal.addEventListener('abort', () => ctl.unsubscribe(), { once: true });
    this.tasks.push(
      (async () => {
        for await (const m of ctl) {
          let reply: ControlReply;
          try {
            reply = this.onControl(decodeMessage(ControlRequest, m.data, m.subject));
          } catch (err) {
            reply = { ok: false, message: (err as Error).message };
          }
          m.respond(JSON.stringify(reply));
        }
      })(),
      runConsumer(this.bus, {
        stream: streams.work.name,
        durable: `executor-${this.host}`,
        filterSubject: subjects.work(this.host),
        schema: WorkItem,
        service: `executor-${this.host}`,
        concurrency: this.cfg.VMSAVE_MAX_CONCURRENT,
        ackWaitMs: 30_000,
        maxDeliver: 5,
        log: this.log,
        signal,
        handler: (w, ctx) => this.onWork(w, ctx),
      }),
    );
    this.log.info({ host: this.host, qemu: this.caps.version, accel: this.accel, imageDir: this.cfg.imageDir }, 'executor running');
  }

  /** Stop taking work; in-flight jobs are cancelled (their VMs resumed) before the bus closes. */
  async stop(): Promise<void> {
    for (const j of this.inflight.values()) j.ac.abort('shutdown');
    const deadline = Date.now() + 20_000;
    while (this.inflight.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    this.ac.abort();
    await Promise.allSettled(this.tasks);
  }

  /** Start the VMs named in VMSAVE_AUTOSTART that are defined and not running (detached: they outlive us). */
  private async autostart(): Promise<void> {
    for (const name of this.cfg.VMSAVE_AUTOSTART) {
      try {
        if (!(await this.vms.get(name))) {
          this.log.warn({ vm: name }, 'autostart: no such VM definition');
          continue;
        }
        if ((await this.vms.status(name)) !== 'stopped') continue;
        const vm = await this.vms.start(name, { detached: true });
        this.log.info({ vm: name, pid: vm.pid }, 'autostarted VM');
      } catch (err) {
        this.log.warn({ vm: name, err: (err as Error).message }, 'autostart failed');
      }
    }
  }

  /* ---------------- bus presence ---------------- */

  private announcing: Promise<void> | undefined;

  /**
   * Publish this host's announcement. One at a time: on a host with many VMs asking each QEMU its
   * state can outlast the interval, and a second round would find every QEMU busy with the first.
   */
  announce(): Promise<void> {
    this.announcing ??= this.announceOnce().finally(() => {
      this.announcing = undefined;
    });
    return this.announcing;
  }

  private async announceOnce(): Promise<void> {
    const fs = await statfs(this.cfg.imageDir);
    await publishValidated(this.bus, messages.hostAnnouncement, subjects.host(this.host), {
      host: this.host, executorId: this.executorId, at: new Date().toISOString(), startedAt: this.startedAt,
      qemu: this.caps, imageDir: this.cfg.imageDir, sharedImageDir: this.cfg.VMSAVE_SHARED_IMAGE_DIR,
      freeBytes: fs.bavail * fs.bsize, throughputBytesPerSec: this.throughput, maxConcurrentJobs: this.cfg.VMSAVE_MAX_CONCURRENT,
      vms: await this.vms.summaries(),
    });
  }

  private heartbeat(): void {
    try {
      publishCore(this.bus, messages.heartbeat, subjects.heartbeat(this.host), {
        host: this.host, executorId: this.executorId, at: new Date().toISOString(),
        jobs: [...this.inflight.values()].map((j) => ({ jobId: j.jobId, attempt: j.attempt, stage: j.stage, fencingToken: j.fencingToken })),
      });
    } catch (err) {
      this.log.warn({ err }, 'heartbeat failed');
    }
  }

  private onControl(req: ControlRequest): ControlReply {
    const j = this.inflight.get(req.jobId);
    if (j) {
      j.ac.abort('cancelled');
      return { ok: true, message: `cancelling ${req.jobId} at stage ${j.stage}` };
    }
    this.cancelled.set(req.jobId, req.reason);
    return { ok: true, message: `${req.jobId} is not running here; it will be cancelled if its work arrives` };
  }

  /* ---------------- work ---------------- */

  private async onWork(w: WorkItem, ctx: MessageContext): Promise<Outcome> {
    const log = this.log.child({ jobId: w.jobId, attempt: w.attempt });
    // A redelivered item whose attempt the log already closed (e.g. after a crash) is done.
    const history = await eventsOfJob(this.bus, w.jobId);
    if (history.some(({ event: e }) => closesAttempt(e, w.attempt))) {
      log.info('work for an attempt that is already closed; skipping');
      return ack();
    }
    const running = this.inflight.get(w.jobId);
    if (running) {
      // A redelivery while the first delivery still runs (e.g. after a NATS failover lost the
      // in-progress signal): the running one owns the work.
      log.warn({ runningAttempt: running.attempt }, 'work item redelivered while it runs here; ignoring the copy');
      return ack();
    }
    if (this.cancelled.has(w.jobId)) {
      const reason = this.cancelled.get(w.jobId)!;
      this.cancelled.delete(w.jobId);
      await this.emit(w.kind === 'save' ? 'SaveCancelled' : 'RestoreCancelled', w, { reason, stage: 'queued' });
      return ack();
    }
    const ac = new AbortController();
    const job: InFlight = { jobId: w.jobId, attempt: w.attempt, fencingToken: w.fencingToken, kind: w.kind, stage: 'starting', ac };
    this.inflight.set(w.jobId, job);
    const deadlineMs = Date.parse(w.deadlineAt) - Date.now();
    const timer = setTimeout(() => ac.abort('deadline'), Math.max(0, deadlineMs));
    const working = setInterval(() => ctx.working(), 5000);
    try {
      if (w.kind === 'save') await this.runSave(w, job, log);
      else await this.runRestore(w, job, history.map((h) => h.event), log);
    } finally {
      clearTimeout(timer);
      clearInterval(working);
      this.inflight.delete(w.jobId);
      if (job.vm) this.vms.busy.delete(job.vm);
      await rm(this.recordPath(w.jobId), { force: true });
    }
    return ack();
  }

  private recordPath(jobId: string): string {
    return path.join(this.cfg.jobsDir, `${jobId}.json`);
  }

  private async record(r: JobRecord): Promise<void> {
    await writeFile(this.recordPath(r.jobId), JSON.stringify(r));
  }

  /** Resolve a requested image path inside the image directory, refusing escapes (symlinks included). */
  async resolveImagePath(requested: string): Promise<string> {
    const root = await realpath(this.cfg.imageDir);
    const abs = path.resolve(root, requested);
    const rel = path.relative(root, abs);
    if (rel.startsWith('..') || path.isAbsolute(rel) || /[\0\n\r]/.test(requested)) throw new OpError(`image path ${JSON.stringify(requested)} is outside the image directory`, 'prepare', 'image-path', false);
    const dir = await realpath(path.dirname(abs)).catch(() => undefined);
    if (!dir || path.relative(root, dir).startsWith('..')) throw new OpError(`image path ${JSON.stringify(requested)}: its directory does not exist inside the image directory`, 'prepare', 'image-path', false);
    const st = await lstat(abs).catch(() => undefined);
    if (st?.isSymbolicLink()) throw new OpError(`image path ${JSON.stringify(requested)} is a symbolic link; refusing to follow it`, 'prepare', 'image-path', false);
    return path.join(dir, path.basename(abs));
  }

  private progress(w: WorkItem, job: InFlight, stage: string) {
    let last = 0;
    return (p: MigrationProgress) => {
      const now = Date.now();
      if (now - last < 200 && p.status !== 'completed') return;
      last = now;
      const bytesPerSec = (p.mbps * 1e6) / 8;
      try {
        publishCore(this.bus, messages.progress, subjects.progress(w.jobId), {
          jobId: w.jobId, at: new Date(now).toISOString(), host: this.host, stage, status: p.status,
          totalBytes: p.total, transferredBytes: p.transferred, remainingBytes: p.remaining, bytesPerSec,
          etaMs: bytesPerSec > 0 ? (p.remaining / bytesPerSec) * 1000 : undefined,
        });
      } catch { /* progress is best effort */ }
      job.stage = `${stage}:${p.status}`;
    };
  }

  private async runSave(w: SaveWork, job: InFlight, log: Logger): Promise<void> {
    const req = w.request;
    job.vm = req.vm;
    let imagePath = '';
    let qmp: QmpClient | undefined;
    let wasRunning = false;
    try {
      const def = await this.vms.get(req.vm);
      if (!def) throw new OpError(`VM ${req.vm} is not defined on host ${this.host}`, 'prepare', 'vm-unknown', false);
      imagePath = await this.resolveImagePath(req.image ?? `${req.vm}-${w.jobId}-${w.attempt}.vmsave`);
      this.vms.busy.add(req.vm);
      job.stage = 'connect';
      try {
        qmp = await QmpClient.connect(this.vms.socketOf(req.vm), { timeoutMs: 5000 });
      } catch (err) {
        // A socket that accepts but does not greet is held by another QMP client: that passes.
        // Nothing listening means no QEMU: retrying cannot help.
        if (err instanceof QmpBusyError) throw new OpError(`VM ${req.vm}'s QMP socket is held by another client: ${err.message}`, 'connect', 'qmp-busy', true, { cause: err });
        throw new OpError(`VM ${req.vm} is not running on host ${this.host} (its QMP socket does not answer: ${(err as Error).message}); start it or restore it from an image`, 'connect', 'vm-not-running', false, { cause: err });
      }
      await this.record({ jobId: w.jobId, attempt: w.attempt, fencingToken: w.fencingToken, kind: 'save', vm: req.vm, imagePath });
      const result = await saveVm({
        qmp, imagePath, format: w.format, channels: req.channels, directIo: req.directIo, after: req.after, vm: def,
        host: this.host, jobId: w.jobId, hostCaps: this.caps, keepPartial: this.cfg.VMSAVE_KEEP_PARTIAL,
        maxBandwidth: this.cfg.VMSAVE_SAVE_MAX_BANDWIDTH, signal: job.ac.signal,
        onProgress: this.progress(w, job, 'save'),
        checkpoint: (point) => this.failpoint(point, w.jobId, job.ac.signal, log),
        onStage: (stage, info) => {
          job.stage = stage;
          wasRunning = info.wasRunning;
          // Recorded as soon as the VM is paused: after a crash, only a VM that was running is resumed.
          if (stage === 'paused') void this.record({ jobId: w.jobId, attempt: w.attempt, fencingToken: w.fencingToken, kind: 'save', vm: req.vm, imagePath, wasRunning });
          if (stage === 'started') {
            void this.emit('SaveStarted', w, {
              host: this.host, attempt: w.attempt, fencingToken: w.fencingToken, imagePath, format: w.format,
              channels: w.format === 'sparse' ? req.channels : 1, directIo: req.directIo, wasRunning, ramBytes: def.memoryMiB * 1024 * 1024,
            });
          }
        },
      });
      const secs = result.durationMs / 1000;
      this.throughput = secs > 0 ? result.ramBytes / secs : this.throughput;
      const s = result.stats;
      await this.emit('SaveCompleted', w, {
        host: this.host, attempt: w.attempt, fencingToken: w.fencingToken, imagePath, format: w.format,
        bytes: result.bytes, blocks: result.blocks, durationMs: Math.round(result.durationMs),
        throughputBytesPerSec: secs > 0 ? result.ramBytes / secs : 0, vmState: result.vmState, afterError: result.afterError,
        qemu: { totalTimeMs: s.totalTimeMs, ramTotal: s.ram?.total, ramTransferred: s.ram?.transferred, ramNormalPages: s.ram?.normal, ramDuplicatePages: s.ram?.duplicate, mbps: s.ram?.mbps },
      });
      log.info({ imagePath, bytes: result.bytes, blocks: result.blocks, durationMs: Math.round(result.durationMs), vmState: result.vmState }, 'save completed');
      if (result.afterError) log.warn({ vmState: result.vmState, after: req.after }, `save completed, but the VM could not be left as asked: ${result.afterError}`);
    } catch (err) {
      await this.saveFailed(w, err, imagePath, wasRunning, log);
    } finally {
      await qmp?.close().catch(() => undefined);
    }
  }

  private async saveFailed(w: SaveWork, err: unknown, imagePath: string, wasRunning: boolean, log: Logger): Promise<void> {
    const e = err instanceof OpError ? err : new OpError(classify(err).message, 'prepare', classify(err).code, classify(err).retryable, { cause: err });
    if (!(err instanceof OpError)) e.vmResumed = false;
    if (e instanceof OpCancelled || (this.ac.signal.aborted && e.code === 'cancelled')) {
      await this.emit('SaveCancelled', w, { reason: 'cancelled on request', vmResumed: e.vmResumed, stage: e.stage });
      log.info({ vmResumed: e.vmResumed }, 'save cancelled');
      return;
    }
    const shutdown = w && this.ac.signal.aborted;
    await this.emit('SaveFailed', w, {
      attempt: w.attempt, stage: e.stage, reason: shutdown ? `executor shutting down: ${e.message}` : e.message, code: shutdown ? 'executor-shutdown' : e.code,
      retryable: shutdown || e.retryable, host: this.host, fencingToken: w.fencingToken,
      vmResumed: e.vmResumed || !wasRunning ? e.vmResumed : false, imageKept: e.imageKept,
    });
    log.warn({ stage: e.stage, code: e.code, vmResumed: e.vmResumed, imagePath }, `save failed: ${e.message}`);
  }

  /** The fingerprint the verifier recorded for `imagePath` when it passed the save that wrote it. */
  private async verifiedFingerprint(history: JobEvent[], imagePath: string): Promise<ImageFingerprint | undefined> {
    const requested = history.find((e) => e.type === 'RestoreRequested');
    const source = requested?.type === 'RestoreRequested' ? requested.data.sourceJobId : undefined;
    if (!source) return undefined;
    const verdicts = (await eventsOfJob(this.bus, source)).map((l) => l.event).filter((e) => e.type === 'ImageVerified' || e.type === 'ImageRejected');
    const last = verdicts.at(-1);
    return last?.type === 'ImageVerified' && last.data.imagePath === imagePath ? last.data.fingerprint : undefined;
  }

  private async runRestore(w: RestoreWork, job: InFlight, history: JobEvent[], log: Logger): Promise<void> {
    let imagePath = '';
    try {
      imagePath = await this.resolveImagePath(w.request.image);
      const verifiedAs = await this.verifiedFingerprint(history, imagePath);
      await this.record({ jobId: w.jobId, attempt: w.attempt, fencingToken: w.fencingToken, kind: 'restore', imagePath });
      const result = await restoreImage({
        imagePath,
        verifiedAs,
        hostCaps: this.caps,
        after: w.request.after,
        accel: this.accel,
        signal: job.ac.signal,
        onProgress: this.progress(w, job, 'restore'),
        prepare: async (d, image) => {
          job.vm = d.name;
          const status = await this.vms.status(d.name);
          if (status !== 'stopped') throw new OpError(`VM ${d.name} is already running on ${this.host} (${status}); stop it before restoring`, 'prepare', 'vm-running', false);
          this.vms.busy.add(d.name);
          await this.vms.define(d);
          await this.emit('RestoreStarted', w, { host: this.host, attempt: w.attempt, fencingToken: w.fencingToken, imagePath, format: image.header.format, vm: d });
          return this.vms.socketOf(d.name);
        },
      });
      this.vms.adopt(result.definition.name, result.vm);
      await result.qmp.close();
      await this.emit('RestoreCompleted', w, {
        host: this.host, attempt: w.attempt, fencingToken: w.fencingToken, imagePath, vm: result.definition.name,
        durationMs: Math.round(result.durationMs), vmState: result.vmState, qmpSocket: this.vms.socketOf(result.definition.name), gate: result.gate,
      });
      log.info({ imagePath, vm: result.definition.name, durationMs: Math.round(result.durationMs), gate: result.gate }, 'restore completed');
    } catch (err) {
      const e = err instanceof OpError ? err : new OpError(classify(err).message, 'restore', classify(err).code, classify(err).retryable, { cause: err });
      if (e instanceof OpCancelled) {
        await this.emit('RestoreCancelled', w, { reason: 'cancelled on request', stage: e.stage });
        return;
      }
      await this.emit('RestoreFailed', w, {
        attempt: w.attempt, stage: e.stage, reason: e.message, code: e.code, retryable: e.retryable, host: this.host,
        fencingToken: w.fencingToken, qemuStderr: e.qemuStderr?.slice(-4000),
      });
      log.warn({ stage: e.stage, code: e.code }, `restore failed: ${e.message}`);
    }
  }

  /** A failpoint of VMSAVE_FAILPOINTS: hold at `point` until the test removes the hold file. */
  private async failpoint(point: SavePoint, jobId: string, signal: AbortSignal, log: Logger): Promise<void> {
    if (!this.cfg.VMSAVE_FAILPOINTS.includes(point)) return;
    const file = path.join(this.cfg.jobsDir, `${jobId}.hold.${point}`);
    await writeFile(file, '');
    log.warn({ failpoint: point, file }, `failpoint ${point}: holding until ${file} is removed`);
    while (await access(file).then(() => true, () => false)) {
      if (signal.aborted) throw new Error(`aborted at failpoint ${point}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    log.warn({ failpoint: point }, `failpoint ${point}: released`);
  }

  /** Publish an event of this attempt; its id is derived from job, attempt and type, so a retried publish is deduplicated. */
  private async emit<T extends JobEvent['type']>(type: T, w: Pick<WorkItem, 'jobId' | 'attempt'>, data: Extract<JobEvent, { type: T }>['data']): Promise<void> {
    await publishEvent(this.bus, makeEvent(type, w.jobId, data as never, { source: this.source, eventId: `${w.jobId}.${w.attempt}.${type}` }));
  }

  /* ---------------- crash recovery ---------------- */

  /**
   * Jobs this host was running when it died: the migration is cancelled, a VM that was running
   * is resumed, the partial image removed, and the attempt closed with SaveFailed (retryable).
   */
  async reconcile(): Promise<void> {
    for (const f of await readdir(this.cfg.jobsDir)) {
      if (f.includes('.hold.')) await unlink(path.join(this.cfg.jobsDir, f)).catch(() => undefined);
      if (!f.endsWith('.json')) continue;
      let r: JobRecord;
      try {
        r = JSON.parse(await readFile(path.join(this.cfg.jobsDir, f), 'utf8')) as JobRecord;
      } catch {
        await unlink(path.join(this.cfg.jobsDir, f)).catch(() => undefined);
        continue;
      }
      const log = this.log.child({ jobId: r.jobId, attempt: r.attempt });
      let vmResumed = false;
      let migration = 'unknown';
      if (r.vm) {
        try {
          await using qmp = await QmpClient.connect(this.vms.socketOf(r.vm), { timeoutMs: 3000 });
          migration = (await qmp.execute<{ status?: string }>('query-migrate')).status ?? 'none';
          if (migration === 'active' || migration === 'setup' || migration === 'device') {
            await qmp.execute('migrate_cancel').catch(() => undefined);
            for (let i = 0; i < 50; i++) {
              const s = (await qmp.execute<{ status?: string }>('query-migrate')).status;
              if (s !== 'active' && s !== 'cancelling' && s !== 'setup' && s !== 'device') break;
              await new Promise((res) => setTimeout(res, 100));
            }
          }
          const fdsets = await qmp.execute<Array<{ 'fdset-id': number }>>('query-fdsets').catch(() => []);
          for (const s of fdsets) await qmp.execute('remove-fd', { 'fdset-id': s['fdset-id'] }).catch(() => undefined);
          if (r.wasRunning !== false) {
            await resume(qmp);
            vmResumed = true;
          }
        } catch (err) {
          log.warn({ err: (err as Error).message }, 'could not reach the VM of an interrupted job');
        }
      }
      if (r.imagePath && r.kind === 'save') await unlink(r.imagePath).catch(() => undefined);
      const w = { jobId: r.jobId, attempt: r.attempt };
      const reason = `executor restarted during the ${r.kind} (QEMU migration status: ${migration})`;
      if (r.kind === 'save') {
        await this.emit('SaveFailed', w, { attempt: r.attempt, stage: 'lost', reason, code: 'executor-restarted', retryable: true, host: this.host, fencingToken: r.fencingToken, vmResumed });
      } else {
        await this.emit('RestoreFailed', w, { attempt: r.attempt, stage: 'lost', reason, code: 'executor-restarted', retryable: true, host: this.host, fencingToken: r.fencingToken });
      }
      log.warn({ vmResumed, migration }, 'closed a job interrupted by an executor restart');
      await unlink(path.join(this.cfg.jobsDir, f)).catch(() => undefined);
    }
  }
}

function closesAttempt(e: JobEvent, attempt: number): boolean {
  switch (e.type) {
    case 'SaveCompleted': case 'SaveFailed': case 'RestoreCompleted': case 'RestoreFailed':
      return e.data.attempt === attempt;
    case 'SaveCancelled': case 'RestoreCancelled': case 'ImageVerified': case 'ImageRejected':
      return true;
    default:
      return false;
  }
}
