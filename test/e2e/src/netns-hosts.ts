import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { VmDefinition } from '@vmsave/contracts';
import { NetnsLab, guestMemory, waitFor, type LabServer } from '@vmsave/testkit';
import { REPO, Stack, type HostDirs } from './stack.ts';

const TSX = path.join(REPO, 'node_modules', 'tsx', 'dist', 'loader.mjs');
const MiB = 1024 * 1024;

/**
 * A vmsave fleet on separate hosts: a `NetnsLab` (one network namespace per host, the test's
 * private NATS and Redis on its side), the scheduler and the verifier of a `Stack` on the test's
 * side, and one executor per host inside its namespace (its QEMUs are its children there), each
 * with its own host name, state and image directory, reaching NATS and Redis over its veth pair.
 */
export class NetnsFleet {
  private readonly executors = new Map<string, ChildProcess>();
  private constructor(
    readonly lab: NetnsLab,
    readonly stack: Stack,
    readonly nats: LabServer,
    readonly redis: LabServer,
    readonly dir: string,
  ) {}

  static async start(opts: { hosts: string[]; env?: Record<string, string> }): Promise<NetnsFleet> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-netns-'));
    const lab = await NetnsLab.create({ hosts: opts.hosts });
    try {
      const nats = await lab.startNats(path.join(dir, 'nats'));
      const redis = await lab.startRedis(path.join(dir, 'redis'));
      // The scheduler and the verifier on the test's side; no executor of the Stack's own.
      const stack = await Stack.start({ hosts: [], natsUrl: nats.url, env: { REDIS_URL: redis.url, ...opts.env } });
      return new NetnsFleet(lab, stack, nats, redis, dir);
    } catch (err) {
      await lab.teardown();
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** The bus name of host `short` (unique per run, like the Stack's). */
  hostName(short: string): string {
    return `${short}-${this.lab.tag}`;
  }

  dirs(short: string): HostDirs {
    return this.stack.dirs(this.hostName(short));
  }

  logFile(short: string): string {
    return path.join(this.stack.dir, `executor-${this.hostName(short)}.log`);
  }

  log(short: string): Promise<string> {
    return readFile(this.logFile(short), 'utf8').catch(() => '');
  }

  qmpPath(short: string, vm: string): string {
    return path.join(this.dirs(short).qmpDir, `${vm}.qmp`);
  }

  /** Write a VM definition into host `short`'s VM directory (its executor starts it: VMSAVE_AUTOSTART). */
  async defineVm(short: string, def: VmDefinition): Promise<void> {
    const d = this.dirs(short);
    await mkdir(d.vmDir, { recursive: true });
    await writeFile(path.join(d.vmDir, `${def.name}.json`), JSON.stringify(def));
  }

  /**
   * Start host `short`'s executor inside its namespace (`ip netns exec`) and wait until it runs.
   * NATS_URL and REDIS_URL name the lab's addresses, reached through the namespace's veth. A
   * running executor of that host is stopped first (a restart with `env`).
   */
  async startExecutor(short: string, env: Record<string, string> = {}): Promise<ChildProcess> {
    const h = this.lab.host(short);
    const host = this.hostName(short);
    const d = this.dirs(short);
    // A restart: the running one stops first (SIGTERM: in-flight work is handed back).
    await this.stopExecutor(short);
    for (const p of [d.vmDir, d.qmpDir, d.imageDir]) await mkdir(p, { recursive: true });
    const child = this.lab.exec(short, process.execPath, ['--conditions=development', '--import', TSX, path.join(REPO, 'services', 'executor', 'src', 'main.ts')], {
      cwd: REPO,
      logFile: this.logFile(short),
      env: {
        ...process.env,
        ...this.stack.env,
        NATS_URL: `nats://${this.lab.serviceAddr}:${this.nats.port}`,
        REDIS_URL: `redis://${h.hostAddr}:${this.redis.port}`,
        VMSAVE_HOST: host,
        VMSAVE_STATE_DIR: d.stateDir,
        VMSAVE_METRICS_PORT: '0',
        ...env,
      },
    });
    this.executors.set(short, child);
    const mark = (await this.log(short)).length;
    await waitFor(
      `executor ${host} to run in ${h.ns}`,
      async () => {
        if (child.exitCode !== null || child.signalCode !== null)
          throw new Error(`executor ${host} exited (${child.exitCode ?? child.signalCode}): ${(await this.log(short)).slice(-2000)}`);
        return (await this.log(short)).slice(mark).includes('"msg":"executor running"');
      },
      120_000,
      200,
    );
    return child;
  }

  /** Host `short`'s executor is up (started and not exited). */
  running(short: string): boolean {
    const c = this.executors.get(short);
    return c !== undefined && c.exitCode === null && c.signalCode === null;
  }

  async stopExecutor(short: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const c = this.executors.get(short);
    if (c) await this.lab.stop(c, signal);
  }

  /**
   * The established TCP connections seen from inside host `short`'s namespace
   * (`/proc/<executor>/net/tcp` is the table of the process's own network namespace), as
   * `address:port` pairs.
   */
  async connections(short: string): Promise<Array<{ local: string; remote: string }>> {
    const pid = this.executors.get(short)?.pid;
    if (!pid) return [];
    const text = await readFile(`/proc/${pid}/net/tcp`, 'utf8').catch(() => '');
    const addr = (hex: string) => {
      const [a, p] = hex.split(':') as [string, string];
      const ipv4 = [3, 2, 1, 0].map((i) => Number.parseInt(a.slice(i * 2, i * 2 + 2), 16)).join('.');
      return `${ipv4}:${Number.parseInt(p, 16)}`;
    };
    return text
      .split('\n')
      .slice(1)
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f[3] === '01')
      .map((f) => ({ local: addr(f[1]!), remote: addr(f[2]!) }));
  }

  /**
   * Guest RAM of a VM (over QMP `pmemsave`, the file in the fleet's directory) from 1 MiB (past
   * the legacy VGA/BIOS window) to its end, as the sha256 of each MiB.
   */
  async ramDigests(qmp: Parameters<typeof guestMemory>[0], memoryMiB: number): Promise<string[]> {
    const ram = await guestMemory(qmp, this.dir, MiB, (memoryMiB - 1) * MiB);
    const out: string[] = [];
    for (let i = 0; i < ram.length; i += MiB)
      out.push(
        createHash('sha256')
          .update(ram.subarray(i, i + MiB))
          .digest('hex'),
      );
    return out;
  }

  /** Stop the executors, the Stack (scheduler, verifier, QEMUs) and the lab; nothing is left behind. */
  async stop(): Promise<void> {
    for (const short of this.executors.keys()) await this.stopExecutor(short).catch(() => undefined);
    await this.stack.stop().catch(() => undefined);
    await this.lab.teardown();
    await rm(this.dir, { recursive: true, force: true });
  }
}
