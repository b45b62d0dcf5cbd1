import { readdir, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { messages, subjects } from '@vmsave/contracts';
import { publishCore, publishValidated } from '@vmsave/bus';
import type { ExecutorContext } from './context.ts';

/** Bytes allocated by the files directly in the image directory (what its quota counts). */
export async function imageDirUsage(dir: string): Promise<number> {
  let used = 0;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (!e.isFile()) continue;
    const st = await stat(path.join(dir, e.name)).catch(() => undefined);
    if (st) used += st.blocks * 512;
  }
  return used;
}

/**
 * This host on the bus: an announcement every VMSAVE_ANNOUNCE_MS (QEMU capabilities, free space,
 * limits, VMs) and a heartbeat every VMSAVE_HEARTBEAT_MS naming the jobs in flight (and at once
 * after a reconnect), until `signal` aborts.
 */
export class Presence {
  private announcing: Promise<void> | undefined;

  constructor(private readonly ctx: ExecutorContext) {}

  async start(signal: AbortSignal): Promise<void> {
    const { cfg, log, bus } = this.ctx;
    await this.announce();
    const announce = setInterval(() => void this.announce().catch((err) => log.warn({ err }, 'announce failed')), cfg.VMSAVE_ANNOUNCE_MS);
    const hb = setInterval(() => this.heartbeat(), cfg.VMSAVE_HEARTBEAT_MS);
    this.heartbeat();
    const off = bus.onReconnect(() => this.heartbeat());
    signal.addEventListener(
      'abort',
      () => {
        clearInterval(announce);
        clearInterval(hb);
        off();
      },
      { once: true },
    );
  }

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
    const { bus, cfg, host } = this.ctx;
    const fs = await statfs(cfg.imageDir);
    await publishValidated(bus, messages.hostAnnouncement, subjects.host(host), {
      host,
      executorId: this.ctx.executorId,
      at: new Date().toISOString(),
      startedAt: this.ctx.startedAt,
      qemu: this.ctx.caps,
      imageDir: cfg.imageDir,
      sharedImageDir: cfg.VMSAVE_SHARED_IMAGE_DIR,
      freeBytes: fs.bavail * fs.bsize,
      ...(cfg.VMSAVE_IMAGE_QUOTA !== undefined ? { imageQuotaBytes: cfg.VMSAVE_IMAGE_QUOTA, imageUsedBytes: await imageDirUsage(cfg.imageDir) } : {}),
      throughputBytesPerSec: this.ctx.throughput,
      maxConcurrentJobs: cfg.VMSAVE_MAX_CONCURRENT,
      vms: await this.ctx.vms.summaries(),
    });
  }

  heartbeat(): void {
    const { bus, host } = this.ctx;
    try {
      publishCore(bus, messages.heartbeat, subjects.heartbeat(host), {
        host,
        executorId: this.ctx.executorId,
        at: new Date().toISOString(),
        jobs: [...this.ctx.inflight.values()].map((j) => ({ jobId: j.jobId, attempt: j.attempt, stage: j.stage, fencingToken: j.fencingToken })),
      });
    } catch (err) {
      this.ctx.log.warn({ err }, 'heartbeat failed');
    }
  }
}
