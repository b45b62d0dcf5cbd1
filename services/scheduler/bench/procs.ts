/**
 * The processes a load run needs, all private to it: a nats-server with JetStream in a temporary
 * store, a redis-server without persistence, and the real scheduler as a child process.
 * Every process started here is registered so that `stopAll` (also run on Ctrl-C and on failure)
 * ends it, and nothing else.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file is services/scheduler/bench/procs.ts). */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface Proc {
  name: string;
  child: ChildProcess;
  /** Where its stdout and stderr go. */
  logFile: string;
}

const running = new Set<Proc>();

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const answers = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

function start(name: string, cmd: string, args: string[], logFile: string, opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Proc {
  const fd = openSync(logFile, 'a');
  // Not detached: if this process is killed outright, the children see their parent go with the session.
  const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const p: Proc = { name, child, logFile };
  running.add(p);
  child.once('exit', () => running.delete(p));
  return p;
}

async function waitPort(p: Proc, port: number, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await answers(port))) {
    if (p.child.exitCode !== null) throw new Error(`${p.name} exited (${p.child.exitCode}) before listening: ${tail(p.logFile)}`);
    if (Date.now() > end) throw new Error(`${p.name} did not listen on ${port} within ${timeoutMs} ms: ${tail(p.logFile)}`);
    await sleep(50);
  }
}

export function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** `nats-server -js` on a free loopback port with its store under `dir`. */
export async function startNats(dir: string, bin = 'nats-server'): Promise<{ proc: Proc; url: string }> {
  const port = await freePort();
  const proc = start('nats-server', bin, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', path.join(dir, 'nats')], path.join(dir, 'nats.log'));
  await waitPort(proc, port);
  return { proc, url: `nats://127.0.0.1:${port}` };
}

/** `redis-server` on a free loopback port, no RDB snapshots, no AOF. */
export async function startRedis(dir: string, bin = 'redis-server'): Promise<{ proc: Proc; url: string }> {
  const port = await freePort();
  const proc = start('redis-server', bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], path.join(dir, 'redis.log'));
  await waitPort(proc, port);
  return { proc, url: `redis://127.0.0.1:${port}` };
}

/** The real scheduler (`services/scheduler/src/main.ts`) as its own node process; its pino log goes to `<dir>/<name>.log` (name `scheduler` unless given). */
export async function startScheduler(
  dir: string,
  env: Record<string, string>,
  opts: { cpuProfDir?: string; readyTimeoutMs?: number; nodeArgs?: string[]; name?: string } = {},
): Promise<Proc> {
  const args = [
    ...(opts.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProfDir}`] : []),
    ...(opts.nodeArgs ?? []),
    '--conditions=development',
    '--import',
    'tsx',
    'services/scheduler/src/main.ts',
  ];
  const name = opts.name ?? 'scheduler';
  const proc = start(name, process.execPath, args, path.join(dir, `${name}.log`), { cwd: REPO, env: { ...process.env, ...env } });
  const end = Date.now() + (opts.readyTimeoutMs ?? 60_000);
  for (;;) {
    const text = await readFile(proc.logFile, 'utf8').catch(() => '');
    if (text.includes('"msg":"scheduler running"')) return proc;
    if (proc.child.exitCode !== null) throw new Error(`${name} exited (${proc.child.exitCode}) during start: ${tail(proc.logFile)}`);
    if (Date.now() > end) throw new Error(`${name} not running after ${opts.readyTimeoutMs ?? 60_000} ms: ${tail(proc.logFile)}`);
    await sleep(100);
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
export async function stop(p: Proc, graceMs = 10_000): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  const gone = new Promise<void>((r) => p.child.once('exit', () => r()));
  p.child.kill('SIGTERM');
  const timer = setTimeout(() => p.child.kill('SIGKILL'), graceMs);
  await gone;
  clearTimeout(timer);
}

/** Stop every process this module started, most recent first. */
export async function stopAll(): Promise<void> {
  for (const p of [...running].reverse()) await stop(p).catch(() => undefined);
}

/** Last resort on process exit: no waiting is possible there, so just signal. */
export function killAllNow(): void {
  for (const p of running) if (p.child.exitCode === null) p.child.kill('SIGKILL');
}

export interface ProcUsage {
  /** User + system CPU time, ms. */
  cpuMs: number;
  rssBytes: number;
  /** Peak RSS (VmHWM). */
  peakRssBytes: number;
}

const CLK_TCK = 100;

/** CPU time from /proc/PID/stat (utime + stime, in clock ticks of 1/100 s on Linux) and RSS from /proc/PID/status. */
export async function usage(pid: number): Promise<ProcUsage> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may contain spaces: split after its closing parenthesis.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const cpuMs = ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(/^(\w+):\s+(\d+) kB/m.exec(status.split('\n').find((l) => l.startsWith(`${key}:`)) ?? '')?.[2] ?? 0) * 1024;
  return { cpuMs, rssBytes: kb('VmRSS'), peakRssBytes: kb('VmHWM') };
}

/**
 * The partitions a scheduler says it owns: the `partitions` of the last `"msg":"partitions owned"`
 * line of its log; undefined while it has logged none.
 */
export async function ownedPartitions(logFile: string): Promise<number[] | undefined> {
  const text = await readFile(logFile, 'utf8').catch(() => '');
  const lines = text.split('\n');
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!;
    if (!line.includes('"msg":"partitions owned"')) continue;
    try {
      const parts = (JSON.parse(line) as { partitions?: unknown }).partitions;
      if (Array.isArray(parts) && parts.every((p) => Number.isInteger(p))) return parts as number[];
    } catch {
      // A line cut short while being written: look further up.
    }
  }
  return undefined;
}

/** How many lines of a log contain `needle` (e.g. `"msg":"partitions owned"`: one per ownership change). */
export async function countLines(logFile: string, needle: string): Promise<number> {
  const text = await readFile(logFile, 'utf8').catch(() => '');
  let n = 0;
  for (let i = text.indexOf(needle); i >= 0; i = text.indexOf(needle, i + needle.length)) n++;
  return n;
}
