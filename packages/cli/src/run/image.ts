/** What `inspect` and `verify` do (their options: `../commands/image.ts`). Loaded only when one runs. */
import { open, stat } from 'node:fs/promises';
import {
  decodeHeader,
  decodeLibvirtHeader,
  domainSummary,
  HEADER_SIZE,
  LIBVIRT_HEADER_SIZE,
  parseLibvirtData,
  readImage,
  verifyImage,
  checkSeal,
  type ImageInfo,
  type SealCheck,
  type VerifyCheck,
  type VerifyResult,
} from '@vmsave/image/node';
import { fmtBytes, fmtRate } from '@vmsave/jobs';
import type { Ctx } from '../context.ts';
import { CliError, EXIT } from '../errors.ts';
import { cachedProbe, hostCaps, stateDirOf } from '../host-caps.ts';
import { bool, type Values } from '../options.ts';
import { table } from '../terminal.ts';

async function inspectLibvirt(file: string) {
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

export async function inspect(ctx: Ctx, _v: Values, [file]: string[]): Promise<number> {
  await stat(file!).catch(() => {
    throw new CliError(`no such file: ${file}`);
  });
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
    ctx.say(
      [
        `${file}: vmsave image, ${h.complete ? 'complete' : 'PARTIAL (never restorable)'}, version ${h.version}, ${fmtBytes(info.size)}`,
        `  format      ${h.format}${h.format === 'sparse' ? `, ${h.channels} channel(s)` : ''}${h.directIo ? ', direct IO' : ''}, VM was ${h.wasRunning ? 'running' : 'paused'}`,
        `  stream at   ${h.streamOffset}`,
        `  written by  QEMU ${d.qemu.version} on ${d.host}, job ${d.jobId}, ${d.createdAt}${d.completedAt ? ` → ${d.completedAt}` : ''}`,
        `  vm          ${d.vm.name}  uuid ${d.vm.uuid}`,
        `  machine     ${d.vm.machine}, ${d.vm.memoryMiB} MiB, ${d.vm.vcpus} vCPU(s)`,
        `  args        ${d.vm.args.length ? d.vm.args.map((a) => (/[\s'"]/.test(a) ? JSON.stringify(a) : a)).join(' ') : '(none)'}`,
      ].join('\n'),
    );
    return EXIT.ok;
  }
  try {
    const l = await inspectLibvirt(file!);
    ctx.emit({ kind: l.kind, size: l.size, header: l.header, domain: l.domain });
    ctx.say(
      [
        `${file}: libvirt save image, ${l.header.complete ? 'complete' : 'partial'}, version ${l.header.version}, ${fmtBytes(l.size)}`,
        `  format      ${l.header.format ?? `unknown (${l.header.formatCode})`}, VM was ${l.header.wasRunning ? 'running' : 'paused'}, stream at ${l.header.streamOffset}`,
        `  domain      ${l.domain.name ?? '?'}  uuid ${l.domain.uuid ?? '?'}`,
        `  machine     ${l.domain.machine ?? '?'}, ${l.domain.memoryKiB !== undefined ? `${Math.round(l.domain.memoryKiB / 1024)} MiB` : '?'}`,
      ].join('\n'),
    );
    return EXIT.ok;
  } catch {
    throw new CliError(`${file} is neither a readable vmsave image nor a libvirt save image: ${(vmsaveErr as Error)?.message ?? 'unknown format'}`);
  }
}

/** What `verify --json` says the image is: who wrote it and in which format (null when unknown). */
export interface ImageFormat {
  /** `vmsave` or `libvirt`: the container around QEMU's stream. */
  source: 'vmsave' | 'libvirt' | null;
  /** vmsave: `legacy` or `sparse`; libvirt: its compressor name (`raw`, `gzip`, …, `sparse`). */
  format: string | null;
}

/** Read the container header again (a few bytes) for `source`/`format`; the checks already said whether it is sound. */
export async function imageFormat(file: string, kind: VerifyResult['kind']): Promise<ImageFormat> {
  if (kind === 'unknown') return { source: null, format: null };
  const fh = await open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(Math.max(HEADER_SIZE, LIBVIRT_HEADER_SIZE));
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const bytes = head.subarray(0, bytesRead);
    if (kind === 'vmsave') return { source: 'vmsave', format: decodeHeader(bytes, size).format };
    return { source: 'libvirt', format: decodeLibvirtHeader(bytes, size).format ?? null };
  } catch {
    return { source: kind, format: null };
  } finally {
    await fh.close();
  }
}

/**
 * Progress of a long content check on stderr: a bar on a terminal, otherwise a plain line every
 * 5 s once it has run 2 s (nothing under --json, nothing for a short check).
 */
function contentProgress(ctx: Ctx, file: string): (done: number, total: number) => void {
  const t0 = Date.now();
  let lastLine = t0;
  const bar = ctx.tty ? ctx.bar() : undefined;
  return (done, total) => {
    const now = Date.now();
    const secs = (now - t0) / 1000;
    if (secs < 1) return;
    const bytesPerSec = secs > 0 ? done / secs : 0;
    if (bar) {
      bar.update({ label: 'content', totalBytes: total, doneBytes: done, bytesPerSec, etaMs: bytesPerSec > 0 ? ((total - done) / bytesPerSec) * 1000 : undefined }, done >= total);
    } else if (!ctx.json && secs >= 2 && now - lastLine >= 5000) {
      lastLine = now;
      ctx.stderr.write(`vmsave: verify --content ${file}: ${fmtBytes(done)} of ${fmtBytes(total)} checked (${fmtRate(bytesPerSec)})\n`);
    }
  };
}

/** Where a content check found the image's bytes differ from its seal, as one phrase. */
export function mismatchText(m: SealCheck['mismatches']): string {
  const shown = m.slice(0, 8).map((x) => `${x.region} bytes ${x.start}–${x.end}`);
  return `${shown.join(', ')}${m.length > shown.length ? ` and ${m.length - shown.length} more range(s)` : ''}`;
}

/**
 * The image's checks plus, with `content`, the whole seal: every RAM chunk read against its
 * digest (`seal.ram`). Asking for content on an image with no seal fails `seal.present`.
 */
async function contentChecks(ctx: Ctx, file: string, r: VerifyResult): Promise<{ checks: VerifyCheck[]; seal?: SealCheck }> {
  if (r.kind !== 'vmsave') {
    return { checks: [...r.checks, { name: 'seal.present', status: 'fail', detail: `cannot verify content: a ${r.kind} image has no seal` }] };
  }
  const sc = await checkSeal(file, { scope: 'full', signal: ctx.signal, onProgress: contentProgress(ctx, file) });
  ctx.progress?.clear();
  const byName = new Map(r.checks.map((c) => [c.name, c] as const));
  for (const c of sc.checks) byName.set(c.name, c);
  if (!sc.sealed) byName.set('seal.present', { name: 'seal.present', status: 'fail', detail: 'cannot verify content: image has no seal (written before seals, or not by vmsave)' });
  return { checks: [...byName.values()], seal: sc };
}

export async function verify(ctx: Ctx, v: Values, [file]: string[]): Promise<number> {
  await stat(file!).catch(() => {
    throw new CliError(`no such file: ${file}`);
  });
  // Without this host's QEMU (or when it cannot be probed) only `format.restorable-here` is skipped.
  const caps = await cachedProbe(stateDirOf(ctx.env), ctx.env).then(hostCaps, () => undefined);
  const base = await verifyImage(file!, { hostCaps: caps });
  const content = bool(v, 'content') ? await contentChecks(ctx, file!, base) : undefined;
  const checks = content?.checks ?? base.checks;
  const r: VerifyResult = { ...base, checks, ok: checks.every((c) => c.status !== 'fail') };
  const { source, format } = await imageFormat(file!, r.kind);
  const seal = content?.seal;
  ctx.emit({
    file,
    kind: r.kind,
    source,
    format,
    ok: r.ok,
    checks: r.checks,
    ...(seal
      ? { content: { sealed: seal.sealed, ok: seal.ok, bytesRead: seal.bytesRead, durationMs: Math.round(seal.durationMs), mismatches: seal.mismatches, summary: seal.summary } }
      : {}),
  });
  if (!ctx.json) {
    ctx.stdout.write(
      table(
        ['check', 'status', 'detail'],
        r.checks.map((c) => [c.name, c.status, c.detail]),
      ),
    );
    ctx.say(
      r.ok
        ? `${file}: ${r.kind} image${format ? ` (${format})` : ''}, every check passed or was skipped`
        : `${file}: ${r.checks.filter((c) => c.status === 'fail').length} check(s) failed`,
    );
  }
  if (!r.ok) {
    const failed = r.checks.filter((c) => c.status === 'fail');
    // One line on stderr; under --json stdout keeps the single result document.
    ctx.stderr.write(
      `vmsave: ${file} failed ${failed
        .map((c) => `${c.name} (${c.detail})`)
        .join(', ')
        .replace(/\s*\n\s*/g, ' ')}\n`,
    );
    if (seal?.mismatches.length) ctx.stderr.write(`vmsave: ${file} differs from its seal at ${mismatchText(seal.mismatches)}\n`);
    return EXIT.rejected;
  }
  return EXIT.ok;
}
