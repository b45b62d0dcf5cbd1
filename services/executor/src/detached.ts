import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, statSync } from 'node:fs';
import { lstat, mkdir, unlink } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { QmpClient } from '@vmsave/qmp';
import { DEFAULT_QEMU_BINARY, QemuLaunchError, buildVmArgs, execWithoutInheritedFds, qemuOptValue, type Accel, type LaunchOptions, type VmDefinition, type VmExit, type VmProcess } from '@vmsave/qemu';

export interface DetachedLaunchOptions extends Pick<LaunchOptions, 'qmpSocketPath' | 'incoming' | 'startPaused' | 'binary' | 'readyTimeoutMs' | 'signal'> {
  accel: Accel;
  /** QEMU's stderr goes here (appended), since no process of ours stays to read a pipe. */
  logFile: string;
}

/**
 * Start a VM that outlives the process starting it (`vmsave vm start`, `vmsave restore FILE`,
 * the executor's autostart): its own session (a terminal's Ctrl-C does not reach it), no pipes
 * (stderr goes to `logFile`), and no reference keeping the caller's event loop alive.
 * Resolves once QEMU answers `query-status` on its QMP socket.
 */
export async function launchDetached(def: VmDefinition, o: DetachedLaunchOptions): Promise<VmProcess> {
  const binary = o.binary ?? DEFAULT_QEMU_BINARY;
  const socketPath = o.qmpSocketPath;
  await removeStaleSocket(socketPath);
  await mkdir(path.dirname(o.logFile), { recursive: true });
  const args = buildVmArgs(def, { accel: o.accel, incoming: o.incoming, startPaused: o.startPaused });
  const argv = [binary, ...args, '-qmp', `unix:${qemuOptValue(socketPath)},server=on,wait=off`];
  const logFd = openSync(o.logFile, 'a');
  const logStart = statSync(o.logFile).size;
  const child = spawn(...execWithoutInheritedFds(argv), { detached: true, stdio: ['ignore', 'ignore', logFd] });
  closeSync(logFd);
  child.unref();

  let exitStatus: VmExit | undefined;
  let spawnError: Error | undefined;
  const exited = new Promise<VmExit>((resolve) => {
    child.once('error', (err) => { spawnError = err; exitStatus ??= { code: null, signal: null }; resolve(exitStatus); });
    child.once('exit', (code, signal) => { exitStatus = { code, signal }; resolve(exitStatus); });
  });
  const stderr = (): string => {
    try {
      const text = readFileSync(o.logFile).subarray(logStart).toString('utf8');
      return text.length > 64 * 1024 ? `[…]${text.slice(-64 * 1024)}` : text;
    } catch {
      return '';
    }
  };
  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<VmExit> => {
    if (exitStatus === undefined) child.kill(signal);
    return exited;
  };
  const vm: VmProcess = {
    get pid() { return child.pid ?? -1; },
    qmpSocketPath: socketPath,
    argv,
    stderr,
    exited,
    get exitStatus() { return exitStatus; },
    kill,
    connectQmp: (opts) => QmpClient.connect(socketPath, opts),
    async [Symbol.asyncDispose]() {
      if (exitStatus === undefined) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(timer);
      }
      await unlink(socketPath).catch(() => undefined);
    },
  };

  const deadline = Date.now() + (o.readyTimeoutMs ?? 60_000);
  for (;;) {
    if (exitStatus) {
      if (spawnError) throw new QemuLaunchError(`cannot start ${binary}: ${spawnError.message}`, { cause: spawnError });
      throw new QemuLaunchError(`QEMU exited (code ${exitStatus.code}, signal ${exitStatus.signal}) before its QMP socket was ready`, { stderr: stderr() });
    }
    if (o.signal?.aborted || Date.now() > deadline) {
      await kill('SIGKILL');
      await unlink(socketPath).catch(() => undefined);
      throw new QemuLaunchError(o.signal?.aborted ? 'start aborted' : `QMP socket ${socketPath} was not ready in time`, { stderr: stderr() });
    }
    if (await answers(socketPath)) return vm;
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function answers(socketPath: string): Promise<boolean> {
  try {
    await using qmp = await QmpClient.connect(socketPath, { timeoutMs: 1000, commandTimeoutMs: 1000 });
    await qmp.execute('query-status');
    return true;
  } catch {
    return false;
  }
}

async function removeStaleSocket(socketPath: string): Promise<void> {
  const st = await lstat(socketPath).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket()) throw new QemuLaunchError(`${socketPath} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const s = net.createConnection(socketPath);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => { s.destroy(); resolve(false); });
  });
  // A live listener means another QEMU still serves that path: never steal it.
  if (live) throw new QemuLaunchError(`QMP socket ${socketPath} is in use by another process`);
  await unlink(socketPath);
}
