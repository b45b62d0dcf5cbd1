import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HostAnnouncement, VmDefinition } from '@vmsave/contracts';
import { Bus, readHosts } from '@vmsave/bus';
import { launchVm, detectAccel, type VmProcess } from '@vmsave/qemu';
import { VmsaveClient } from '@vmsave/client';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const TSX = path.join(REPO, 'node_modules', 'tsx', 'dist', 'loader.mjs');

/** `scheduler` is the first scheduler; `scheduler:2`, `scheduler:3`, … the others of a stack started with `schedulers: N`. */
export type ServiceName = 'scheduler' | `scheduler:${number}` | 'verifier' | 'dashboard' | `executor:${string}`;

/** The name of the `i`-th scheduler (1-based): `scheduler`, then `scheduler:2`, `scheduler:3`, … */
export const schedulerName = (i: number): ServiceName => (i === 1 ? 'scheduler' : `scheduler:${i}`);

/** One `"msg":"partitions owned"` line of a scheduler's log: when, and the partitions it held from then on. */
export interface PartitionsOwned {
  time: number;
  partitions: number[];
}

export interface HostDirs {
  stateDir: string;
  vmDir: string;
  qmpDir: string;
  imageDir: string;
}

/**
 * A real vmsave stack for end-to-end tests: the scheduler (or several, `schedulers: N`, each its
 * own process with the same environment), the verifier and one executor per host, each its own
 * process, on the real NATS and Redis, with real QEMU VMs the test starts. Host names are unique
 * per stack so runs never share work queues.
 */
export class Stack {
  readonly procs = new Map<ServiceName, ChildProcess>();
  private readonly serviceEnv = new Map<ServiceName, Record<string, string>>();
  readonly vms: VmProcess[] = [];
  readonly hosts: string[];
  bus!: Bus;
  client!: VmsaveClient;
  env: Record<string, string> = {};
  /** The schedulers' service names, in start order (`scheduler`, `scheduler:2`, …). */
  schedulers: ServiceName[] = ['scheduler'];
  private constructor(
    readonly dir: string,
    hostNames: string[],
    private readonly extraEnv: Record<string, string>,
  ) {
    const tag = uniq('e2e').replace(/[^A-Za-z0-9_-]/g, '');
    this.hosts = hostNames.map((h) => `${h}-${tag}`);
  }

  static async start(opts: {
    hosts: string[];
    env?: Record<string, string>;
    hostEnv?: Record<string, Record<string, string>>;
    /** Extra environment of the scheduler(s) or the verifier alone (e.g. its metrics port); `scheduler` applies to every scheduler. */
    serviceEnv?: Partial<Record<'scheduler' | 'verifier', Record<string, string>>>;
    /** How many scheduler processes to start with the same environment (default 1). */
    schedulers?: number;
    /**
     * Wait for `all` schedulers to log `scheduler running` (default), or for `one` of them (a
     * scheduler that stands by logs it only once it becomes the active one).
     */
    schedulersReady?: 'all' | 'one';
    natsUrl?: string;
    replicas?: number;
  }): Promise<Stack> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-e2e-'));
    const s = new Stack(dir, opts.hosts, opts.env ?? {});
    const urls = await testUrls();
    const natsUrl = opts.natsUrl ?? urls.natsUrl;
    const redisUrl = urls.redisUrl;
    s.env = {
      NATS_URL: natsUrl,
      REDIS_URL: redisUrl,
      VMSAVE_REDIS_PREFIX: path.basename(dir).replace(/[^A-Za-z0-9_-]/g, '_'),
      VMSAVE_LOG_LEVEL: 'debug',
      VMSAVE_HEARTBEAT_MS: '500',
      VMSAVE_ANNOUNCE_MS: '1000',
      VMSAVE_HEARTBEAT_TIMEOUT_MS: '6000',
      VMSAVE_HOST_OFFLINE_MS: '15000',
      VMSAVE_RETRY_BASE_MS: '500',
      VMSAVE_TICK_MS: '250',
      VMSAVE_LEASE_TTL_MS: '5000',
      // Several schedulers: a dead one's VM partitions are taken over within this (below the VM lease TTL).
      VMSAVE_PARTITION_TTL_MS: '2500',
      // No fixed /metrics ports for test services (parallel stacks); a test that scrapes sets its own.
      VMSAVE_METRICS_PORT: '0',
      ...opts.env,
    };
    if (opts.replicas) s.env.NATS_REPLICAS = String(opts.replicas);
    s.bus = await Bus.connect({ servers: natsUrl, name: 'e2e', replicas: opts.replicas });
    await s.bus.ensureStreams();
    s.client = new VmsaveClient(s.bus);
    for (const [i, h] of s.hosts.entries()) {
      const d = s.dirs(h);
      for (const p of [d.vmDir, d.qmpDir, d.imageDir]) await mkdir(p, { recursive: true });
      await s.startService(`executor:${h}`, opts.hostEnv?.[opts.hosts[i]!]);
    }
    const n = opts.schedulers ?? 1;
    if (!Number.isInteger(n) || n < 1) throw new RangeError(`schedulers: a whole number of at least 1, got ${n}`);
    s.schedulers = Array.from({ length: n }, (_, i) => schedulerName(i + 1));
    for (const name of s.schedulers) await s.startService(name, opts.serviceEnv?.scheduler);
    await s.startService('verifier', opts.serviceEnv?.verifier);
    // The scheduler rebuilds its view from the whole log before it takes commands: wait for it,
    // so a test's first request is not timed against that replay.
    const running = /"msg":"(scheduler|verifier|executor) running"/;
    const waitAll = opts.schedulersReady === 'one' ? [] : s.schedulers;
    for (const name of [...waitAll, 'verifier', ...s.hosts.map((h) => `executor:${h}` as const)] as ServiceName[]) await s.waitForLog(name, running, 180_000);
    if (opts.schedulersReady === 'one')
      await waitFor('a scheduler to run', async () => (await Promise.all(s.schedulers.map((n) => s.log(n)))).some((l) => running.test(l)), 180_000, 200);
    return s;
  }

  /** The real host name of a short name given to `start`. */
  host(short: string): string {
    return this.hosts.find((h) => h.startsWith(`${short}-`)) ?? short;
  }

  dirs(host: string): HostDirs {
    const stateDir = path.join(this.dir, host);
    return { stateDir, vmDir: path.join(stateDir, 'vms'), qmpDir: path.join(stateDir, 'qmp'), imageDir: path.join(stateDir, 'images') };
  }

  logFile(name: ServiceName): string {
    return path.join(this.dir, `${name.replace(':', '-')}.log`);
  }

  /** Every `"msg":"partitions owned"` line a scheduler logged so far, oldest first. */
  async partitionsOwned(name: ServiceName): Promise<PartitionsOwned[]> {
    const out: PartitionsOwned[] = [];
    for (const line of (await this.log(name)).split('\n')) {
      if (!line.includes('"msg":"partitions owned"')) continue;
      try {
        const l = JSON.parse(line) as { time?: unknown; partitions?: unknown };
        if (typeof l.time === 'number' && Array.isArray(l.partitions) && l.partitions.every((p) => Number.isInteger(p)))
          out.push({ time: l.time, partitions: l.partitions as number[] });
      } catch {
        /* a line cut short by a SIGKILL */
      }
    }
    return out;
  }

  async log(name: ServiceName): Promise<string> {
    return readFile(this.logFile(name), 'utf8').catch(() => '');
  }

  /** Wait until a service's log has a line matching `re` (fails early if the process exits). */
  async waitForLog(name: ServiceName, re: RegExp, timeoutMs = 60_000): Promise<void> {
    await waitFor(
      `${name} to log ${re}`,
      async () => {
        const p = this.procs.get(name);
        if (p && p.exitCode !== null) throw new Error(`${name} exited with ${p.exitCode}: ${(await this.log(name)).slice(-2000)}`);
        return re.test(await this.log(name));
      },
      timeoutMs,
      200,
    );
  }

  /** Start (or restart) a service; a restart without `env` gets the env its first start had. */
  async startService(name: ServiceName, env: Record<string, string> | undefined = this.serviceEnv.get(name)): Promise<ChildProcess> {
    if (env) this.serviceEnv.set(name, env);
    const [svc, host] = name.split(':') as [string, string | undefined];
    // `scheduler:2` names a second scheduler, not a host.
    const extra: Record<string, string> = svc === 'executor' && host ? { VMSAVE_HOST: host, VMSAVE_STATE_DIR: this.dirs(host).stateDir } : {};
    const out = createWriteStream(this.logFile(name), { flags: 'a' });
    // setpriv --pdeathsig: a service dies with the test process, even when that is killed, so no
    // orphaned scheduler keeps acting on the shared bus after a crashed run.
    // --conditions=development: the service's imports of other packages resolve to their sources
    // (the `development` entry of their exports), as in the tests, not to a possibly stale dist/.
    const child = spawn(
      'setpriv',
      ['--pdeathsig', 'KILL', '--', process.execPath, '--conditions=development', '--import', TSX, path.join(REPO, 'services', svc, 'src', 'main.ts')],
      {
        cwd: REPO,
        env: { ...process.env, ...this.env, ...this.extraEnv, ...extra, ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    child.stdout!.pipe(out);
    child.stderr!.pipe(out);
    this.procs.set(name, child);
    return child;
  }

  /** Send `signal` to a service and wait for it to exit (SIGKILL: no shutdown of its own, as a crash). */
  async kill(name: ServiceName, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.procs.get(name);
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    // A service that does not stop within 15 s is killed: tests must never hang on shutdown.
    const timer = setTimeout(() => p.kill('SIGKILL'), 15_000);
    await gone;
    clearTimeout(timer);
  }

  /** Write a VM definition into a host's VM directory and start its QEMU (owned by the test). */
  async startVm(short: string, def: VmDefinition, opts: { paused?: boolean } = {}): Promise<VmProcess> {
    const d = this.dirs(this.host(short));
    await writeFile(path.join(d.vmDir, `${def.name}.json`), JSON.stringify(def));
    const vm = await launchVm(def, { qmpSocketPath: path.join(d.qmpDir, `${def.name}.qmp`), startPaused: opts.paused, accel: await detectAccel(), readyTimeoutMs: 90_000 });
    this.vms.push(vm);
    return vm;
  }

  /** Wait until a host has announced itself with every named VM in a live state. */
  async waitForHost(short: string, vmNames: string[] = [], timeoutMs = 60_000): Promise<HostAnnouncement> {
    const host = this.host(short);
    return waitFor(
      `host ${host} to announce ${vmNames.join(', ')}`,
      async () => {
        for await (const a of readHosts(this.bus)) {
          if (a.host === host && vmNames.every((n) => a.vms.some((v) => v.name === n && v.status !== 'stopped'))) return a;
        }
        return undefined;
      },
      timeoutMs,
      300,
    );
  }

  async stop(): Promise<void> {
    for (const name of [...this.procs.keys()].reverse()) await this.kill(name, 'SIGTERM').catch(() => undefined);
    for (const vm of this.vms) await vm.kill().catch(() => undefined);
    await killProcessesUnder(this.dir);
    for (const h of this.hosts) await this.bus.jsm.consumers.delete('VMSAVE_WORK', `executor-${h}`).catch(() => undefined);
    await this.bus.close();
    if (!process.env.VMSAVE_KEEP_E2E) await rm(this.dir, { recursive: true, force: true });
  }
}

/** Kill every process whose command line mentions `dir` (QEMUs the executors started, e.g. restores). */
export async function killProcessesUnder(dir: string): Promise<number> {
  let n = 0;
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(dir) && Number(pid) !== process.pid) {
      try {
        process.kill(Number(pid), 'SIGKILL');
        n++;
      } catch {
        /* gone */
      }
    }
  }
  return n;
}
