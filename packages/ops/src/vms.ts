import { mkdir, readdir, readFile, writeFile, rename } from 'node:fs/promises';
import path from 'node:path';
import { VmDefinition, type VmSummary } from '@vmsave/contracts';
import { QmpAbortedError, QmpBusyError, QmpClient, QmpTimeoutError } from '@vmsave/qmp';
import { launchVm, type Accel, type VmProcess } from '@vmsave/qemu';

export interface VmRegistryOptions {
  /** Definitions, `<vmDir>/<name>.json`. */
  vmDir: string;
  /** QMP sockets, `<qmpDir>/<name>.qmp`. */
  qmpDir: string;
  /** Where a detached VM's QEMU writes its stderr; default `<qmpDir>/../logs`. */
  logDir?: string;
  /** The accelerator VMs start with; default detected when a VM starts (`detectAccel`). */
  accel?: Accel;
}

/**
 * The VMs of one host: definitions (`<vmDir>/<name>.json`) and their QMP sockets
 * (`<qmpDir>/<name>.qmp`). QEMU's QMP socket serves one client at a time, so the registry
 * connects only for a moment and never while a job holds the VM (`busy`).
 */
export class VmRegistry {
  private readonly procs = new Map<string, VmProcess>();
  readonly busy = new Set<string>();
  readonly vmDir: string;
  readonly qmpDir: string;
  readonly logDir: string;
  private readonly accel: Accel | undefined;

  constructor(o: VmRegistryOptions) {
    this.vmDir = o.vmDir;
    this.qmpDir = o.qmpDir;
    this.logDir = o.logDir ?? path.join(path.dirname(o.qmpDir), 'logs');
    this.accel = o.accel;
  }

  async init(): Promise<void> {
    await mkdir(this.vmDir, { recursive: true });
    await mkdir(this.qmpDir, { recursive: true });
  }

  socketOf(name: string): string {
    return path.join(this.qmpDir, `${name}.qmp`);
  }

  async define(def: VmDefinition): Promise<VmDefinition> {
    const d = VmDefinition.parse(def);
    const file = path.join(this.vmDir, `${d.name}.json`);
    await writeFile(`${file}.tmp`, JSON.stringify(d, null, 2));
    await rename(`${file}.tmp`, file);
    return d;
  }

  async get(name: string): Promise<VmDefinition | undefined> {
    try {
      return VmDefinition.parse(JSON.parse(await readFile(path.join(this.vmDir, `${name}.json`), 'utf8')));
    } catch {
      return undefined;
    }
  }

  async definitions(): Promise<VmDefinition[]> {
    const out: VmDefinition[] = [];
    for (const f of (await readdir(this.vmDir)).filter((f) => f.endsWith('.json')).sort()) {
      const d = await this.get(f.slice(0, -5));
      if (d) out.push(d);
    }
    return out;
  }

  /** Where a detached VM's QEMU writes its stderr. */
  logOf(name: string): string {
    return path.join(this.logDir, `${name}.log`);
  }

  /**
   * Start a defined VM (paused with `-S` when asked) unless its QMP socket already answers.
   * `detached`: the QEMU gets its own session and no pipes, so it outlives this process
   * (the CLI's `vm start`, autostart); its stderr goes to {@link logOf}.
   */
  async start(name: string, opts: { paused?: boolean; detached?: boolean } = {}): Promise<VmProcess> {
    const def = await this.get(name);
    if (!def) throw new Error(`no VM definition named ${name}`);
    if ((await this.status(name)) !== 'stopped') throw new Error(`VM ${name} is already running`);
    const vm = await launchVm(def, {
      qmpSocketPath: this.socketOf(name),
      startPaused: opts.paused,
      accel: this.accel,
      detached: opts.detached ? { logFile: this.logOf(name) } : undefined,
    });
    this.adopt(name, vm);
    return vm;
  }

  /** Keep a QEMU started elsewhere in this process (a restore) so its stderr stays readable. */
  adopt(name: string, vm: VmProcess): void {
    this.procs.set(name, vm);
    void vm.exited.then(() => {
      if (this.procs.get(name) === vm) this.procs.delete(name);
    });
  }

  process(name: string): VmProcess | undefined {
    return this.procs.get(name);
  }

  /** QEMU's run state, `busy` while a job holds the VM, or `stopped` when nothing answers. */
  async status(name: string): Promise<string> {
    if (this.busy.has(name)) return 'busy';
    try {
      const qmp = await QmpClient.connect(this.socketOf(name), { timeoutMs: 1000 });
      try {
        return (await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: 1000 })).status;
      } finally {
        await qmp.close();
      }
    } catch (err) {
      // A QEMU that does not greet us, or does not answer, serves another QMP client: it is there.
      // Aborted: the connect deadline ran out after QEMU greeted (it let us in late, during qmp_capabilities).
      return err instanceof QmpBusyError || err instanceof QmpTimeoutError || err instanceof QmpAbortedError ? 'qmp-busy' : 'stopped';
    }
  }

  /** Every defined VM with its state, asking at most 16 QEMUs at a time (a host may have hundreds). */
  async summaries(): Promise<VmSummary[]> {
    const defs = await this.definitions();
    const out: VmSummary[] = new Array(defs.length);
    let next = 0;
    const worker = async () => {
      for (let i = next++; i < defs.length; i = next++) {
        const d = defs[i]!;
        out[i] = { name: d.name, uuid: d.uuid, machine: d.machine, memoryMiB: d.memoryMiB, vcpus: d.vcpus, status: await this.status(d.name), qmpSocket: this.socketOf(d.name) };
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, defs.length) }, worker));
    return out;
  }

  async stopAll(): Promise<void> {
    await Promise.allSettled([...this.procs.values()].map((p) => p.kill('SIGTERM')));
  }
}
