/**
 * Local commands without the bus (like `virsh save` / `virsh restore`): the executor's own
 * save and restore procedures run in this process; `inspect` and `verify` read image files.
 */
import { randomUUID } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { VmDefinition, type SaveFormat } from '@vmsave/contracts';
import { launchDetached, OpError, restoreImage, saveVm, VmRegistry } from '@vmsave/executor';
import { decodeLibvirtHeader, domainSummary, LIBVIRT_HEADER_SIZE, parseLibvirtData, readImage, verifyImage, type ImageInfo } from '@vmsave/image';
import { findQmpServerProcess, QmpClient } from '@vmsave/qmp';
import type { MigrationProgress } from '@vmsave/qemu';
import { bool, int, oneOf, str, type Command, type Values } from '../cli.ts';
import type { Ctx } from '../context.ts';
import { definitionFromCmdline } from '../cmdline.ts';
import { CliError, EXIT, JobFailedError, RejectedError, UsageError } from '../errors.ts';
import { fmtBytes, fmtRate, fmtSeconds, table } from '../format.ts';
import { localHost } from '../local.ts';

export const OFFLINE_SAVE_OPTIONS = {
  qmp: { type: 'string' }, out: { type: 'string' }, 'vm-def': { type: 'string' },
} as const;
export const OFFLINE_RESTORE_OPTIONS = {
  'qmp-dir': { type: 'string' }, 'vm-def': { type: 'string' },
} as const;

function progressHandler(ctx: Ctx, label: string) {
  if (!ctx.tty) return undefined;
  const bar = ctx.bar();
  return (p: MigrationProgress) => bar.update({ label, totalBytes: p.total, doneBytes: p.transferred, bytesPerSec: (p.mbps * 1e6) / 8 }, p.status === 'completed');
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
  if (str(v, 'vm') !== undefined || bool(v, 'wait') || str(v, 'priority') !== undefined) throw new UsageError('save: --vm, --wait and --priority are for bus saves; a local save takes --qmp and --out');
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
  ctx.cleanups.push(() => { process.off('SIGINT', stop); });
  let result;
  try {
    result = await saveVm({
      qmp, imagePath, format, channels, directIo, after, vm: definition, host: os.hostname().replace(/[^A-Za-z0-9_-]/g, '-'),
      jobId: `local-${randomUUID()}`, hostCaps: host.caps, signal: ctx.signal, onProgress: progressHandler(ctx, `save ${format}`),
    });
  } catch (err) {
    ctx.progress?.clear();
    if (err instanceof OpError) throw new JobFailedError(`save failed at ${err.stage} (${err.code}): ${err.message}${err.vmResumed ? '; the VM runs again' : ''}`, { cause: err });
    throw err;
  }
  ctx.progress?.clear();
  ctx.emit({
    imagePath, format, bytes: result.bytes, blocks: result.blocks, durationMs: Math.round(result.durationMs), ramBytes: result.ramBytes,
    wasRunning: result.wasRunning, vmState: result.vmState, definition, dropped: recorded.dropped, warnings: recorded.warnings,
  });
  ctx.say(`saved ${definition.name} to ${imagePath}: ${format}, ${fmtBytes(result.bytes)} (${fmtBytes(result.blocks * 512)} allocated) in ${fmtSeconds(result.durationMs)} s, ${fmtRate(result.ramBytes / Math.max(0.001, result.durationMs / 1000))}; VM ${result.vmState}`);
  return EXIT.ok;
}

/** `restore FILE --local`: the executor's restoreImage, here; the QEMU outlives this command. */
export async function offlineRestore(ctx: Ctx, v: Values, file: string): Promise<number> {
  if (str(v, 'host') !== undefined || bool(v, 'wait')) throw new UsageError('restore: --host and --wait are for bus restores, not local ones');
  const after = oneOf(v, 'after', ['running', 'paused', 'as-saved'] as const) ?? 'as-saved';
  const host = await localHost(ctx.env);
  const qmpDir = path.resolve(str(v, 'qmp-dir') ?? host.cfg.qmpDir);
  const registry = new VmRegistry(host.cfg.vmDir, qmpDir, host.accel, path.join(path.dirname(host.cfg.qmpDir), 'logs'));
  await registry.init();
  const imagePath = path.resolve(file);
  await stat(imagePath).catch(() => { throw new CliError(`no such image: ${file}`); });
  const definition = str(v, 'vm-def') ? await readDefinitionFile(str(v, 'vm-def')!) : undefined;
  let result;
  try {
    result = await restoreImage({
      imagePath, hostCaps: host.caps, after, accel: host.accel, definition, signal: ctx.signal, onProgress: progressHandler(ctx, 'restore'),
      prepare: async (d) => {
        const status = await registry.status(d.name);
        if (status !== 'stopped') throw new OpError(`VM ${d.name} already runs here (${status}, socket ${registry.socketOf(d.name)}); stop it first`, 'prepare', 'vm-running', false);
        return registry.socketOf(d.name);
      },
      launch: (d, o) => launchDetached(d, { ...o, accel: host.accel, logFile: registry.logOf(d.name) }),
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
  // Known to the executor on this host (same definition and socket) when the socket is in its qmp directory.
  if (qmpDir === host.cfg.qmpDir) await registry.define(result.definition);
  ctx.progress?.clear();
  const socket = registry.socketOf(result.definition.name);
  ctx.emit({ imagePath, vm: result.definition.name, pid: result.vm.pid, qmpSocket: socket, vmState: result.vmState, durationMs: Math.round(result.durationMs), definition: result.definition });
  ctx.say(`restored ${result.definition.name} from ${imagePath} in ${fmtSeconds(result.durationMs)} s: ${result.vmState}, pid ${result.vm.pid}, QMP ${socket}`);
  return EXIT.ok;
}

async function inspectLibvirt(file: string) {
  const { open } = await import('node:fs/promises');
  const fh = await open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(LIBVIRT_HEADER_SIZE);
    await fh.read(head, 0, LIBVIRT_HEADER_SIZE, 0);
    const h = decodeLibvirtHeader(head, size);
    const data = Buffer.alloc(Math.min(h.dataLength, 64 * 1024 * 1024));
    await fh.read(data, 0, data.length, LIBVIRT_HEADER_SIZE);
    const { xml } = parseLibvirtData(data, h);
    return { kind: 'libvirt' as const, size, header: h, domain: domainSummary(xml), xml };
  } finally {
    await fh.close();
  }
}

const inspectCommand: Command = {
  name: 'inspect',
  summary: 'show an image\'s header and recorded VM definition (vmsave and libvirt images)',
  usage: 'inspect FILE',
  help: [],
  options: {},
  positionals: { min: 1, max: 1, names: 'FILE' },
  async run(ctx, _v, [file]) {
    await stat(file!).catch(() => { throw new CliError(`no such file: ${file}`); });
    let info: ImageInfo | undefined;
    let vmsaveErr: unknown;
    try {
      info = await readImage(file!);
    } catch (err) {
      vmsaveErr = err;
    }
    if (info) {
      const h = info.header;
      const d = info.descriptor;
      ctx.emit({ kind: 'vmsave', size: info.size, header: h, descriptor: d });
      ctx.say([
        `${file}: vmsave image, ${h.complete ? 'complete' : 'PARTIAL (never restorable)'}, version ${h.version}, ${fmtBytes(info.size)}`,
        `  format      ${h.format}${h.format === 'sparse' ? `, ${h.channels} channel(s)` : ''}${h.directIo ? ', direct IO' : ''}, VM was ${h.wasRunning ? 'running' : 'paused'}`,
        `  stream at   ${h.streamOffset}`,
        `  written by  QEMU ${d.qemu.version} on ${d.host}, job ${d.jobId}, ${d.createdAt}${d.completedAt ? ` → ${d.completedAt}` : ''}`,
        `  vm          ${d.vm.name}  uuid ${d.vm.uuid}`,
        `  machine     ${d.vm.machine}, ${d.vm.memoryMiB} MiB, ${d.vm.vcpus} vCPU(s)`,
        `  args        ${d.vm.args.length ? d.vm.args.map((a) => (/[\s'"]/.test(a) ? JSON.stringify(a) : a)).join(' ') : '(none)'}`,
      ].join('\n'));
      return EXIT.ok;
    }
    try {
      const l = await inspectLibvirt(file!);
      ctx.emit({ kind: l.kind, size: l.size, header: l.header, domain: l.domain });
      ctx.say([
        `${file}: libvirt save image, ${l.header.complete ? 'complete' : 'partial'}, version ${l.header.version}, ${fmtBytes(l.size)}`,
        `  format      ${l.header.format ?? `unknown (${l.header.formatCode})`}, VM was ${l.header.wasRunning ? 'running' : 'paused'}, stream at ${l.header.streamOffset}`,
        `  domain      ${l.domain.name ?? '?'}  uuid ${l.domain.uuid ?? '?'}`,
        `  machine     ${l.domain.machine ?? '?'}, ${l.domain.memoryKiB !== undefined ? `${Math.round(l.domain.memoryKiB / 1024)} MiB` : '?'}`,
      ].join('\n'));
      return EXIT.ok;
    } catch {
      throw new CliError(`${file} is neither a readable vmsave image nor a libvirt save image: ${(vmsaveErr as Error)?.message ?? 'unknown format'}`);
    }
  },
};

const verifyCommand: Command = {
  name: 'verify',
  summary: 'run the verifier\'s checks on an image file (vmsave or libvirt); exit 3 when a check fails',
  usage: 'verify FILE',
  help: [],
  options: {},
  positionals: { min: 1, max: 1, names: 'FILE' },
  async run(ctx, _v, [file]) {
    await stat(file!).catch(() => { throw new CliError(`no such file: ${file}`); });
    const host = await localHost(ctx.env).catch(() => undefined);
    const r = await verifyImage(file!, { hostCaps: host?.caps });
    ctx.emit({ file, kind: r.kind, ok: r.ok, checks: r.checks });
    if (!ctx.json) {
      ctx.stdout.write(table(['check', 'status', 'detail'], r.checks.map((c) => [c.name, c.status, c.detail])));
      ctx.say(r.ok ? `${file}: ${r.kind} image, every check passed or was skipped` : `${file}: ${r.checks.filter((c) => c.status === 'fail').length} check(s) failed`);
    }
    if (!r.ok) {
      const failed = r.checks.filter((c) => c.status === 'fail');
      // One line on stderr; under --json stdout keeps the single result document.
      ctx.stderr.write(`vmsave: ${file} failed ${failed.map((c) => `${c.name} (${c.detail})`).join(', ').replace(/\s*\n\s*/g, ' ')}\n`);
      return EXIT.rejected;
    }
    return EXIT.ok;
  },
};

export const offlineCommands: Command[] = [inspectCommand, verifyCommand];
