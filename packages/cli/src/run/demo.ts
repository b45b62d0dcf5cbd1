/**
 * What `vmsave demo` does (its options: `../commands/demo.ts`): against a running stack, save
 * the demo VM in both formats through the bus, wait for the verifier, restore both images
 * (stopping the VM in between), and print the comparison table.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { readHosts } from '@vmsave/bus';
import type { ProgressSample } from '@vmsave/contracts';
import { describeState, fmtBytes, fmtRate, fmtSeconds, type JobState } from '@vmsave/jobs';
import { QmpClient } from '@vmsave/qmp';
import { int, str, type Values } from '../options.ts';
import type { Ctx } from '../context.ts';
import { writeDemoVm } from '../demo-vm.ts';
import { CliError, EXIT, JobFailedError, RejectedError, UnreachableError } from '../errors.ts';
import { table } from '../terminal.ts';
import { localHost, localHostName, type LocalHost } from '../local.ts';

export interface DemoRow {
  format: 'legacy' | 'sparse';
  saveJob: string;
  restoreJob: string;
  imagePath: string;
  saveMs: number;
  restoreMs: number;
  bytes: number;
  blocks: number;
  throughputBytesPerSec: number;
  verified: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitUntil<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new CliError(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}`);
    await sleep(300);
  }
}

async function stopVm(local: LocalHost, name: string): Promise<void> {
  if ((await local.vms.status(name)) === 'stopped') return;
  try {
    await using qmp = await QmpClient.connect(local.vms.socketOf(name), { timeoutMs: 3000 });
    await qmp.execute('quit').catch(() => undefined);
  } catch {
    /* already going */
  }
  await waitUntil(`VM ${name} to stop`, 30_000, async () => ((await local.vms.status(name)) === 'stopped' ? true : undefined));
}

export async function demo(ctx: Ctx, v: Values): Promise<number> {
  const name = str(v, 'vm') ?? 'demo';
  const memoryMiB = int(v, 'memory', { min: 32, max: 65536 }) ?? 256;
  const local = await localHost(ctx.env);
  const host = str(v, 'host') ?? localHostName(local.cfg);
  const step = (s: string) => {
    if (!ctx.json) ctx.note(`demo: ${s}`);
  };

  if (!(await local.vms.get(name))) {
    await local.vms.define(await writeDemoVm(path.resolve(local.cfg.VMSAVE_STATE_DIR, 'demo'), { name, memoryMiB }));
    step(`defined VM ${name} (${memoryMiB} MiB) in ${local.cfg.vmDir}`);
  }
  const def = (await local.vms.get(name))!;
  if ((await local.vms.status(name)) === 'stopped') {
    const vm = await local.vms.start(name, { detached: true });
    step(`started ${name} (pid ${vm.pid}, ${local.accel})`);
  }
  const bus = await ctx.bus();
  const client = await ctx.client();
  step(`waiting for host ${host} to announce ${name} running`);
  await waitUntil(`host ${host} to announce VM ${name} running (is \`npm start\` running, and is this its host?)`, 60_000, async () => {
    for await (const a of readHosts(bus)) if (a.host === host && a.vms.some((x) => x.name === name && x.status !== 'stopped')) return true;
    return undefined;
  });

  const bar = ctx.bar();
  const onProgress = ctx.tty
    ? (p: ProgressSample) => bar.update({ label: `${p.stage}`, totalBytes: p.totalBytes, doneBytes: p.transferredBytes, bytesPerSec: p.bytesPerSec, etaMs: p.etaMs })
    : undefined;
  const finished = (s: JobState): void => {
    bar.clear();
    if (s.status === 'rejected') throw new RejectedError(describeState(s), s.rejection?.rule);
    if (s.status === 'failed' || s.status === 'cancelled') throw new JobFailedError(describeState(s));
  };

  const saves: Omit<DemoRow, 'restoreJob' | 'restoreMs'>[] = [];
  for (const format of ['legacy', 'sparse'] as const) {
    // The last save quits the VM, so the restores that follow have a free name.
    const after = format === 'sparse' ? 'quit' : 'running';
    const r = await client.save({ requestId: `demo-${randomUUID()}`, vm: name, format, after }, { admissionTimeoutMs: ctx.cfg.VMSAVE_ADMISSION_TIMEOUT_MS });
    if (!r.admission) throw new UnreachableError('no admission answer for the save: is the scheduler running?');
    if (r.admission.outcome === 'rejected') throw new RejectedError(`save rejected (${r.admission.rule}): ${r.admission.message}`, r.admission.rule);
    step(`${format} save ${r.jobId} (after: ${after})`);
    const s = await client.waitForJob(r.jobId, { signal: ctx.signal, onProgress, timeoutMs: 10 * 60_000 });
    finished(s);
    step(`${format} image ${s.imagePath} verified: ${fmtBytes(s.result?.bytes ?? 0)}, ${fmtBytes((s.result?.blocks ?? 0) * 512)} allocated`);
    saves.push({
      format,
      saveJob: r.jobId,
      imagePath: s.imagePath!,
      saveMs: s.result?.durationMs ?? 0,
      bytes: s.result?.bytes ?? 0,
      blocks: s.result?.blocks ?? 0,
      throughputBytesPerSec: s.result?.throughputBytesPerSec ?? 0,
      verified: s.status === 'verified',
    });
  }

  const rows: DemoRow[] = [];
  for (const save of saves) {
    await stopVm(local, def.name);
    const r = await client.restore({ requestId: `demo-${randomUUID()}`, image: save.imagePath, host }, { admissionTimeoutMs: ctx.cfg.VMSAVE_ADMISSION_TIMEOUT_MS });
    if (!r.admission) throw new UnreachableError('no admission answer for the restore: is the scheduler running?');
    if (r.admission.outcome === 'rejected') throw new RejectedError(`restore rejected (${r.admission.rule}): ${r.admission.message}`, r.admission.rule);
    step(`${save.format} restore ${r.jobId}`);
    const s = await client.waitForJob(r.jobId, { signal: ctx.signal, onProgress, timeoutMs: 10 * 60_000 });
    finished(s);
    rows.push({ ...save, restoreJob: r.jobId, restoreMs: s.result?.durationMs ?? 0 });
  }
  step(`${name} runs again, restored from the ${rows.at(-1)!.format} image`);

  ctx.emit({ vm: name, host, memoryMiB: def.memoryMiB, rows });
  if (!ctx.json) {
    ctx.say(`\n${name}: ${def.memoryMiB} MiB RAM, ${def.machine}, on ${host} (${local.accel})\n`);
    ctx.stdout.write(
      table(
        ['format', 'save s', 'restore s', 'size', 'allocated', 'blocks', 'save rate', 'verified'],
        rows.map((r) => [
          r.format,
          fmtSeconds(r.saveMs),
          fmtSeconds(r.restoreMs),
          fmtBytes(r.bytes),
          fmtBytes(r.blocks * 512),
          String(r.blocks),
          fmtRate(r.throughputBytesPerSec),
          r.verified ? 'yes' : 'no',
        ]),
        { right: [1, 2, 3, 4, 5, 6] },
      ),
    );
  }
  return EXIT.ok;
}
