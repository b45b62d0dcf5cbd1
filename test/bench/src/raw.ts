/**
 * The "raw QEMU" anchor: the same save and restore driven directly over QMP with the migration
 * driver (`saveToFds` / `restoreFromFds`) and fds the benchmark opens itself. No bus, no
 * scheduler, no verifier, no vmsave header (the stream starts at offset 0).
 *
 * Plus one variant vmsave does not offer: a legacy stream written through a pipe into an
 * O_DIRECT file by dd with aligned 4 MiB blocks (what libvirt does with its iohelper for
 * `--bypass-cache`), and read back the same way.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants as C, open as openCb, openSync, fdatasyncSync } from 'node:fs';
import { promisify } from 'node:util';
import { stat, unlink } from 'node:fs/promises';
import { launchVm, restoreFromFds, saveToFds, type VmDefinition, type VmProcess } from '@vmsave/qemu';
import { QmpClient } from '@vmsave/qmp';

export interface RawMode {
  format: 'legacy' | 'sparse';
  channels: number;
  directIo: boolean;
  /** Legacy stream through a pipe into dd with O_DIRECT (benchmark-only). */
  pipeDirect?: boolean;
}

export interface RawSaveResult {
  /** From connecting to QMP (stop, capabilities, migrate, …) until QEMU reported completed. */
  saveS: number;
  /** The same plus an fdatasync of the image, as vmsave does before it marks an image complete. */
  saveSyncS: number;
  /** QEMU's own migrate → completed wall time as the driver saw it. */
  migrateS: number;
  syncS: number;
  bytes: number;
  blocks: number;
}

/** Connects to a QMP socket, retrying while another client (the executor's status poll) holds it. */
export async function connectQmp(socket: string, timeoutMs = 20_000): Promise<QmpClient> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await QmpClient.connect(socket, { timeoutMs: 2000 });
    } catch (err) {
      if (Date.now() > end) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export async function rawSave(socket: string, imagePath: string, mode: RawMode): Promise<RawSaveResult> {
  const t0 = performance.now();
  await using qmp = await connectQmp(socket);
  const st = await qmp.execute<{ status: string }>('query-status');
  if (st.status === 'running') await qmp.execute('stop');
  if (mode.pipeDirect) return await pipeDirectSave(qmp, imagePath, t0);

  const buffered = openSync(imagePath, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600);
  const direct = mode.directIo ? openSync(imagePath, C.O_WRONLY | C.O_DIRECT) : undefined;
  try {
    const stats = await saveToFds(qmp, {
      fds: direct === undefined ? { buffered } : { buffered, direct },
      offset: 0,
      format: mode.format,
      channels: mode.channels,
      directIo: mode.directIo,
      commandTimeoutMs: 180_000,
    });
    const t1 = performance.now();
    fdatasyncSync(buffered);
    const t2 = performance.now();
    const s = await stat(imagePath);
    return {
      saveS: (t1 - t0) / 1000,
      saveSyncS: (t2 - t0) / 1000,
      migrateS: stats.wallTimeMs / 1000,
      syncS: (t2 - t1) / 1000,
      bytes: s.size,
      blocks: s.blocks,
    };
  } finally {
    closeSync(buffered);
    if (direct !== undefined) closeSync(direct);
  }
}

const DD_BS = '4M';
const run = promisify(execFile);
const openAsync = promisify(openCb) as (path: string, flags: number) => Promise<number>;

/** Settles when the child exits (rejects unless with 0); marked handled so a kill after another error cannot crash the run. */
function waitExit(child: ChildProcess, what: string): Promise<void> {
  const p = new Promise<void>((resolve, reject) => {
    if (child.exitCode !== null) {
      if (child.exitCode === 0) resolve();
      else reject(new Error(`${what} exited with ${child.exitCode}`));
      return;
    }
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.once('close', (code, signal) => (code === 0 ? resolve() : reject(new Error(`${what} exited with ${code ?? signal}: ${err.trim()}`))));
  });
  p.catch(() => undefined);
  return p;
}

async function pollMigration(qmp: QmpClient, what: string): Promise<void> {
  for (;;) {
    const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`${what}: ${info.status} ${info['error-desc'] ?? ''}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function legacyCaps(qmp: QmpClient, save: boolean): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [
      { capability: 'events', state: true },
      { capability: 'mapped-ram', state: false },
      { capability: 'multifd', state: false },
    ],
  });
  await qmp.execute('migrate-set-parameters', save ? { 'max-bandwidth': 0, 'direct-io': false } : { 'direct-io': false });
}

/**
 * QEMU writes the legacy stream into a FIFO (`getfd` + `fd:` URI); dd drains it into the image
 * with O_DIRECT in full 4 MiB blocks (it clears O_DIRECT for a short last block) and
 * fdatasyncs at the end, so saveS already includes the sync.
 */
async function pipeDirectSave(qmp: QmpClient, imagePath: string, t0: number): Promise<RawSaveResult> {
  const fifo = `${imagePath}.fifo`;
  await run('mkfifo', ['-m', '600', fifo]);
  const dd = spawn('dd', [`if=${fifo}`, `of=${imagePath}`, `bs=${DD_BS}`, 'iflag=fullblock', 'oflag=direct', 'conv=fdatasync', 'status=none'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const done = waitExit(dd, 'dd (O_DIRECT writer)');
  let fd: number | undefined;
  try {
    await legacyCaps(qmp, true);
    // Opening a FIFO blocks until the other side opens it: async, so dd can start meanwhile.
    fd = await openAsync(fifo, C.O_WRONLY);
    await qmp.getfd('bench-pipe', fd);
    // QEMU has its own copy now; ours must go or dd never sees EOF.
    closeSync(fd);
    fd = undefined;
    const tm = performance.now();
    await qmp.execute('migrate', { uri: 'fd:bench-pipe' });
    await pollMigration(qmp, 'pipe save');
    const migrateS = (performance.now() - tm) / 1000;
    await done;
    const t2 = performance.now();
    const s = await stat(imagePath);
    return { saveS: (t2 - t0) / 1000, saveSyncS: (t2 - t0) / 1000, migrateS, syncS: 0, bytes: s.size, blocks: s.blocks };
  } catch (err) {
    dd.kill('SIGKILL');
    throw err;
  } finally {
    if (fd !== undefined) closeSync(fd);
    await unlink(fifo).catch(() => undefined);
  }
}

/** The read side: dd reads the image with O_DIRECT into a FIFO that QEMU reads (`fd:` URI). */
async function pipeDirectRestore(qmp: QmpClient, imagePath: string): Promise<void> {
  const fifo = `${imagePath}.fifo`;
  await run('mkfifo', ['-m', '600', fifo]);
  const dd = spawn('dd', [`if=${imagePath}`, `of=${fifo}`, `bs=${DD_BS}`, 'iflag=direct', 'status=none'], { stdio: ['ignore', 'ignore', 'pipe'] });
  const done = waitExit(dd, 'dd (O_DIRECT reader)');
  let fd: number | undefined;
  try {
    await legacyCaps(qmp, false);
    fd = await openAsync(fifo, C.O_RDONLY);
    await qmp.getfd('bench-pipe', fd);
    closeSync(fd);
    fd = undefined;
    await qmp.execute('migrate-incoming', { uri: 'fd:bench-pipe', 'exit-on-error': false });
    await pollMigration(qmp, 'pipe restore');
    await done;
  } catch (err) {
    dd.kill('SIGKILL');
    throw err;
  } finally {
    if (fd !== undefined) closeSync(fd);
    await unlink(fifo).catch(() => undefined);
  }
}

export interface RawRestoreResult {
  /** Starting QEMU with -incoming defer until it answers on QMP. */
  launchS: number;
  /** restoreFromFds (capabilities, add-fd, migrate-incoming … completed). */
  migrateS: number;
  /** launch + migrate + cont: what a minimal script restoring a VM needs. */
  totalS: number;
  vm: VmProcess;
}

export async function rawRestore(def: VmDefinition, socket: string, imagePath: string, mode: RawMode, offset = 0): Promise<RawRestoreResult> {
  const t0 = performance.now();
  const vm = await launchVm(def, { qmpSocketPath: socket, incoming: 'defer', killWithParent: true, readyTimeoutMs: 60_000 });
  try {
    const t1 = performance.now();
    const qmp = await vm.connectQmp();
    try {
      if (mode.pipeDirect) {
        await pipeDirectRestore(qmp, imagePath);
      } else {
        const buffered = openSync(imagePath, C.O_RDONLY);
        const direct = mode.directIo ? openSync(imagePath, C.O_RDONLY | C.O_DIRECT) : undefined;
        try {
          await restoreFromFds(qmp, {
            fds: direct === undefined ? { buffered } : { buffered, direct },
            offset,
            format: mode.format,
            channels: mode.channels,
            directIo: mode.directIo,
            process: vm,
            // QEMU's main loop serves QMP and also runs the RAM load: on a slow disk it can stay
            // silent for longer than the driver's 10 s default (see docs/benchmarks.md).
            commandTimeoutMs: 180_000,
            stallTimeoutMs: 180_000,
          });
        } finally {
          closeSync(buffered);
          if (direct !== undefined) closeSync(direct);
        }
      }
      const t2 = performance.now();
      await qmp.execute('cont');
      const t3 = performance.now();
      return { launchS: (t1 - t0) / 1000, migrateS: (t2 - t1) / 1000, totalS: (t3 - t0) / 1000, vm };
    } finally {
      await qmp.close();
    }
  } catch (err) {
    await vm.kill().catch(() => undefined);
    throw err;
  }
}

/** Asks a VM to quit over QMP and waits until its process is gone. */
export async function quitVm(socket: string, pid: number | undefined): Promise<void> {
  try {
    await using qmp = await connectQmp(socket, 10_000);
    await qmp.execute('quit').catch(() => undefined);
  } catch {
    /* already gone */
  }
  const end = Date.now() + 15_000;
  while (pid !== undefined && Date.now() < end) {
    try {
      process.kill(pid, 0);
    } catch {
      break;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  await unlink(socket).catch(() => undefined);
}
