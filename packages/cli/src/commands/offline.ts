/**
 * Local save and restore without the bus (like `virsh save` / `virsh restore`): the executor's
 * own procedures run in this process. Loaded only when `save --qmp` or `restore --local` runs
 * (their options are declared in `./bus.ts`; `inspect` and `verify` are `./image.ts`).
 */
import { randomUUID } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { VmDefinition, type SaveFormat } from '@vmsave/contracts';
import { OpError, restoreImage, saveVm, type RestoreImageResult, type SaveVmResult } from '@vmsave/ops';
import { findQmpServerProcess, QmpClient } from '@vmsave/qmp';
import type { MigrationProgress } from '@vmsave/qemu';
import { bool, int, oneOf, str, type Values } from '../options.ts';
import type { Ctx } from '../context.ts';
import { definitionFromCmdline } from '../cmdline.ts';
import { CliError, EXIT, JobFailedError, RejectedError, UsageError } from '../errors.ts';
import { fmtBytes, fmtRate, fmtSeconds, WriteProgressEstimator } from '@vmsave/jobs';
import { localHost } from '../local.ts';

function progressHandler(ctx: Ctx, label: string) {
  if (!ctx.tty) return undefined;
  const bar = ctx.bar();
  // Bytes written, not logical RAM or QEMU's mbps (both count zero pages a sparse image never writes).
  const estimator = new WriteProgressEstimator();
  return (p: MigrationProgress) => {
    const w = estimator.sample(p, Date.now());
    bar.update({ label, totalBytes: w.totalBytes, doneBytes: w.doneBytes, bytesPerSec: w.bytesPerSec, etaMs: w.etaMs }, p.status === 'completed');
  };
}

async function readDefinitionFile(file: string): Promise<VmDefinition> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`--vm-def ${file}: ${(err as Error).message}`);
  }
  const r = VmDefinition.safeParse(json);
  if (!r.success) throw new UsageError(`--vm-def ${file}: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return r.data;
}

/** `save --qmp SOCKET --out FILE`: the executor's saveVm, here. */
export async function offlineSave(ctx: Ctx, v: Values): Promise<number> {
  const socket = str(v, 'qmp');
  const out = str(v, 'out');
  if (!socket || !out) throw new UsageError('save: a local save needs both --qmp SOCKET and --out FILE');
  if (str(v, 'vm') !== undefined || bool(v, 'wait') || str(v, 'priority') !== undefined)
    throw new UsageError('save: --vm, --wait and --priority are for bus saves; a local save takes --qmp and --out');
  const formatOpt = oneOf(v, 'format', ['legacy', 'sparse', 'auto'] as const);
  const channels = int(v, 'channels', { min: 1, max: 64 }) ?? 1;
  const after = oneOf(v, 'after', ['quit', 'paused', 'running'] as const) ?? 'running';
  const directIo = bool(v, 'direct-io');
  const host = await localHost(ctx.env);
  const format: SaveFormat = formatOpt === 'legacy' || formatOpt === 'sparse' ? formatOpt : host.caps.mappedRam ? 'sparse' : 'legacy';
  if (format === 'sparse' && !host.caps.mappedRam) throw new UsageError(`--format sparse: this QEMU (${host.caps.version}) has no mapped-ram`);
  if (format === 'legacy' && (channels > 1 || directIo)) throw new UsageError('--channels > 1 and --direct-io need --format sparse');

  let definition: VmDefinition;
  let recorded: { dropped: string[]; warnings: string[]; pid?: number } = { dropped: [], warnings: [] };
  const vmDef = str(v, 'vm-def');
  if (vmDef) {
    definition = await readDefinitionFile(vmDef);
  } else {
    const proc = await findQmpServerProcess(socket);
    if (!proc) throw new CliError(`cannot find the QEMU process listening on ${socket} (not running, or not readable by this user): give --vm-def FILE`);
    const d = definitionFromCmdline(proc.cmdline, path.basename(socket).replace(/\.[^.]*$/, ''));
    // Record the concrete machine type (q35 → pc-q35-10.0) so a newer QEMU restores the same machine.
    definition = { ...d.definition, machine: host.machineAliases[d.definition.machine] ?? d.definition.machine };
    recorded = { dropped: d.dropped, warnings: d.warnings, pid: proc.pid };
    for (const w of d.warnings) ctx.note(`vmsave: warning: ${w}`);
  }

  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(socket, { timeoutMs: 5000 });
  } catch (err) {
    throw new CliError(`cannot connect to QMP socket ${socket}: ${(err as Error).message}`, EXIT.error, { cause: err });
  }
  ctx.cleanups.push(() => qmp.close());
  const imagePath = path.resolve(out);
  const stop = () => ctx.ac.abort('cancelled');
  process.once('SIGINT', stop);
  ctx.cleanups.push(() => {
    process.off('SIGINT', stop);
  });
  let result: SaveVmResult;
  try {
    result = await saveVm({
      qmp,
      imagePath,
      format,
      channels,
      directIo,
      after,
      vm: definition,
      host: host.cfg.host,
      jobId: `local-${randomUUID()}`,
      hostCaps: host.caps,
      signal: ctx.signal,
      onProgress: progressHandler(ctx, `save ${format}`),
    });
  } catch (err) {
    ctx.progress?.clear();
    if (err instanceof OpError) throw new JobFailedError(`save failed at ${err.stage} (${err.code}): ${err.message}${err.vmResumed ? '; the VM runs again' : ''}`, { cause: err });
    throw err;
  }
  ctx.progress?.clear();
  ctx.emit({
    imagePath,
    format,
    bytes: result.bytes,
    blocks: result.blocks,
    durationMs: Math.round(result.durationMs),
    ramBytes: result.ramBytes,
    wasRunning: result.wasRunning,
    vmState: result.vmState,
    definition,
    dropped: recorded.dropped,
    warnings: recorded.warnings,
  });
  ctx.say(
    `saved ${definition.name} to ${imagePath}: ${format}, ${fmtBytes(result.bytes)} (${fmtBytes(result.blocks * 512)} allocated) in ${fmtSeconds(result.durationMs)} s, ${fmtRate(result.ramBytes / Math.max(0.001, result.durationMs / 1000))}; VM ${result.vmState}`,
  );
  return EXIT.ok;
}

/** `restore FILE --local`: the executor's restoreImage, here; the QEMU outlives this command. */
export async function offlineRestore(ctx: Ctx, v: Values, file: string): Promise<number> {
  if (str(v, 'host') !== undefined || bool(v, 'wait')) throw new UsageError('restore: --host and --wait are for bus restores, not local ones');
  const after = oneOf(v, 'after', ['running', 'paused', 'as-saved'] as const) ?? 'as-saved';
  const content = oneOf(v, 'verify', ['state', 'full'] as const) ?? 'state';
  const qmpDirOpt = str(v, 'qmp-dir');
  const host = await localHost(ctx.env, { qmpDir: qmpDirOpt === undefined ? undefined : path.resolve(qmpDirOpt) });
  const registry = host.vms;
  const qmpDir = registry.qmpDir;
  const imagePath = path.resolve(file);
  await stat(imagePath).catch(() => {
    throw new CliError(`no such image: ${file}`);
  });
  const definition = str(v, 'vm-def') ? await readDefinitionFile(str(v, 'vm-def')!) : undefined;
  let result: RestoreImageResult;
  try {
    result = await restoreImage({
      imagePath,
      hostCaps: host.caps,
      after,
      content,
      accel: host.accel,
      definition,
      signal: ctx.signal,
      onProgress: progressHandler(ctx, 'restore'),
      prepare: async (d) => {
        const status = await registry.status(d.name);
        if (status !== 'stopped')
          throw new OpError(`VM ${d.name} already runs here (${status}, socket ${registry.socketOf(d.name)}); stop it first`, 'prepare', 'vm-running', false);
        return registry.socketOf(d.name);
      },
      // The restored QEMU outlives this command.
      detached: { logFileOf: (d) => registry.logOf(d.name) },
    });
  } catch (err) {
    ctx.progress?.clear();
    if (err instanceof OpError) {
      const msg = `restore failed at ${err.stage} (${err.code}): ${err.message}`;
      if (err.stage === 'prepare' && err.code.startsWith('image-')) throw new RejectedError(msg, err.code);
      throw new JobFailedError(msg, { cause: err });
    }
    throw err;
  }
  await result.qmp.close();
  if (!result.content.sealed) ctx.note(`vmsave: warning: ${imagePath} has no seal; its content was not checked before the restore`);
  // Known to the executor on this host (same definition and socket) when the socket is in its qmp directory.
  if (qmpDir === host.cfg.qmpDir) await registry.define(result.definition);
  ctx.progress?.clear();
  const socket = registry.socketOf(result.definition.name);
  ctx.emit({
    imagePath,
    vm: result.definition.name,
    pid: result.vm.pid,
    qmpSocket: socket,
    vmState: result.vmState,
    durationMs: Math.round(result.durationMs),
    definition: result.definition,
  });
  ctx.say(`restored ${result.definition.name} from ${imagePath} in ${fmtSeconds(result.durationMs)} s: ${result.vmState}, pid ${result.vm.pid}, QMP ${socket}`);
  return EXIT.ok;
}
