import { randomUUID } from 'node:crypto';
import { WorkItem, streams, subjects, type QemuCapabilities } from '@vmsave/contracts';
import { runConsumer, type Bus, type Logger } from '@vmsave/bus';
import type { JobJournal, VmRegistry } from '@vmsave/ops';
import type { ExecutorConfig } from './config.ts';
import type { ExecutorContext } from './context.ts';
import { serveControl } from './control.ts';
import { onWork } from './intake.ts';
import { Presence } from './presence.ts';
import { recoverAtStart } from './recovery.ts';

export interface ExecutorDeps {
  bus: Bus;
  cfg: ExecutorConfig;
  log: Logger;
  vms: VmRegistry;
  journal: JobJournal;
  /** This host's QEMU, as probed at start (accelerator included). */
  caps: QemuCapabilities;
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
    };
  }

  get host(): string {
    return this.ctx.host;
  }

  async start(): Promise<void> {
    const { ctx } = this;
    const signal = this.ac.signal;
    await recoverAtStart(ctx);
    await this.autostart();
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
    ctx.log.info({ host: ctx.host, qemu: ctx.caps.version, accel: ctx.caps.accel, imageDir: ctx.cfg.imageDir }, 'executor running');
  }

  /** Stop taking work; in-flight jobs are cancelled (their VMs resumed) before the bus closes. */
  async stop(): Promise<void> {
    for (const j of this.ctx.inflight.values()) j.ac.abort('shutdown');
    const deadline = Date.now() + 20_000;
    while (this.ctx.inflight.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    this.ac.abort();
    await Promise.allSettled(this.tasks);
  }

  /** Start the VMs named in VMSAVE_AUTOSTART that are defined and not running (detached: they outlive us). */
  private async autostart(): Promise<void> {
    const { vms, log } = this.ctx;
    for (const name of this.ctx.cfg.VMSAVE_AUTOSTART) {
      try {
        if (!(await vms.get(name))) {
          log.warn({ vm: name }, 'autostart: no such VM definition');
          continue;
        }
        if ((await vms.status(name)) !== 'stopped') continue;
        const vm = await vms.start(name, { detached: true });
        log.info({ vm: name, pid: vm.pid }, 'autostarted VM');
      } catch (err) {
        log.warn({ vm: name, err: (err as Error).message }, 'autostart failed');
      }
    }
  }
}
