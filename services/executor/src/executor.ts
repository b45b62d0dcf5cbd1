import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { WorkItem, streams, subjects, type QemuCapabilities } from '@vmsave/contracts';
import { runConsumer, type Bus, type Logger } from '@vmsave/bus';
import type { JobJournal, VmRegistry } from '@vmsave/ops';
import type { ExecutorConfig } from './config.ts';
import type { ExecutorContext } from './context.ts';
import { serveControl } from './control.ts';
import { onWork } from './intake.ts';
import { runRetention } from './lifecycle.ts';
import { Presence } from './presence.ts';
import { recoverAtStart } from './recovery.ts';
import { runReplication } from './replicate.ts';
import { readShutdownState, restoreAfterShutdown, saveOnShutdown, type ShutdownOutcome } from './shutdown-save.ts';
import { WarmPool } from './warm-pool.ts';

export interface ExecutorDeps {
  bus: Bus;
  cfg: ExecutorConfig;
  log: Logger;
  vms: VmRegistry;
  journal: JobJournal;
  /** This host's QEMU, as probed at start (accelerator included). */
  caps: QemuCapabilities;
  /** Each event this executor appended, with its job's history (metrics). */
  onPublished?: ExecutorContext['onPublished'];
}

/**
 * One executor per hypervisor host: at start it recovers the jobs a crash interrupted and starts
 * the VMs to autostart, then takes work from `vmsave.work.<host>` (intake.ts), announces the host
 * and sends heartbeats (presence.ts), and answers cancels on `vmsave.ctl.<host>` (control.ts).
 */
export class Executor {
  private readonly ac = new AbortController();
  private readonly tasks: Promise<unknown>[] = [];
  private readonly ctx: ExecutorContext;

  constructor(deps: ExecutorDeps) {
    const host = deps.cfg.VMSAVE_HOST;
    this.ctx = {
      ...deps,
      host,
      source: `executor@${host}`,
      executorId: randomUUID(),
      startedAt: new Date().toISOString(),
      inflight: new Map(),
      signal: this.ac.signal,
      warm: new WarmPool({
        size: deps.cfg.VMSAVE_WARM_POOL,
        maxRssBytes: deps.cfg.VMSAVE_WARM_POOL_MAX_MIB * 1024 * 1024,
        dir: path.join(deps.cfg.qmpDir, 'warm'),
        accel: deps.caps.accel,
        log: deps.log,
      }),
    };
  }

  get host(): string {
    return this.ctx.host;
  }

  async start(): Promise<void> {
    const { ctx } = this;
    const signal = this.ac.signal;
    await recoverAtStart(ctx);
    // VMs the last host shutdown saved are restored (below), not booted afresh by autostart.
    const pending = await readShutdownState(ctx);
    await this.autostart(new Set(pending.map((p) => p.vm)));
    await this.warmUp();
    await new Presence(ctx).start(signal);
    this.tasks.push(
      serveControl(ctx, signal),
      runConsumer(ctx.bus, {
        stream: streams.work.name,
        durable: `executor-${ctx.host}`,
        filterSubject: subjects.work(ctx.host),
        schema: WorkItem,
        service: `executor-${ctx.host}`,
        concurrency: ctx.cfg.VMSAVE_MAX_CONCURRENT,
        ackWaitMs: 30_000,
        maxDeliver: 5,
        log: ctx.log,
        signal,
        handler: (w, m) => onWork(ctx, w, m),
      }),
    );
    const { VMSAVE_RETENTION_KEEP_LAST: keepLast, VMSAVE_RETENTION_MAX_AGE: keepYoungerThanMs } = ctx.cfg;
    if (keepLast !== undefined || keepYoungerThanMs !== undefined) this.tasks.push(runRetention(ctx, { keepLast, keepYoungerThanMs }, ctx.cfg.VMSAVE_RETENTION_INTERVAL, signal));
    // Verified images to the bus's object store (replicate.ts): those a crash interrupted first.
    this.tasks.push(runReplication(ctx, signal));
    ctx.log.info({ host: ctx.host, qemu: ctx.caps.version, accel: ctx.caps.accel, imageDir: ctx.cfg.imageDir }, 'executor running');
    if (pending.length) {
      await restoreAfterShutdown(ctx, pending).catch((err: unknown) =>
        ctx.log.error({ err: (err as Error).message }, 'restart after host shutdown: could not request the restores'),
      );
    }
  }

  /** VMSAVE_ON_SHUTDOWN=save: save the VMs this host runs while work is still taken (call before `stop`). */
  saveForShutdown(): Promise<ShutdownOutcome> {
    return saveOnShutdown(this.ctx);
  }

  /** Stop taking work; in-flight jobs are cancelled (their VMs resumed) before the bus closes. */
  async stop(): Promise<void> {
    for (const j of this.ctx.inflight.values()) j.ac.abort('shutdown');
    const deadline = Date.now() + 20_000;
    while (this.ctx.inflight.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    this.ac.abort();
    await Promise.allSettled(this.tasks);
    await this.ctx.warm?.stop();
  }

  /** Quit pool QEMUs a crashed run left waiting, then warm the shapes of VMSAVE_WARM_VMS. */
  private async warmUp(): Promise<void> {
    const { warm, vms, log, cfg } = this.ctx;
    if (!warm) return;
    await mkdir(path.join(cfg.qmpDir, 'warm'), { recursive: true });
    await warm.reap();
    if (!warm.enabled) return;
    const defined = new Set((await vms.definitions()).map((d) => d.name));
    for (const name of cfg.VMSAVE_WARM_VMS) if (!defined.has(name)) log.warn({ vm: name }, 'warm pool: no such VM definition (prepared once it is defined)');
    // Prepares the shapes now, then again whenever a definition in the list is made or changed.
    await warm.watchDefinitions({ dir: vms.vmDir, list: () => vms.definitions() }, cfg.VMSAVE_WARM_VMS, this.ac.signal);
  }

  /** Start the VMs named in VMSAVE_AUTOSTART that are defined and not running (detached: they outlive us). */
  private async autostart(skip: ReadonlySet<string> = new Set()): Promise<void> {
    const { vms, log } = this.ctx;
    for (const name of this.ctx.cfg.VMSAVE_AUTOSTART) {
      try {
        if (!(await vms.get(name))) {
          log.warn({ vm: name }, 'autostart: no such VM definition');
          continue;
        }
        if ((await vms.status(name)) !== 'stopped') continue;
        if (skip.has(name)) {
          log.info({ vm: name }, 'autostart: skipped, the last host shutdown saved it and it is restored instead');
          continue;
        }
        const vm = await vms.start(name, { detached: true });
        log.info({ vm: name, pid: vm.pid }, 'autostarted VM');
      } catch (err) {
        log.warn({ vm: name, err: (err as Error).message }, 'autostart failed');
      }
    }
  }
}
