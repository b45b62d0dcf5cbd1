/**
 * What the benchmark reads from the machine: its description, the page cache, the CPU time of
 * QEMU's threads (/proc/PID/task/TID/stat) and the disk's counters (/proc/diskstats), and the
 * disk's own sequential O_DIRECT bandwidth measured with dd.
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { open, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface Machine {
  cpus: number;
  cpuModel: string;
  ramGiB: number;
  kernel: string;
  os: string;
  disk: string;
  filesystem: string;
  qemu: string;
  node: string;
  /** The directory the images are written in, as `df` describes it (not its path). */
  imageDirFs: string;
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
}

export async function describeMachine(imageDir: string, qemuBinary = 'qemu-system-x86_64'): Promise<Machine> {
  const dev = await blockDevice(imageDir);
  const osRelease = await readFile('/etc/os-release', 'utf8').catch(() => '');
  const pretty = /^PRETTY_NAME="?([^"\n]*)"?/m.exec(osRelease)?.[1] ?? os.type();
  const df = sh('df', ['--output=source,fstype,size', imageDir]).split('\n')[1]?.trim().split(/\s+/) ?? [];
  const rota = dev ? (await readFile(`/sys/block/${dev.name}/queue/rotational`, 'utf8').catch(() => '?')).trim() : '?';
  const sched = dev ? (await readFile(`/sys/block/${dev.name}/queue/scheduler`, 'utf8').catch(() => '?')).trim() : '?';
  const sizeSectors = dev ? Number((await readFile(`/sys/block/${dev.name}/size`, 'utf8').catch(() => '0')).trim()) : 0;
  const driver = dev
    ? (sh('readlink', ['-f', `/sys/block/${dev.name}/device/driver`])
        .split('/')
        .pop() ?? '')
    : '';
  return {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    ramGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    kernel: os.release(),
    os: pretty,
    disk: dev ? `${dev.name} (${((sizeSectors * 512) / 1024 ** 3).toFixed(0)} GiB, driver ${driver || '?'}, rotational=${rota}, scheduler ${sched})` : 'unknown',
    filesystem: df.length >= 2 ? `${df[1]} on ${df[0]}` : 'unknown',
    qemu: sh(qemuBinary, ['--version']).split('\n')[0] ?? 'unknown',
    node: process.version,
    imageDirFs: df.length >= 3 ? `${df[1]} on ${df[0]} (${df[2]})` : 'unknown',
  };
}

/** The whole-disk block device (name, major:minor) holding `dir`, from its st_dev. */
export async function blockDevice(dir: string): Promise<{ name: string; major: number; minor: number } | undefined> {
  const st = await stat(dir);
  const major = Number((BigInt(st.dev) >> 8n) & 0xfffn);
  const minor = Number((BigInt(st.dev) & 0xffn) | ((BigInt(st.dev) >> 12n) & 0xfff00n));
  const text = await readFile(`/sys/dev/block/${major}:${minor}/uevent`, 'utf8').catch(() => '');
  const name = /^DEVNAME=(.*)$/m.exec(text)?.[1];
  if (!name) return undefined;
  // A partition: report its parent disk (diskstats has both; the disk's line is what dd sees too).
  const parent = sh('lsblk', ['-no', 'pkname', `/dev/${name}`]).split('\n')[0];
  if (parent) {
    const p = (await readFile(`/sys/block/${parent}/dev`, 'utf8').catch(() => '')).trim().split(':');
    if (p.length === 2) return { name: parent, major: Number(p[0]), minor: Number(p[1]) };
  }
  return { name, major, minor };
}

export interface DiskCounters {
  readBytes: number;
  writeBytes: number;
  /** Milliseconds the device had I/O in flight (`io_ticks`). */
  busyMs: number;
  atMs: number;
}

export async function diskCounters(device: string): Promise<DiskCounters | undefined> {
  const text = await readFile('/proc/diskstats', 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[2] !== device) continue;
    return { readBytes: Number(f[5]) * 512, writeBytes: Number(f[9]) * 512, busyMs: Number(f[12]), atMs: performance.now() };
  }
  return undefined;
}

export interface DiskDelta {
  readBytes: number;
  writeBytes: number;
  busyMs: number;
  /** busyMs / wall: 1.0 means the device always had I/O in flight (it says nothing about its queue depth). */
  util: number;
}

export function diskDelta(a: DiskCounters | undefined, b: DiskCounters | undefined): DiskDelta | undefined {
  if (!a || !b) return undefined;
  const wall = b.atMs - a.atMs;
  return {
    readBytes: b.readBytes - a.readBytes,
    writeBytes: b.writeBytes - a.writeBytes,
    busyMs: b.busyMs - a.busyMs,
    util: wall > 0 ? (b.busyMs - a.busyMs) / wall : 0,
  };
}

const CLK_TCK = Number(sh('getconf', ['CLK_TCK'])) || 100;

/** utime + stime of a /proc stat line, in seconds, and the comm. */
function parseStat(text: string): { comm: string; cpuS: number } | undefined {
  const close = text.lastIndexOf(')');
  if (close < 0) return undefined;
  const comm = text.slice(text.indexOf('(') + 1, close);
  const f = text.slice(close + 2).split(' ');
  // After "pid (comm) ": state is field 3 → index 0; utime is field 14 → index 11, stime 12.
  return { comm, cpuS: (Number(f[11]) + Number(f[12])) / CLK_TCK };
}

/** Process-wide CPU seconds (includes threads that already exited). */
export async function processCpu(pid: number): Promise<number | undefined> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return text ? parseStat(text)?.cpuS : undefined;
}

/** The pid of the process whose command line contains `needle` (e.g. a QMP socket path). */
export async function findPid(needle: string): Promise<number | undefined> {
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    const cmd = await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(needle) && cmd.includes('qemu-system')) return Number(p);
  }
  return undefined;
}

export interface CpuReport {
  /** CPU seconds of the whole QEMU process over the measured interval. */
  processS: number | undefined;
  /** CPU seconds per thread name over the interval (threads of one name summed), busiest first. */
  threads: Array<{ name: string; cpuS: number }>;
  /** The busiest single thread's CPU seconds divided by the wall time (≈ 1 means that thread was saturated). */
  busiestThreadShare: number | undefined;
  busiestThread: string | undefined;
}

/**
 * Samples a QEMU's threads every `everyMs` until stopped. The pid is looked up by `needle`
 * each tick until found (a restore's QEMU appears only after the request is published). A
 * thread that exits between two samples loses at most one interval of its CPU time in the
 * per-thread view; the process total includes it exactly when the process is still alive at stop.
 */
export class CpuSampler {
  private pid: number | undefined;
  private firstProcess: number | undefined;
  private lastProcess: number | undefined;
  private readonly first = new Map<string, { name: string; cpuS: number }>();
  private readonly last = new Map<string, { name: string; cpuS: number }>();
  private timer: NodeJS.Timeout | undefined;
  private busy: Promise<void> = Promise.resolve();
  private readonly t0 = performance.now();
  /** When the QEMU appeared after sampling started, its CPU is counted from zero. */
  private fromZero = false;
  private seenProcess = false;

  constructor(
    private readonly needle: string,
    private readonly everyMs = 100,
  ) {}

  async start(): Promise<this> {
    await this.sample();
    this.fromZero = this.pid === undefined;
    this.timer = setInterval(() => {
      this.busy = this.busy.then(() => this.sample());
    }, this.everyMs);
    return this;
  }

  private async sample(): Promise<void> {
    this.pid ??= await findPid(this.needle);
    if (this.pid === undefined) return;
    const total = await processCpu(this.pid);
    if (total === undefined) return;
    this.firstProcess ??= this.fromZero ? 0 : total;
    this.lastProcess = total;
    const tids = await readdir(`/proc/${this.pid}/task`).catch(() => [] as string[]);
    // Threads present at the first sample count from their value then; threads born later from zero.
    const baseline = !this.seenProcess && !this.fromZero;
    for (const tid of tids) {
      const s = parseStat(await readFile(`/proc/${this.pid}/task/${tid}/stat`, 'utf8').catch(() => ''));
      if (!s) continue;
      if (!this.first.has(tid)) this.first.set(tid, { name: s.comm, cpuS: baseline ? s.cpuS : 0 });
      this.last.set(tid, { name: s.comm, cpuS: s.cpuS });
    }
    this.seenProcess = true;
  }

  async stop(): Promise<CpuReport> {
    clearInterval(this.timer);
    await this.busy;
    await this.sample();
    const wallS = (performance.now() - this.t0) / 1000;
    const byName = new Map<string, number>();
    let busiest: { name: string; cpuS: number } | undefined;
    for (const [tid, end] of this.last) {
      const cpuS = end.cpuS - (this.first.get(tid)?.cpuS ?? 0);
      // Multifd threads are numbered (multifdsend_0, mig/src/send_1, …): group them by kind.
      const kind = /send|recv|multifd/.test(end.name) ? end.name.replace(/\d+$/, 'N') : end.name;
      byName.set(kind, (byName.get(kind) ?? 0) + cpuS);
      if (!busiest || cpuS > busiest.cpuS) busiest = { name: end.name, cpuS };
    }
    const threads = [...byName]
      .map(([name, cpuS]) => ({ name, cpuS }))
      .filter((t) => t.cpuS > 0)
      .sort((a, b) => b.cpuS - a.cpuS);
    return {
      processS: this.firstProcess !== undefined && this.lastProcess !== undefined ? this.lastProcess - this.firstProcess : undefined,
      threads,
      busiestThreadShare: busiest && wallS > 0 ? busiest.cpuS / wallS : undefined,
      busiestThread: busiest?.name,
    };
  }
}

/** `sync` then `echo 3 > /proc/sys/vm/drop_caches`; false when not permitted (not root, container). */
export async function dropCaches(): Promise<boolean> {
  await run('sync').catch(() => undefined);
  try {
    await writeFile('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

export interface DiskBandwidth {
  /** Sequential O_DIRECT write, bytes/s (dd oflag=direct conv=fdatasync). */
  directWrite: number;
  /** Sequential O_DIRECT read, bytes/s (dd iflag=direct). */
  directRead: number;
  /** Buffered read right after dropping the page cache, bytes/s (readahead may beat O_DIRECT). */
  coldBufferedRead: number | undefined;
  bytes: number;
  blockSize: string;
}

async function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  await run(cmd, args, { maxBuffer: 1 << 20 });
  return (performance.now() - t0) / 1000;
}

/**
 * dd on the image directory: write `bytes` of random data (from `source`, a file already in the
 * page cache, so the source costs no disk I/O) with O_DIRECT, then read it back with O_DIRECT,
 * then read it buffered after dropping the cache. The test file is removed.
 */
export async function measureDisk(dir: string, source: string, bytes: number, canDrop: boolean): Promise<DiskBandwidth> {
  const bs = 4 * 1024 * 1024;
  const count = Math.max(1, Math.floor(bytes / bs));
  const file = `${dir}/dd-test.bin`;
  const total = count * bs;
  try {
    // Warm the source so that the write measures only the target.
    await run('dd', [`if=${source}`, 'of=/dev/null', `bs=${bs}`, `count=${count}`]);
    const w = await timed('dd', [`if=${source}`, `of=${file}`, `bs=${bs}`, `count=${count}`, 'oflag=direct', 'conv=fdatasync', 'iflag=fullblock']);
    if (canDrop) await dropCaches();
    const r = await timed('dd', [`if=${file}`, 'of=/dev/null', `bs=${bs}`, 'iflag=direct']);
    let cold: number | undefined;
    if (canDrop) {
      await dropCaches();
      cold = total / (await timed('dd', [`if=${file}`, 'of=/dev/null', `bs=${bs}`]));
    }
    return { directWrite: total / w, directRead: total / r, coldBufferedRead: cold, bytes: total, blockSize: '4 MiB' };
  } finally {
    await run('rm', ['-f', file]).catch(() => undefined);
  }
}

/** A file of `bytes` random bytes (incompressible RAM content for the dirty VM, dd's source). */
export async function writeRandom(file: string, bytes: number): Promise<void> {
  const fh = await open(file, 'w');
  try {
    const chunk = Buffer.allocUnsafe(Math.min(bytes, 64 * 1024 * 1024));
    for (let at = 0; at < bytes; at += chunk.length) {
      const n = Math.min(chunk.length, bytes - at);
      randomFillSync(chunk, 0, n);
      await fh.write(chunk, 0, n, at);
    }
  } finally {
    await fh.close();
  }
}
