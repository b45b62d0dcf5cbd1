import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { freePort } from './servers.ts';
import { waitFor } from './wait.ts';

/**
 * Separate hosts for multi-host end-to-end tests: one network namespace per host, joined to the
 * test's side by a veth pair, with the test's own (private) NATS and Redis reachable over it.
 *
 * Addresses: the lab takes a free second octet R (a lock file per R, so concurrent labs on the
 * machine never share one) and gives host i the pair 10.R.(i+1).1/30 (the test's side) and
 * 10.R.(i+1).2/30 (inside the namespace, with a default route to the test's side). The services
 * listen on the lab's service address 10.R.0.1/32, which the lab adds to the test side's `lo`
 * (nats-server listens on one address only, and every namespace reaches that one through its own
 * veth); Redis also listens on 127.0.0.1 and on every test-side veth address.
 *
 * Everything the lab makes (namespaces, links, the address, processes inside the namespaces, the
 * servers) is recorded in `/run/vmsave-netns/r<R>.json` as it is made and removed by `teardown`,
 * by a process `exit` hook when a test forgets or dies, and by the next lab's start when the
 * owning process was killed outright.
 */

const STATE_DIR = '/run/vmsave-netns';
const OCTETS = { min: 200, max: 249 };

export interface NetnsHost {
  /** The short name given to `create` (`a`, `b`). */
  name: string;
  /** The namespace (`ip netns exec <ns> …`). */
  ns: string;
  /** The test side's end of the veth pair, and the namespace's end (inside the namespace). */
  hostLink: string;
  nsLink: string;
  /** Addresses of the two ends (no prefix length). */
  hostAddr: string;
  nsAddr: string;
}

interface LabRecord {
  pid: number;
  octet: number;
  serviceAddr: string;
  addrAdded: boolean;
  namespaces: string[];
  links: string[];
}

export interface LabServer {
  /** URL for the test's side (the service address). */
  url: string;
  port: number;
  proc: ChildProcess;
}

function ip(args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`);
  }
}

const quiet = (args: string[]): void => {
  try {
    ip(args);
  } catch {
    /* already gone */
  }
};

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
};

function kill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}

/** Pids of the processes inside namespace `ns` (none when it does not exist). */
export function netnsPids(ns: string): number[] {
  try {
    return ip(['netns', 'pids', ns])
      .split('\n')
      .map((s) => Number(s.trim()))
      .filter((n) => n > 0);
  } catch {
    return [];
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Remove what a record names: processes in its namespaces, links, address, namespaces (its servers die with their parent). */
function removeRecorded(r: LabRecord): void {
  for (const ns of r.namespaces) {
    for (let i = 0; i < 50; i++) {
      const pids = netnsPids(ns).filter((p) => p !== process.pid);
      if (!pids.length) break;
      for (const p of pids) kill(p);
      sleepSync(100);
    }
  }
  for (const l of r.links) quiet(['link', 'del', l]);
  if (r.addrAdded) quiet(['addr', 'del', `${r.serviceAddr}/32`, 'dev', 'lo']);
  for (const ns of r.namespaces) quiet(['netns', 'del', ns]);
}

/** Tear down labs whose owning process is gone (it was killed before its hooks ran). */
export function sweepStaleLabs(): number {
  let n = 0;
  let files: string[] = [];
  try {
    files = readdirSync(STATE_DIR).filter((f) => /^r\d+\.json$/.test(f));
  } catch {
    return 0;
  }
  for (const f of files) {
    const file = path.join(STATE_DIR, f);
    let r: LabRecord | undefined;
    try {
      r = JSON.parse(readFileSync(file, 'utf8')) as LabRecord;
    } catch {
      r = undefined;
    }
    if (r && alive(r.pid)) continue;
    if (r) removeRecorded(r);
    rmSync(file, { force: true });
    n++;
  }
  return n;
}

/**
 * Why this machine cannot run a netns lab (not root, no `ip`, no permission to make a
 * namespace), or undefined when it can. A test skips with this reason instead of passing silently.
 */
export function netnsUnavailable(): string | undefined {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return `network namespaces need root (uid ${process.getuid?.()})`;
  const probe = `vmsave-probe-${process.pid}`;
  try {
    ip(['netns', 'list']);
    ip(['netns', 'add', probe]);
  } catch (err) {
    return `ip netns is unavailable: ${(err as Error).message}`;
  } finally {
    quiet(['netns', 'del', probe]);
  }
  return undefined;
}

/** Second octets some address or route of this host already uses in 10.0.0.0/8. */
function octetsInUse(): Set<number> {
  const used = new Set<number>();
  const text = `${ip(['-4', 'addr', 'show'])}\n${ip(['-4', 'route', 'show', 'table', 'all'])}`;
  for (const m of text.matchAll(/\b10\.(\d{1,3})\.\d{1,3}\.\d{1,3}/g)) used.add(Number(m[1]));
  // A route covering all of 10/8 (or less specific) leaves no octet free of it: take none of them then.
  if (/\b10\.0\.0\.0\/[0-8]\b/.test(text)) for (let o = OCTETS.min; o <= OCTETS.max; o++) used.add(o);
  return used;
}

const tcpAnswers = (host: string, port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = net.connect(port, host, () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

export class NetnsLab {
  readonly hosts: NetnsHost[] = [];
  /** The address the lab's servers listen on, reachable from the test and from every namespace. */
  readonly serviceAddr: string;
  private readonly children = new Set<ChildProcess>();
  private readonly stateFile: string;
  private torn = false;
  private readonly onExit = () => this.teardownSync();

  private constructor(
    readonly tag: string,
    readonly octet: number,
    private readonly record: LabRecord,
  ) {
    this.serviceAddr = record.serviceAddr;
    this.stateFile = path.join(STATE_DIR, `r${octet}.json`);
  }

  /**
   * Make one namespace per name in `hosts`, each with its veth pair up, `lo` up and a default
   * route to the test's side. `tag` makes the names unique (letters and digits, at most 6 used).
   */
  static async create(opts: { hosts: string[]; tag?: string }): Promise<NetnsLab> {
    if (!opts.hosts.length || opts.hosts.length > 60) throw new RangeError('hosts: 1 to 60 names');
    const tag = (opts.tag ?? `${process.pid.toString(36)}${Math.random().toString(36).slice(2)}`)
      .replace(/[^a-z0-9]/gi, '')
      .slice(0, 6)
      .toLowerCase();
    mkdirSync(STATE_DIR, { recursive: true });
    sweepStaleLabs();
    const used = octetsInUse();
    const candidates = [];
    for (let o = OCTETS.min; o <= OCTETS.max; o++) if (!used.has(o)) candidates.push(o);
    candidates.sort(() => Math.random() - 0.5);
    let lab: NetnsLab | undefined;
    for (const octet of candidates) {
      const record: LabRecord = { pid: process.pid, octet, serviceAddr: `10.${octet}.0.1`, addrAdded: false, namespaces: [], links: [] };
      try {
        // The record is the octet's lock: `wx` fails when another lab holds it.
        writeFileSync(path.join(STATE_DIR, `r${octet}.json`), JSON.stringify(record), { flag: 'wx' });
      } catch {
        continue;
      }
      lab = new NetnsLab(tag, octet, record);
      break;
    }
    if (!lab) throw new Error(`no free 10.R.0.0/16 for a netns lab (R in ${OCTETS.min}..${OCTETS.max} all taken)`);
    process.on('exit', lab.onExit);
    try {
      lab.build(opts.hosts);
    } catch (err) {
      lab.teardownSync();
      throw err;
    }
    return lab;
  }

  private save(): void {
    writeFileSync(this.stateFile, JSON.stringify(this.record));
  }

  private build(names: string[]): void {
    const r = this.record;
    r.addrAdded = true;
    this.save();
    ip(['addr', 'add', `${r.serviceAddr}/32`, 'dev', 'lo']);
    for (const [i, name] of names.entries()) {
      if (!/^[a-z0-9][a-z0-9-]{0,15}$/i.test(name)) throw new TypeError(`host name "${name}": letters, digits and - (1–16)`);
      const x = i + 1;
      const h: NetnsHost = {
        name,
        ns: `vmsave-${this.octet}-${this.tag}-${name}`,
        // Unique on the machine by the octet's lock; IFNAMSIZ: at most 15 characters.
        hostLink: `vmsave${this.octet}x${x}h`,
        nsLink: `vmsave${this.octet}x${x}n`,
        hostAddr: `10.${this.octet}.${x}.1`,
        nsAddr: `10.${this.octet}.${x}.2`,
      };
      r.namespaces.push(h.ns);
      r.links.push(h.hostLink);
      this.save();
      ip(['netns', 'add', h.ns]);
      ip(['link', 'add', h.hostLink, 'type', 'veth', 'peer', 'name', h.nsLink]);
      ip(['link', 'set', h.nsLink, 'netns', h.ns]);
      ip(['addr', 'add', `${h.hostAddr}/30`, 'dev', h.hostLink]);
      ip(['link', 'set', h.hostLink, 'up']);
      ip(['-n', h.ns, 'link', 'set', 'lo', 'up']);
      ip(['-n', h.ns, 'addr', 'add', `${h.nsAddr}/30`, 'dev', h.nsLink]);
      ip(['-n', h.ns, 'link', 'set', h.nsLink, 'up']);
      ip(['-n', h.ns, 'route', 'add', 'default', 'via', h.hostAddr]);
      this.hosts.push(h);
    }
  }

  host(name: string): NetnsHost {
    const h = this.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`no host "${name}" in this lab (${this.hosts.map((x) => x.name).join(', ')})`);
    return h;
  }

  private spawnRecorded(what: string, cmd: string, args: string[], logFile: string, opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
    mkdirSync(path.dirname(logFile), { recursive: true });
    const out = createWriteStream(logFile, { flags: 'a' });
    // --pdeathsig: the process dies with the test even when the test is killed outright.
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', cmd, ...args], { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.pipe(out);
    child.stderr!.pipe(out);
    child.once('error', (err) => out.write(`${what}: ${err.message}\n`));
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  private async startServer(what: string, cmd: string, args: (port: number) => string[], dir: string): Promise<LabServer> {
    await mkdir(dir, { recursive: true });
    const port = await freePort();
    const logFile = path.join(dir, `${what}.log`);
    const proc = this.spawnRecorded(what, cmd, args(port), logFile);
    await waitFor(
      `${what} on ${this.serviceAddr}:${port}`,
      async () => {
        if (proc.exitCode !== null) throw new Error(`${what} exited with ${proc.exitCode}: ${(await readFile(logFile, 'utf8').catch(() => '')).slice(-1500)}`);
        return tcpAnswers(this.serviceAddr, port);
      },
      20_000,
      100,
    );
    return { url: '', port, proc };
  }

  /** A private nats-server with JetStream (its store in `dir`), listening on the service address. */
  async startNats(dir: string): Promise<LabServer> {
    const s = await this.startServer(
      'nats-server',
      'nats-server',
      (port) => ['-a', this.serviceAddr, '-p', String(port), '-js', '-sd', path.join(dir, 'store'), '-n', `lab-${this.tag}`],
      dir,
    );
    return { ...s, url: `nats://${this.serviceAddr}:${s.port}` };
  }

  /** A private redis-server (nothing on disk) on 127.0.0.1, the service address and every test-side veth address. */
  async startRedis(dir: string): Promise<LabServer> {
    const binds = ['127.0.0.1', this.serviceAddr, ...this.hosts.map((h) => h.hostAddr)];
    const s = await this.startServer('redis-server', 'redis-server', (port) => ['--port', String(port), '--bind', ...binds, '--save', '', '--appendonly', 'no', '--dir', dir], dir);
    return { ...s, url: `redis://127.0.0.1:${s.port}` };
  }

  /**
   * Run `cmd args` inside host `name`'s namespace (`ip netns exec`, which execs it: signals to
   * the returned process reach it), its output appended to `logFile`.
   */
  exec(name: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; logFile: string }): ChildProcess {
    const h = this.host(name);
    return this.spawnRecorded(`${cmd} in ${h.ns}`, 'ip', ['netns', 'exec', h.ns, cmd, ...args], opts.logFile, { cwd: opts.cwd, env: opts.env });
  }

  /** Signal a process the lab started and wait for it to exit (SIGKILL after `graceMs`). */
  async stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 15_000): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await gone;
    clearTimeout(timer);
  }

  /** Pids of every process in host `name`'s namespace. */
  pids(name: string): number[] {
    return netnsPids(this.host(name).ns);
  }

  /** Everything the lab made still exists? (For tests of the harness itself.) */
  leftovers(): string[] {
    const left: string[] = [];
    const nss = ip(['netns', 'list']);
    const links = ip(['-br', 'link']);
    for (const h of this.hosts) {
      if (new RegExp(`^${h.ns}\\b`, 'm').test(nss)) left.push(`namespace ${h.ns}`);
      if (new RegExp(`^${h.hostLink}\\b`, 'm').test(links)) left.push(`link ${h.hostLink}`);
    }
    if (ip(['-4', 'addr', 'show', 'dev', 'lo']).includes(`${this.serviceAddr}/32`)) left.push(`address ${this.serviceAddr} on lo`);
    return left;
  }

  /** Stop the lab's processes gracefully, then remove everything (see `teardownSync`). */
  async teardown(): Promise<void> {
    if (this.torn) return;
    await Promise.allSettled([...this.children].map((c) => this.stop(c, 'SIGTERM', 5000)));
    this.teardownSync();
  }

  /** Kill what is left (the lab's children, everything in its namespaces) and delete links, address and namespaces. */
  teardownSync(): void {
    if (this.torn) return;
    this.torn = true;
    for (const c of this.children) if (c.pid) kill(c.pid);
    removeRecorded(this.record);
    rmSync(this.stateFile, { force: true });
    process.off('exit', this.onExit);
  }
}
