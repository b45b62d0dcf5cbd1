import { randomUUID } from 'node:crypto';
import { watch } from 'node:fs';
import { mkdir, readdir, readFile, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@vmsave/bus';
import type { VmDefinition } from '@vmsave/contracts';
import { buildVmArgs, launchVm, type Accel, type VmProcess } from '@vmsave/qemu';
import { QmpClient } from '@vmsave/qmp';

/** Where the pool learns of this host's VM definitions (`watchDefinitions`). */
export interface DefinitionSource {
  /** The directory the definitions live in (watched: a file written there is a definition made or changed). */
  dir: string;
  /** Every definition of the host, as now. */
  list(): Promise<VmDefinition[]>;
}

export interface WarmPoolOptions {
  /** Waiting QEMUs kept per shape (0: no pool). */
  size: number;
  /** Bound on the summed RSS of the waiting QEMUs, in bytes. */
  maxRssBytes: number;
  /** Where the waiting QEMUs' QMP sockets go (a directory of their own). */
  dir: string;
  accel: Accel;
  log: Logger;
  /** How long after a hand-out the pool starts its replacement (ms). Default 2000. */
  refillDelayMs?: number;
  /** Shapes remembered (most recently restored first); older ones lose their QEMUs. Default 4. */
  maxShapes?: number;
  binary?: string;
  /** Bytes of memory the host has available (default /proc/meminfo `MemAvailable`). */
  memAvailable?(): Promise<number>;
  /** RSS of a process in bytes (default /proc/<pid>/status `VmRSS`); undefined when it is gone. */
  rssOf?(pid: number): Promise<number | undefined>;
}

interface Waiting {
  vm: VmProcess;
  rss: number;
}

interface Shape {
  def: VmDefinition;
  waiting: Waiting[];
  starting: number;
}

/** A first guess at a waiting QEMU's RSS before one was measured (measured: 20–40 MiB, see docs/benchmarks.md). */
const RSS_GUESS = 48 * 1024 * 1024;
/** How long the liveness check before a hand-out may take. */
const LIVENESS_TIMEOUT_MS = 1000;

/**
 * QEMUs already started with `-incoming defer` for the VM shapes this executor restores (the exact
 * command line of the image's VM definition), so a restore skips QEMU's start-up. A waiting QEMU
 * has mapped but not touched its guest RAM, so it costs only its own RSS; the pool keeps the sum of
 * those under `maxRssBytes`, and warms a shape only while the host has its guest RAM available.
 * Refilled in the background after each hand-out; a QEMU is handed out only when its process
 * lives and its QMP session answers `inmigrate` right then. Every waiting QEMU is killed by `stop`.
 */
export class WarmPool {
  private readonly shapes = new Map<string, Shape>();
  private stopped = false;
  private seq = 0;
  private refilling: Promise<void> = Promise.resolve();
  /** The shape key last prepared for each VM name (`syncDefinitions`). */
  private readonly defined = new Map<string, string>();
  /** Aborted by `stop`: ends the definition watch. */
  private readonly stopping = new AbortController();
  private readonly o: WarmPoolOptions;

  constructor(o: WarmPoolOptions) {
    this.o = o;
  }

  get enabled(): boolean {
    return this.o.size > 0 && !this.stopped;
  }

  /** The key of a definition's shape: its whole QEMU command line. */
  keyOf(def: VmDefinition): string {
    return JSON.stringify(buildVmArgs(def, { accel: this.o.accel, incoming: 'defer' }));
  }

  /** Quit QEMUs a previous run of the executor left waiting in the pool's directory (after a crash). */
  async reap(): Promise<number> {
    const names = await readdir(this.o.dir).catch(() => [] as string[]);
    let reaped = 0;
    for (const name of names.filter((n) => n.endsWith('.qmp'))) {
      const socket = path.join(this.o.dir, name);
      try {
        const qmp = await QmpClient.connect(socket, { timeoutMs: 500 });
        try {
          const { status } = await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: 500 });
          if (status === 'inmigrate') {
            await qmp.execute('quit', undefined, { timeoutMs: 500 }).catch(() => undefined);
            reaped++;
          }
        } finally {
          await qmp.close().catch(() => undefined);
        }
      } catch {
        /* nothing listens: a stale socket */
      }
      await unlink(socket).catch(() => undefined);
    }
    if (reaped) this.o.log.info({ reaped }, 'warm pool: quit QEMUs left waiting by a previous run');
    return reaped;
  }

  /** Remember a shape (a restore of it, or a configured VM) and fill its share of the pool in the background. */
  note(def: VmDefinition): void {
    if (!this.enabled) return;
    const key = this.keyOf(def);
    const shape = this.shapes.get(key) ?? { def, waiting: [], starting: 0 };
    this.shapes.delete(key);
    this.shapes.set(key, shape);
    const max = this.o.maxShapes ?? 4;
    while (this.shapes.size > max) {
      const [oldKey, old] = this.shapes.entries().next().value as [string, Shape];
      this.shapes.delete(oldKey);
      for (const w of old.waiting.splice(0)) void this.discard(w, 'shape no longer recent');
    }
    this.schedule();
  }

  /**
   * The host's VM definitions as they are now: each VM the pool is configured for (`names`) whose
   * definition is new or changed since the last call gets its shape prepared (`note`). Returns the
   * names whose shape was noted.
   */
  syncDefinitions(defs: readonly VmDefinition[], names: ReadonlySet<string> | readonly string[]): string[] {
    if (!this.enabled) return [];
    const wanted = new Set(names);
    const noted: string[] = [];
    for (const def of defs) {
      if (!wanted.has(def.name)) continue;
      let key: string;
      try {
        key = this.keyOf(def);
      } catch (err) {
        this.o.log.warn({ vm: def.name, err: (err as Error).message }, 'warm pool: a VM definition with no QEMU command line');
        continue;
      }
      if (this.defined.get(def.name) === key) continue;
      this.defined.set(def.name, key);
      this.o.log.info({ vm: def.name }, 'warm pool: VM definition new or changed; preparing its shape');
      this.note(def);
      noted.push(def.name);
    }
    return noted;
  }

  /**
   * Prepare the shapes of the configured VMs (`names`) now, and again whenever a definition is
   * written in `source.dir` (a VM defined or changed on this host: `vmsave vm create`, a restore
   * of an image whose definition differs), until `signal` aborts. Resolves after the first sync.
   */
  async watchDefinitions(source: DefinitionSource, names: readonly string[], until: AbortSignal): Promise<void> {
    const signal = AbortSignal.any([until, this.stopping.signal]);
    const sync = async () => {
      try {
        this.syncDefinitions(await source.list(), names);
      } catch (err) {
        this.o.log.warn({ err: (err as Error).message }, 'warm pool: could not read the VM definitions');
      }
    };
    await sync();
    if (!this.enabled || signal.aborted || names.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    let watcher: ReturnType<typeof watch>;
    try {
      // Writes come as a burst (temp file, rename): one sync shortly after the last event.
      watcher = watch(source.dir, { persistent: false }, () => {
        clearTimeout(timer);
        timer = setTimeout(() => void sync(), 50);
      });
    } catch (err) {
      this.o.log.warn({ dir: source.dir, err: (err as Error).message }, 'warm pool: cannot watch the VM definitions');
      return;
    }
    watcher.on('error', (err) => this.o.log.warn({ dir: source.dir, err: err.message }, 'warm pool: watching the VM definitions failed'));
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        watcher.close();
      },
      { once: true },
    );
  }

  /**
   * A waiting QEMU of exactly this definition's shape, with a QMP session open on it, or
   * undefined (none waiting, or none that still lives). Remembers the shape and refills.
   */
  async take(def: VmDefinition): Promise<{ vm: VmProcess; qmp: QmpClient } | undefined> {
    if (!this.enabled) return undefined;
    const key = this.keyOf(def);
    const shape = this.shapes.get(key);
    while (shape && shape.waiting.length > 0) {
      const w = shape.waiting.shift()!;
      const qmp = await this.alive(w.vm);
      if (qmp) {
        this.o.log.debug({ vm: def.name, pid: w.vm.pid }, 'warm pool: handing out a waiting QEMU');
        // Refill once the restore had the CPU to itself: a QEMU starting up beside the incoming
        // migration slowed its load several-fold on a 2-core host.
        setTimeout(() => this.note(def), this.o.refillDelayMs ?? 2000).unref();
        return { vm: w.vm, qmp };
      }
      void this.discard(w, 'dead or not answering');
    }
    this.note(def);
    return undefined;
  }

  /** Waiting QEMUs per shape, and their summed RSS as last measured. */
  stats(): { waiting: number; starting: number; rssBytes: number; pids: number[] } {
    let waiting = 0;
    let starting = 0;
    let rssBytes = 0;
    const pids: number[] = [];
    for (const s of this.shapes.values()) {
      waiting += s.waiting.length;
      starting += s.starting;
      for (const w of s.waiting) {
        rssBytes += w.rss;
        pids.push(w.vm.pid);
      }
    }
    return { waiting, starting, rssBytes, pids };
  }

  /** Resolves when the background refill in progress (if any) is done. */
  settled(): Promise<void> {
    return this.refilling;
  }

  /** Kill every waiting QEMU and start no more. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopping.abort();
    await this.refilling.catch(() => undefined);
    const all = [...this.shapes.values()].flatMap((s) => s.waiting.splice(0));
    this.shapes.clear();
    await Promise.allSettled(all.map((w) => this.discard(w, 'executor stopping')));
  }

  private schedule(): void {
    this.refilling = this.refilling.then(() => this.refill()).catch((err) => this.o.log.warn({ err: (err as Error).message }, 'warm pool: refill failed'));
  }

  private async refill(): Promise<void> {
    for (const [key, shape] of [...this.shapes.entries()].reverse()) {
      while (this.enabled && this.shapes.get(key) === shape && shape.waiting.length + shape.starting < this.o.size) {
        if (!(await this.room(shape.def))) return;
        shape.starting++;
        let w: Waiting | undefined;
        try {
          w = await this.start(shape.def);
        } finally {
          shape.starting--;
        }
        if (!w) return;
        const total = this.stats().rssBytes + w.rss;
        if (!this.enabled || this.shapes.get(key) !== shape || total > this.o.maxRssBytes) {
          await this.discard(w, total > this.o.maxRssBytes ? `pool RSS would be ${total} > bound ${this.o.maxRssBytes}` : 'no longer wanted');
          return;
        }
        shape.waiting.push(w);
        const entry = w;
        void entry.vm.exited.then(() => {
          const i = shape.waiting.indexOf(entry);
          if (i >= 0) shape.waiting.splice(i, 1);
        });
        this.o.log.debug({ vm: shape.def.name, pid: w.vm.pid, rssBytes: w.rss, poolRssBytes: total }, 'warm pool: QEMU waiting');
      }
    }
  }

  /** Whether one more QEMU fits: the RSS bound (with the largest RSS measured so far), and the shape's guest RAM available on the host. */
  private async room(def: VmDefinition): Promise<boolean> {
    const s = this.stats();
    const per = Math.max(RSS_GUESS, ...[...this.shapes.values()].flatMap((x) => x.waiting.map((w) => w.rss)));
    if (s.rssBytes + per > this.o.maxRssBytes) return false;
    const available = await (this.o.memAvailable ?? memAvailable)();
    return available >= def.memoryMiB * 1024 * 1024 + this.o.maxRssBytes;
  }

  private async start(def: VmDefinition): Promise<Waiting | undefined> {
    const socket = path.join(this.o.dir, `w${process.pid}-${++this.seq}-${randomUUID().slice(0, 8)}.qmp`);
    try {
      await mkdir(this.o.dir, { recursive: true });
      const vm = await launchVm(def, { qmpSocketPath: socket, incoming: 'defer', accel: this.o.accel, binary: this.o.binary });
      const rss = (await (this.o.rssOf ?? rssOf)(vm.pid)) ?? RSS_GUESS;
      return { vm, rss };
    } catch (err) {
      this.o.log.warn({ vm: def.name, err: (err as Error).message }, 'warm pool: could not start a waiting QEMU');
      return undefined;
    }
  }

  /** The QEMU's process lives and its QMP answers `inmigrate` now: the session, else undefined. */
  private async alive(vm: VmProcess): Promise<QmpClient | undefined> {
    if (vm.exitStatus !== undefined || !processExists(vm.pid)) return undefined;
    let qmp: QmpClient | undefined;
    try {
      // The session is handed over with the client's default command deadline; only this check is short.
      qmp = await vm.connectQmp({ timeoutMs: LIVENESS_TIMEOUT_MS });
      const { status } = await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: LIVENESS_TIMEOUT_MS });
      if (status === 'inmigrate' && vm.exitStatus === undefined) return qmp;
    } catch {
      /* not answering */
    }
    await qmp?.close().catch(() => undefined);
    return undefined;
  }

  private async discard(w: Waiting, why: string): Promise<void> {
    this.o.log.debug({ pid: w.vm.pid, why }, 'warm pool: discarding a QEMU');
    await w.vm.kill('SIGKILL').catch(() => undefined);
    await Promise.resolve(w.vm[Symbol.asyncDispose]()).catch(() => undefined);
  }
}

function processExists(pid: number): boolean {
  if (!(pid > 0)) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** /proc/<pid>/status `VmRSS` in bytes. */
export async function rssOf(pid: number): Promise<number | undefined> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => undefined);
  const kb = text && /^VmRSS:\s+(\d+)\s+kB/m.exec(text)?.[1];
  return kb ? Number(kb) * 1024 : undefined;
}

/** /proc/meminfo `MemAvailable` in bytes. */
export async function memAvailable(): Promise<number> {
  const text = await readFile('/proc/meminfo', 'utf8').catch(() => '');
  const kb = /^MemAvailable:\s+(\d+)\s+kB/m.exec(text)?.[1];
  return kb ? Number(kb) * 1024 : 0;
}
