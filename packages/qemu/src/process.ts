import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, statSync } from 'node:fs';
import { lstat, mkdir, rename, unlink } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { QmpClient, type ConnectOptions, type QmpClientOptions } from '@vmsave/qmp';
import { QemuInvalidArgumentError, QemuLaunchError } from './errors.ts';

export const DEFAULT_QEMU_BINARY = 'qemu-system-x86_64';

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A QEMU process started by vmsave. Dispose it to stop QEMU (SIGTERM, then SIGKILL). */
export interface VmProcess extends AsyncDisposable {
  readonly pid: number;
  readonly qmpSocketPath: string;
  /** The full command line QEMU was started with (binary first). */
  readonly argv: readonly string[];
  /** QEMU's stderr so far (the last `stderrLimitBytes`). */
  stderr(): string;
  /** Settles when QEMU exits; never rejects. */
  readonly exited: Promise<VmExit>;
  /** Set once QEMU has exited. */
  readonly exitStatus: VmExit | undefined;
  /** Sends `signal` (default SIGKILL) and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<VmExit>;
  /** Opens a QMP session on this VM's socket. */
  connectQmp(options?: ConnectOptions & QmpClientOptions): Promise<QmpClient>;
  /**
   * Renames the QMP socket (a warm QEMU taken from a pool becomes the VM's own): the listening
   * socket stays the same, only its path changes. Refuses a path that exists.
   */
  moveQmpSocket(newPath: string): Promise<void>;
  /**
   * With `keepQmp`: the QMP session the readiness check opened (it answered `query-status`), once;
   * undefined afterwards or without `keepQmp`. Saves a second connect (and its greeting) to a
   * caller that talks to QEMU at once (a restore).
   */
  takeQmp?(): QmpClient | undefined;
}

export interface SpawnQemuOptions {
  qmpSocketPath: string;
  binary?: string;
  /** Working directory of QEMU. */
  cwd?: string;
  /** How long to wait for QEMU to answer on its QMP socket. Default 15 000 ms (60 000 ms detached). */
  readyTimeoutMs?: number;
  /** How much of QEMU's stderr to keep. Default 64 KiB. */
  stderrLimitBytes?: number;
  signal?: AbortSignal;
  /**
   * Have the kernel SIGKILL QEMU when the process that started it dies
   * (PR_SET_PDEATHSIG through util-linux `setpriv`), so a crashed caller
   * leaves no QEMU behind. For probes and tests; VMs that must outlive the
   * executor leave it off (default). Excludes `detached`.
   */
  killWithParent?: boolean;
  /**
   * Start a QEMU that outlives the caller (`vmsave vm start`, `vmsave restore --local`, the
   * executor's autostart): its own session (a terminal's Ctrl-C does not reach it), no pipes
   * (stderr is appended to `logFile`, and `stderr()` reads back what this run wrote there), and
   * no reference keeping the caller's event loop alive. Everything else is the same launcher.
   */
  detached?: { logFile: string };
  /**
   * Keep the session the readiness check opened instead of closing it: `takeQmp()` hands it over
   * (QMP serves one client at a time, so it is closed if not taken by the first `connectQmp`).
   */
  keepQmp?: boolean;
  /**
   * With `keepQmp`: called with the readiness session as soon as it is open, before its
   * `query-status` is sent, so the caller's first commands (a restore's migration queries) share
   * that round trip. A launch that then fails closes the session (those commands reject).
   */
  onSession?(qmp: QmpClient): void;
}

/** Keeps the last `limit` bytes written to it. */
class TailBuffer {
  readonly #limit: number;
  #chunks: Buffer[] = [];
  #size = 0;
  #truncated = false;

  constructor(limit: number) {
    this.#limit = limit;
  }

  push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#size += chunk.length;
    while (this.#size > this.#limit && this.#chunks.length > 0) {
      const first = this.#chunks[0] as Buffer;
      const excess = this.#size - this.#limit;
      if (first.length <= excess) {
        this.#chunks.shift();
        this.#size -= first.length;
      } else {
        this.#chunks[0] = first.subarray(excess);
        this.#size -= excess;
      }
      this.#truncated = true;
    }
  }

  toString(): string {
    const text = Buffer.concat(this.#chunks).toString('utf8');
    return this.#truncated ? `[…]${text}` : text;
  }
}

/** Escapes a value for QEMU's `key=value,...` option syntax (a comma is doubled). */
export function qemuOptValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/**
 * A command line that runs `argv` with only stdin, stdout and stderr inherited.
 *
 * HAZARD: Node marks its own fds close-on-exec, but the QMP client's native socket module does
 * not, and a QEMU spawned while such a connection is open (a restore while another VM is being
 * saved, a VM started while the executor checks others) inherits it. That QEMU then keeps the
 * other VM's QMP connection open after we close ours, and since QMP serves one client at a time,
 * that VM never greets anyone again until the inheriting QEMU exits. bash closes every fd above 2,
 * then execs in place (the pid stays QEMU's).
 */
export function execWithoutInheritedFds(argv: readonly string[]): [string, string[]] {
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a bash script; ${f##*/} is bash's, not a template.
  const script = 'for f in /proc/$$/fd/*; do n=${f##*/}; if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi; done; exec "$@"';
  return ['bash', ['-c', script, 'vmsave-exec', ...argv]];
}

/** Used when the parent has no PATH (QEMU, bash and setpriv are looked up on it). */
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Variables QEMU may need from the parent: where to find programs, home, locale, time zone, temp and runtime dirs, a display. */
const QEMU_ENV_KEEP = new Set(['PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LANGUAGE', 'TZ', 'TMPDIR', 'XDG_RUNTIME_DIR', 'DISPLAY', 'WAYLAND_DISPLAY', 'XAUTHORITY']);

/**
 * The environment QEMU runs with: only the variables of `parent` it may need (`PATH`, `HOME`,
 * `USER`, `LOGNAME`, `LANG`, `LANGUAGE`, `LC_*`, `TZ`, `TMPDIR`, `XDG_RUNTIME_DIR`, `DISPLAY`,
 * `WAYLAND_DISPLAY`, `XAUTHORITY`), never the caller's secrets or settings (`NATS_*`, `REDIS_*`,
 * `VMSAVE_*`, anything else), which anyone who can read `/proc/<qemu>/environ` would see.
 */
export function qemuEnvironment(parent: Record<string, string | undefined> = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(parent)) {
    if (value !== undefined && (QEMU_ENV_KEEP.has(key) || key.startsWith('LC_'))) env[key] = value;
  }
  env['PATH'] ||= DEFAULT_PATH;
  return env;
}

/**
 * Starts QEMU with `args` plus a QMP socket of our own, and resolves once QEMU
 * answers on it (machine built, main loop running). QEMU gets a clean environment
 * ({@link qemuEnvironment}). The caller owns the
 * returned process; with `detached` it outlives the caller (see
 * {@link SpawnQemuOptions.detached}), otherwise it is a child whose stderr is piped.
 */
export async function spawnQemu(args: readonly string[], options: SpawnQemuOptions): Promise<VmProcess> {
  const binary = options.binary ?? DEFAULT_QEMU_BINARY;
  let socketPath = options.qmpSocketPath;
  if (options.detached && options.killWithParent) throw new QemuInvalidArgumentError('a detached QEMU outlives its caller: killWithParent and detached exclude each other');
  await removeStaleSocket(socketPath);
  const argv = [binary, ...args, '-qmp', `unix:${qemuOptValue(socketPath)},server=on,wait=off`];

  // setpriv and bash exec QEMU in place: the pid stays QEMU's.
  const [shell, script] = execWithoutInheritedFds(argv);
  const [command, commandArgs] = options.killWithParent ? ['setpriv', ['--pdeathsig', 'KILL', '--', shell, ...script]] : [shell, script];
  // Detached: its own session, stderr appended to the log file, unreferenced, so nothing of ours
  // keeps it or is kept by it. Otherwise a child whose stderr we read from a pipe.
  const log = options.detached ? await openLog(options.detached.logFile) : undefined;
  let child: ChildProcess;
  try {
    child = spawn(command, commandArgs, { cwd: options.cwd, env: qemuEnvironment(), detached: log !== undefined, stdio: ['ignore', 'ignore', log?.fd ?? 'pipe'] });
  } finally {
    if (log) closeSync(log.fd);
  }
  let stderr: () => string;
  if (log) {
    child.unref();
    stderr = () => readLogTail(log.file, log.start);
  } else {
    const tail = new TailBuffer(options.stderrLimitBytes ?? 64 * 1024);
    child.stderr!.on('data', (chunk: Buffer) => tail.push(chunk));
    stderr = () => tail.toString();
  }

  let exitStatus: VmExit | undefined;
  let spawnError: Error | undefined;
  const exited = new Promise<VmExit>((resolve) => {
    child.once('error', (error) => {
      spawnError = error;
      exitStatus ??= { code: null, signal: null };
      resolve(exitStatus);
    });
    // 'close' (not 'exit') so that a piped stderr has been read to the end.
    child.once('close', (code, signal) => {
      exitStatus = { code, signal };
      resolve(exitStatus);
    });
  });

  // The readiness check's session, kept for `takeQmp` (keepQmp).
  let ready: QmpClient | undefined;
  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<VmExit> => {
    void ready?.close().catch(() => undefined);
    ready = undefined;
    if (exitStatus === undefined) child.kill(signal);
    return exited;
  };

  const vm: VmProcess = {
    get pid() {
      return child.pid ?? -1;
    },
    get qmpSocketPath() {
      return socketPath;
    },
    argv,
    stderr,
    exited,
    get exitStatus() {
      return exitStatus;
    },
    kill,
    async connectQmp(connectOptions) {
      // A session kept by the readiness check but not taken would make this connect wait: close it.
      const kept = ready;
      ready = undefined;
      await kept?.close().catch(() => undefined);
      return QmpClient.connect(socketPath, connectOptions);
    },
    takeQmp() {
      const kept = ready;
      ready = undefined;
      return kept;
    },
    async moveQmpSocket(newPath) {
      if (newPath === socketPath) return;
      if (await lstat(newPath).catch(() => undefined)) {
        await removeStaleSocket(newPath);
      }
      await mkdir(path.dirname(newPath), { recursive: true });
      await rename(socketPath, newPath);
      socketPath = newPath;
    },
    async [Symbol.asyncDispose]() {
      await ready?.close().catch(() => undefined);
      ready = undefined;
      if (exitStatus === undefined) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
        await exited;
        clearTimeout(timer);
      }
      await unlink(socketPath).catch(() => undefined);
    },
  };

  try {
    const session = await waitForQmp(
      socketPath,
      exited,
      options.readyTimeoutMs ?? (options.detached ? 60_000 : 15_000),
      options.signal,
      options.keepQmp ? options.onSession : undefined,
    );
    if (options.keepQmp) ready = session;
    else await session.close().catch(() => undefined);
  } catch (error) {
    await kill('SIGKILL');
    await unlink(socketPath).catch(() => undefined);
    if (spawnError) throw new QemuLaunchError(`cannot start ${binary}: ${spawnError.message}`, { cause: spawnError });
    const message = error instanceof Error ? error.message : String(error);
    throw new QemuLaunchError(message, { cause: error, stderr: stderr() });
  }
  return vm;
}

/** Opens (creating its directory) the log a detached QEMU appends its stderr to; `start` is where this run's output begins. */
async function openLog(file: string): Promise<{ file: string; fd: number; start: number }> {
  await mkdir(path.dirname(file), { recursive: true });
  const fd = openSync(file, 'a');
  return { file, fd, start: statSync(file).size };
}

/** What a detached QEMU wrote to its log since `start` (the last 64 KiB). */
function readLogTail(file: string, start: number): string {
  try {
    const text = readFileSync(file).subarray(start).toString('utf8');
    return text.length > 64 * 1024 ? `[…]${text.slice(-64 * 1024)}` : text;
  } catch {
    return '';
  }
}

/**
 * Waits until QEMU answers on its QMP socket and resolves with that session. The socket file is
 * looked for every 2 ms (a stat); once it exists ONE session is opened, which waits for QEMU's
 * greeting and then for the answer to `query-status`: QEMU creates the socket, and its monitor
 * even greets, before the machine is built, but commands are dispatched only from the main loop,
 * so that answer means the command line was accepted and QEMU is up. (Reconnecting on a timer
 * instead cost up to one period per launch, and a second session for the caller.)
 */
async function waitForQmp(
  socketPath: string,
  exited: Promise<VmExit>,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  onSession: ((qmp: QmpClient) => void) | undefined,
): Promise<QmpClient> {
  let exit: VmExit | undefined;
  void exited.then((e) => {
    exit = e;
  });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exit) throw new Error(`QEMU exited (code ${exit.code}, signal ${exit.signal}) before its QMP socket was ready`);
    signal?.throwIfAborted();
    if (await isSocket(socketPath)) {
      const left = Math.max(1, deadline - Date.now());
      let qmp: QmpClient | undefined;
      try {
        // The client's default command deadline stays (the session may be handed over); only this query is bounded here.
        qmp = await QmpClient.connect(socketPath, { timeoutMs: left, signal });
        onSession?.(qmp);
        await qmp.execute('query-status', undefined, { timeoutMs: Math.max(1, deadline - Date.now()), signal });
        return qmp;
      } catch {
        await qmp?.close().catch(() => undefined);
      }
    }
    if (Date.now() > deadline) throw new Error(`QMP socket ${socketPath} was not ready within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

async function isSocket(socketPath: string): Promise<boolean> {
  return (await lstat(socketPath).catch(() => undefined))?.isSocket() ?? false;
}

function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.createConnection(socketPath);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

async function removeStaleSocket(socketPath: string): Promise<void> {
  const stat = await lstat(socketPath).catch(() => undefined);
  if (!stat) return;
  if (!stat.isSocket()) throw new QemuLaunchError(`${socketPath} exists and is not a socket`);
  // A live listener means another QEMU still serves that path: never steal it.
  if (await canConnect(socketPath)) throw new QemuLaunchError(`QMP socket ${socketPath} is in use by another process`);
  await unlink(socketPath);
}
