/**
 * The image verifier: every property of a vmsave or libvirt image that can be checked
 * without restoring it, as named checks. It never throws for a malformed image.
 *
 * Pure: it reads through a {@link VerifySource}; `verifyImage(path)` in node/verify.ts opens a
 * file as one (with SEEK_DATA/SEEK_HOLE extents and st_blocks).
 */
import type { QemuCapabilities } from '@vmsave/contracts';
import { decodeDescriptor } from './descriptor.ts';
import { ImageError } from './errors.ts';
import { FORMAT_VERSION, HEADER_SIZE, MAGIC_COMPLETE, MAGIC_PARTIAL, SUPPORTED_VERSIONS, decodeHeader, hasVmsaveMagic, type ImageHeader, verifyHeaderChecksum } from './header.ts';
import { LIBVIRT_MAX_DATA, compressorMagicMatches, decodeLibvirtHeader, domainSummary, hasLibvirtMagic, type LibvirtHeader, parseLibvirtData } from './libvirt.ts';
import { jsCrc32Hasher } from './crc32.ts';
import { checkSealSource, type SealHasher, type SealSource } from './seal.ts';
import { OutOfBounds, type Range, type VerifySource } from './source.ts';
import { TARGET_PAGE_SIZE, bitmapBytes, walkStream, type RamBlock, type StreamCheck, type StreamWalk } from './stream.ts';

/** Stable check names (consumers key on them). */
export const CHECK_NAMES = [
  'header.magic',
  'header.version',
  'header.checksum',
  'descriptor',
  'stream.magic',
  'stream.version',
  'format.matches-stream',
  'format.restorable-here',
  'mapped-ram.layout',
  'mapped-ram.bitmap-vs-extents',
  'stream.devices',
  'stream.complete',
  'sparseness',
  'seal.present',
  'seal.reserved',
  'seal.state',
  'seal.ram',
] as const;
export type CheckName = (typeof CHECK_NAMES)[number];
export type CheckStatus = 'pass' | 'warn' | 'fail' | 'skip';

export interface VerifyCheck {
  name: CheckName;
  status: CheckStatus;
  /** What was found, and for warn/fail what it means and what to do. */
  detail: string;
}

export interface VerifyResult {
  kind: 'vmsave' | 'libvirt' | 'unknown';
  checks: VerifyCheck[];
  /** True when no check failed. */
  ok: boolean;
}

export interface VerifyOptions {
  /** The restoring host's QEMU capabilities; without them `format.restorable-here` is skipped. */
  hostCaps?: QemuCapabilities;
  /** Most data extents examined per RAM block (default 1M). */
  maxExtents?: number;
  /** Largest bitmap read per RAM block (default 64 MiB, i.e. 2 TiB of RAM). */
  maxBitmapBytes?: number;
  /**
   * The checksum to check a sealed image with: default a plain-JS CRC-32 (`verifyImage` on a file
   * brings zlib's, which is faster).
   */
  sealHasher?: SealHasher;
  /** Also read every RAM chunk and compare it with the seal (`seal.ram`); default: device state only. */
  content?: boolean;
}

const MiB = 1024 * 1024;
const human = (n: number): string =>
  n >= 1024 ** 3 ? `${(n / 1024 ** 3).toFixed(2)} GiB` : n >= MiB ? `${(n / MiB).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;

class Checks {
  readonly list: VerifyCheck[] = [];
  add(name: CheckName, status: CheckStatus, detail: string): void {
    const i = this.list.findIndex((c) => c.name === name);
    if (i >= 0) this.list.splice(i, 1);
    this.list.push({ name, status, detail });
  }
  has(name: CheckName): boolean {
    return this.list.some((c) => c.name === name);
  }
  skipRest(reason: string): void {
    for (const n of CHECK_NAMES) if (!this.has(n)) this.add(n, 'skip', reason);
  }
  sorted(): VerifyCheck[] {
    return [...this.list].sort((a, b) => CHECK_NAMES.indexOf(a.name) - CHECK_NAMES.indexOf(b.name));
  }
}

/** Everything the stream checks need to know about the container around the stream. */
interface Container {
  streamOffset: number;
  /** What the container's header says the stream's format is. */
  expectedFormat?: 'legacy' | 'sparse';
  /** Machine type from the container's metadata, when known. */
  machine?: string;
  directIo?: boolean;
}

/**
 * Verify an image (vmsave, libvirt, or a bare QEMU stream) read through `src` and return named
 * checks. Never throws for a malformed image: read errors become failed checks too. Without
 * `src.dataExtents` / `src.allocatedBytes` (an in-memory buffer) the allocation checks are skipped.
 *
 * @example
 * const r = await verifySource(bufferSource(bytes), { hostCaps });
 * if (!r.ok) for (const c of r.checks.filter((c) => c.status === 'fail')) console.error(c.name, c.detail);
 */
export function verifySource(src: VerifySource, options: VerifyOptions = {}): Promise<VerifyResult> {
  return runVerification(async () => src, options);
}

/**
 * The verifier around an opener: what `open` throws (a file that cannot be opened) becomes the
 * first failed check, like any later read error; `close` runs once the checks are done.
 * For the I/O adapters of this package (node/verify.ts); not part of the public surface.
 */
export async function runVerification(open: () => Promise<VerifySource & { close?(): Promise<void> }>, options: VerifyOptions): Promise<VerifyResult> {
  const checks = new Checks();
  let kind: VerifyResult['kind'] = 'unknown';
  let src: (VerifySource & { close?(): Promise<void> }) | undefined;
  try {
    src = await open();
    const head = await src.read(0, 128);
    if (hasVmsaveMagic(head)) {
      kind = 'vmsave';
      const container = await vmsaveHeaderChecks(src, head, checks);
      if (container) await streamChecks(src, container, checks, options);
      await sealChecks(src, checks, options);
    } else if (hasLibvirtMagic(head)) {
      kind = 'libvirt';
      const container = await libvirtHeaderChecks(src, head, checks);
      if (container) await streamChecks(src, container, checks, options);
    } else {
      const qevm = Buffer.from(head.subarray(0, 4)).toString('latin1') === 'QEVM';
      checks.add(
        'header.magic',
        'fail',
        qevm
          ? 'no vmsave or libvirt header: this is a bare QEMU migration stream (it was checked below, but it carries no VM definition and no completion mark)'
          : `not a vmsave image (magic ${MAGIC_COMPLETE}), nor a libvirt save image, nor a QEMU stream: the file starts with ${JSON.stringify(Buffer.from(head.subarray(0, 16)).toString('latin1'))}`,
      );
      if (qevm) {
        checks.add('header.version', 'skip', 'no container header');
        checks.add('header.checksum', 'skip', 'no container header');
        checks.add('descriptor', 'skip', 'no container header');
        await streamChecks(src, { streamOffset: 0 }, checks, options);
      }
    }
  } catch (err) {
    const what = err instanceof ImageError || err instanceof OutOfBounds ? err.message : `unexpected error: ${(err as Error)?.stack ?? String(err)}`;
    const first = CHECK_NAMES.find((n) => !checks.has(n)) ?? 'stream.complete';
    checks.add(first, 'fail', `verification stopped: ${what}`);
  } finally {
    await src?.close?.();
  }
  checks.skipRest('not reached: an earlier check failed or this kind of image does not have it');
  const list = checks.sorted();
  return { kind, checks: list, ok: !list.some((c) => c.status === 'fail') };
}

/** The seal checks (`seal.*`) of a vmsave image, when a hasher is given. */
async function sealChecks(src: VerifySource & SealSource, checks: Checks, options: VerifyOptions): Promise<void> {
  const r = await checkSealSource(src, { scope: options.content ? 'full' : 'state', hasher: options.sealHasher ?? jsCrc32Hasher });
  for (const c of r.checks) checks.add(c.name, c.status, c.detail);
}

async function vmsaveHeaderChecks(src: VerifySource, head: Uint8Array, checks: Checks): Promise<Container | undefined> {
  const magic = Buffer.from(head.subarray(0, 8)).toString('latin1');
  if (magic === MAGIC_COMPLETE) checks.add('header.magic', 'pass', `${MAGIC_COMPLETE}: the save finished and was synced`);
  else {
    checks.add(
      'header.magic',
      'fail',
      `${MAGIC_PARTIAL}: the image is partial — QEMU was still writing, the save failed, or it was never finalized (fdatasync + magic flip). Do not restore it; delete it or save again`,
    );
  }
  let header: ImageHeader;
  try {
    header = decodeHeader(head, src.size);
  } catch (err) {
    const version = head.length >= 12 ? Buffer.from(head.buffer, head.byteOffset, head.length).readUInt32LE(8) : undefined;
    checks.add(
      'header.version',
      'fail',
      `${(err as Error).message}${version !== undefined && !SUPPORTED_VERSIONS.includes(version) ? '' : ' (header damaged or image truncated)'}`,
    );
    checks.skipRest('the header could not be decoded');
    return undefined;
  }
  checks.add(
    'header.version',
    'pass',
    `format version ${header.version} (this reader writes ${FORMAT_VERSION}); ${header.format}, ${header.channels} channel(s)${header.directIo ? ', direct I/O' : ''}, stream at ${header.streamOffset}`,
  );
  const descBytes = await src.read(header.descriptorOffset, header.descriptorLength);
  let checksumOk = false;
  try {
    verifyHeaderChecksum(head.subarray(0, HEADER_SIZE), descBytes);
    checksumOk = true;
    checks.add('header.checksum', 'pass', `crc32c 0x${header.checksum.toString(16).padStart(8, '0')} over header and ${header.descriptorLength}-byte descriptor`);
  } catch (err) {
    checks.add('header.checksum', 'fail', (err as Error).message);
  }
  let machine: string | undefined;
  try {
    const d = decodeDescriptor(descBytes);
    machine = d.vm.machine;
    const mismatch = d.format !== header.format ? `; but it says format "${d.format}" while the header says "${header.format}"` : '';
    checks.add(
      'descriptor',
      mismatch ? 'fail' : checksumOk ? 'pass' : 'warn',
      `VM "${d.vm.name}" (${d.vm.uuid}), ${d.vm.machine}, ${d.vm.memoryMiB} MiB, ${d.vm.vcpus} vCPU(s); saved by QEMU ${d.qemu.version} on ${d.host}, job ${d.jobId}, ${d.createdAt}${mismatch}${checksumOk ? '' : ' (parsed, but the checksum does not match: do not trust it)'}`,
    );
  } catch (err) {
    checks.add('descriptor', 'fail', (err as Error).message);
  }
  const c: Container = { streamOffset: header.streamOffset, expectedFormat: header.format, directIo: header.directIo };
  if (machine) c.machine = machine;
  return c;
}

async function libvirtHeaderChecks(src: VerifySource, head: Uint8Array, checks: Checks): Promise<Container | undefined> {
  const complete = Buffer.from(head.subarray(0, 16)).toString('latin1') === 'LibvirtQemudSave';
  checks.add(
    'header.magic',
    complete ? 'pass' : 'fail',
    complete ? 'LibvirtQemudSave: libvirt finished writing it' : 'LibvirtQemudPart: libvirt never finished this save (it was interrupted or failed); it cannot be restored',
  );
  let h: LibvirtHeader;
  try {
    h = decodeLibvirtHeader(await src.read(0, 92), src.size);
  } catch (err) {
    checks.add('header.version', 'fail', (err as Error).message);
    checks.skipRest('the libvirt header could not be decoded');
    return undefined;
  }
  if (!h.format) {
    checks.add('header.version', 'fail', `libvirt version ${h.version} header with unknown format code ${h.formatCode} (known: 0 raw … 6 sparse)`);
    checks.skipRest('unknown libvirt image format');
    return undefined;
  }
  checks.add(
    'header.version',
    'pass',
    `libvirt save image version ${h.version}${h.byteSwapped ? ' (written with the other byte order)' : ''}, format ${h.format}, stream at ${h.streamOffset}, guest was ${h.wasRunning ? 'running' : 'paused'}`,
  );
  checks.add('header.checksum', 'skip', 'libvirt save images carry no checksum');
  let machine: string | undefined;
  if (h.dataLength > LIBVIRT_MAX_DATA) {
    checks.add('descriptor', 'fail', `libvirt XML region of ${h.dataLength} bytes exceeds the ${LIBVIRT_MAX_DATA}-byte limit`);
  } else {
    const { xml, cookie } = parseLibvirtData(await src.read(92, h.dataLength), h);
    const s = domainSummary(xml);
    machine = s.machine;
    if (!xml.trimStart().startsWith('<domain') || !s.name) {
      checks.add('descriptor', 'fail', `the libvirt data region does not start with a <domain> XML with a <name> (${JSON.stringify(xml.slice(0, 40))})`);
    } else {
      checks.add(
        'descriptor',
        'pass',
        `domain "${s.name}"${s.uuid ? ` (${s.uuid})` : ''}${s.machine ? `, ${s.machine}` : ''}${s.memoryKiB ? `, ${Math.round(s.memoryKiB / 1024)} MiB` : ''}; XML ${xml.length} bytes${cookie ? `, cookie ${cookie.length} bytes` : ''}`,
      );
    }
  }
  const compressedMatch = compressorMagicMatches(h.format, await src.read(h.streamOffset, 16));
  if (compressedMatch !== undefined) {
    checks.add(
      'stream.magic',
      compressedMatch ? 'pass' : 'fail',
      compressedMatch
        ? `${h.format}-compressed QEMU stream at offset ${h.streamOffset} (${human(src.size - h.streamOffset)}); its contents cannot be checked without decompressing`
        : `the header says ${h.format} but the data at offset ${h.streamOffset} does not start with the ${h.format} magic: the image is damaged or the header is wrong`,
    );
    checks.add('format.matches-stream', 'pass', 'a compressed libvirt image always holds a legacy stream');
    checks.skipRest(`${h.format}-compressed: not checked without decompressing`);
    return undefined;
  }
  const c: Container = { streamOffset: h.streamOffset, expectedFormat: h.format === 'sparse' ? 'sparse' : 'legacy' };
  if (machine) c.machine = machine;
  return c;
}

function problemsOf(walk: StreamWalk, ...kinds: StreamCheck[]): string | undefined {
  return walk.problems.find((p) => kinds.includes(p.check))?.detail;
}

async function streamChecks(src: VerifySource, container: Container, checks: Checks, options: VerifyOptions): Promise<void> {
  const walk = await walkStream(src, container.streamOffset);
  if (!walk.magic) {
    checks.add('stream.magic', 'fail', problemsOf(walk, 'stream.magic') ?? `no QEMU stream at ${container.streamOffset}`);
    checks.skipRest('no QEMU stream');
    await sparseness(src, walk, checks, undefined);
    return;
  }
  checks.add('stream.magic', 'pass', `QEVM at offset ${walk.offset}`);
  if (walk.version !== 3) {
    checks.add('stream.version', 'fail', problemsOf(walk, 'stream.version') ?? `version ${walk.version}`);
    checks.skipRest('unknown stream version');
    return;
  }
  checks.add('stream.version', 'pass', 'version 3');

  // format.matches-stream
  const cfgProblem = problemsOf(walk, 'stream.config');
  const streamFormat = walk.mappedRam ? 'sparse' : 'legacy';
  if (cfgProblem) checks.add('format.matches-stream', 'fail', `the stream's configuration section is damaged: ${cfgProblem}`);
  else if (!walk.hasConfiguration) checks.add('format.matches-stream', 'warn', 'the stream has no configuration section (old machine type?): cannot tell mapped-ram from legacy');
  else if (!container.expectedFormat)
    checks.add('format.matches-stream', 'skip', `no container header to compare with; the stream is ${streamFormat} (capabilities: ${walk.capabilities?.join(', ') || 'none'})`);
  else if (container.expectedFormat === streamFormat) {
    checks.add(
      'format.matches-stream',
      'pass',
      `header says ${container.expectedFormat}; the stream's configuration ${walk.mappedRam ? 'lists mapped-ram' : 'lists no mapped-ram'} (machine ${walk.machine})`,
    );
  } else {
    checks.add(
      'format.matches-stream',
      'fail',
      `the header says ${container.expectedFormat} but the QEMU stream is ${streamFormat} (configuration capabilities: ${walk.capabilities?.join(', ') || 'none'}): QEMU would refuse this image; the header was damaged or written for another stream — re-save the VM`,
    );
  }

  // format.restorable-here
  const caps = options.hostCaps;
  const machine = walk.machine ?? container.machine;
  if (!caps) checks.add('format.restorable-here', 'skip', 'no host QEMU capabilities given');
  else {
    const why: string[] = [];
    if (walk.mappedRam && !caps.mappedRam) why.push(`the image is mapped-ram (sparse) but QEMU ${caps.version} here lacks mapped-ram (needs ≥ 9.0)`);
    if (machine && !caps.machines.includes(machine)) why.push(`QEMU ${caps.version} here does not know machine type "${machine}"`);
    if (!machine) why.push('the image names no machine type');
    if (why.length) checks.add('format.restorable-here', 'fail', `${why.join('; ')}: restore it on another host`);
    else {
      const note = container.directIo && !caps.directIo ? '; saved with direct I/O, which this QEMU lacks: restore buffered' : '';
      checks.add('format.restorable-here', 'pass', `QEMU ${caps.version} supports ${streamFormat} and machine ${machine}${note}`);
    }
  }

  // mapped-ram.*
  const blockStats = walk.mappedRam ? await mappedRamChecks(src, walk, checks, options) : undefined;
  if (!walk.mappedRam) {
    checks.add('mapped-ram.layout', 'skip', 'legacy stream: no mapped-ram blocks');
    checks.add('mapped-ram.bitmap-vs-extents', 'skip', 'legacy stream: no bitmaps');
  }

  // stream.devices and stream.complete
  const devProblem = problemsOf(walk, 'stream.devices');
  if (devProblem) checks.add('stream.devices', 'fail', `${devProblem}; QEMU would reject this image or load corrupt device state`);
  else if (walk.eofOffset !== undefined) checks.add('stream.devices', 'pass', `${walk.devices.length} device sections walked with the VM description; every footer matches`);
  else checks.add('stream.devices', 'skip', 'the walk stopped before the device sections');

  const other = walk.problems.find((p) => !['stream.devices', 'stream.config', 'mapped-ram.layout'].includes(p.check)) ?? walk.problems[0];
  if (walk.complete && walk.problems.length === 0) {
    const ram = walk.ram!;
    const pages = walk.mappedRam ? '' : `; ${ram.pages.normal} data and ${ram.pages.zero} zero page records`;
    checks.add(
      'stream.complete',
      'pass',
      `RAM (${ram.blocks.length} blocks, ${human(ram.memSize)}) with its END section, ${walk.devices.length} devices, EOF and the VM description ending exactly at the end of the file (${src.size})${pages}`,
    );
  } else {
    checks.add(
      'stream.complete',
      'fail',
      other
        ? `${other.detail}${other.check === 'stream.complete' ? '' : ` (found while walking: ${other.check})`}`
        : 'the stream does not end with EOF and its VM description at the end of the file',
    );
  }

  await sparseness(src, walk, checks, blockStats);
}

interface BlockStats {
  block: RamBlock;
  pages: number;
  setPages: number;
  allocatedPages: number;
}

/** Page runs of set bits (little-endian u64 words: page i is bit i&7 of byte i>>3). */
function bitRuns(bitmap: Uint8Array, pages: number): { runs: Range[]; set: number; stray: number } {
  const runs: Array<[number, number]> = [];
  let set = 0;
  let stray = 0;
  let runStart = -1;
  const total = bitmap.length * 8;
  for (let byte = 0; byte < bitmap.length; byte++) {
    const v = bitmap[byte]!;
    const base = byte * 8;
    if ((v === 0 && runStart < 0) || (v === 0xff && runStart >= 0 && base + 8 <= pages)) {
      if (v === 0xff) set += 8;
      continue;
    }
    for (let bit = 0; bit < 8; bit++) {
      const i = base + bit;
      const on = (v >> bit) & 1;
      if (i >= pages) {
        if (on) stray++;
        continue;
      }
      if (on) {
        set++;
        if (runStart < 0) runStart = i;
      } else if (runStart >= 0) {
        runs.push([runStart, i]);
        runStart = -1;
      }
    }
  }
  if (runStart >= 0) runs.push([runStart, Math.min(pages, total)]);
  return { runs, set, stray };
}

/** Pages in `a` not covered by `b` (both sorted, non-overlapping): count and first page. */
function subtract(a: readonly Range[], b: readonly Range[]): { count: number; first?: number; ranges: Range[] } {
  let count = 0;
  let first: number | undefined;
  const ranges: Range[] = [];
  let j = 0;
  for (const [s0, e] of a) {
    let s = s0;
    while (j < b.length && b[j]![1] <= s) j++;
    let k = j;
    while (s < e) {
      const cur = b[k];
      if (!cur || cur[0] >= e) {
        count += e - s;
        first ??= s;
        if (ranges.length < 4096) ranges.push([s, e]);
        break;
      }
      if (cur[0] > s) {
        count += cur[0] - s;
        first ??= s;
        if (ranges.length < 4096) ranges.push([s, cur[0]]);
      }
      s = Math.max(s, cur[1]);
      k++;
    }
  }
  return first === undefined ? { count, ranges } : { count, first, ranges };
}

async function mappedRamChecks(src: VerifySource, walk: StreamWalk, checks: Checks, options: VerifyOptions): Promise<BlockStats[] | undefined> {
  const layoutProblem = problemsOf(walk, 'mapped-ram.layout');
  const blocks = (walk.ram?.blocks ?? []).filter((b) => b.mappedRam);
  if (layoutProblem) {
    checks.add('mapped-ram.layout', 'fail', `${layoutProblem}; QEMU would fail to load (or crash on) this image`);
    checks.add('mapped-ram.bitmap-vs-extents', 'skip', 'the mapped-ram layout is damaged');
    return undefined;
  }
  if (blocks.length === 0) {
    checks.add('mapped-ram.layout', 'fail', `mapped-ram stream without RAM block headers: ${walk.problems[0]?.detail ?? 'no RAM section'}`);
    return undefined;
  }
  const maxBitmap = options.maxBitmapBytes ?? 64 * MiB;
  const layoutIssues: string[] = [];
  const stats: BlockStats[] = [];
  const bitmaps: Array<{ block: RamBlock; runs: Range[] }> = [];
  for (const b of blocks) {
    const h = b.mappedRam!;
    const pages = b.usedLength / TARGET_PAGE_SIZE;
    const len = bitmapBytes(b.usedLength);
    if (len > maxBitmap) {
      layoutIssues.push(`block "${b.name}": bitmap of ${len} bytes exceeds the ${maxBitmap}-byte limit`);
      continue;
    }
    const bm = await src.read(h.bitmapOffset, len);
    if (bm.length !== len) {
      layoutIssues.push(`block "${b.name}": bitmap [${h.bitmapOffset}, +${len}) is cut off by the end of the file`);
      continue;
    }
    const { runs, set, stray } = bitRuns(bm, pages);
    if (stray) layoutIssues.push(`block "${b.name}": ${stray} bit(s) set past its ${pages} pages — the bitmap is damaged`);
    stats.push({ block: b, pages, setPages: set, allocatedPages: 0 });
    bitmaps.push({ block: b, runs });
  }
  const usedTotal = blocks.reduce((s, b) => s + b.usedLength, 0);
  if (walk.ram && usedTotal !== walk.ram.memSize) layoutIssues.push(`blocks add up to ${usedTotal} bytes but MEM_SIZE says ${walk.ram.memSize}`);
  if (layoutIssues.length) checks.add('mapped-ram.layout', 'fail', layoutIssues.join('; '));
  else {
    const set = stats.reduce((s, x) => s + x.setPages, 0);
    checks.add(
      'mapped-ram.layout',
      'pass',
      `${blocks.length} RAM block(s), ${human(usedTotal)} = MEM_SIZE; headers v1, 4 KiB pages, bitmaps right after their headers, pages regions 1 MiB-aligned inside the file; ${set} page(s) marked written`,
    );
  }

  // bitmap-vs-extents
  const lost: string[] = [];
  const unmarked: Array<{ block: RamBlock; ranges: Range[]; count: number }> = [];
  let lostCount = 0;
  let unmarkedCount = 0;
  let truncatedScan = false;
  for (const { block, runs } of bitmaps) {
    const h = block.mappedRam!;
    const start = h.pagesOffset;
    const end = Math.min(h.pagesOffset + block.usedLength, src.size);
    if (!src.dataExtents) {
      checks.add('mapped-ram.bitmap-vs-extents', 'skip', 'the source cannot report data extents (not a file): bitmaps not compared with holes');
      return stats;
    }
    const scan = await src.dataExtents(start, end, options.maxExtents ?? 1 << 20);
    if (!scan.supported) {
      checks.add('mapped-ram.bitmap-vs-extents', 'skip', 'the filesystem does not report holes (SEEK_DATA/SEEK_HOLE unsupported)');
      return stats;
    }
    truncatedScan ||= scan.truncated;
    const dataPages: Array<[number, number]> = [];
    for (const [s, e] of scan.extents) {
      const ps = Math.floor((s - start) / TARGET_PAGE_SIZE);
      const pe = Math.ceil((e - start) / TARGET_PAGE_SIZE);
      const last = dataPages[dataPages.length - 1];
      if (last && last[1] >= ps) last[1] = Math.max(last[1], pe);
      else dataPages.push([ps, pe]);
    }
    const st = stats.find((x) => x.block === block)!;
    st.allocatedPages = dataPages.reduce((s, [a, b]) => s + (b - a), 0);
    const l = subtract(runs, dataPages);
    if (l.count) {
      lostCount += l.count;
      lost.push(`block "${block.name}": ${l.count} page(s), first page ${l.first} at file offset ${start + l.first! * TARGET_PAGE_SIZE}`);
    }
    const u = subtract(dataPages, runs);
    if (u.count) {
      unmarkedCount += u.count;
      unmarked.push({ block, ranges: u.ranges, count: u.count });
    }
  }
  if (lostCount) {
    checks.add(
      'mapped-ram.bitmap-vs-extents',
      'fail',
      `${lostCount} page(s) marked written in the bitmap read as holes — their data was lost (holes punched, or a copy dropped them); a restore would silently give the guest zeros there: ${lost.slice(0, 4).join('; ')}`,
    );
    return stats;
  }
  if (unmarkedCount) {
    // Either the bitmaps were never written (background-snapshot, interrupted save) or a dense copy
    // filled holes with zeros. Tell them apart by sampling the unmarked pages' contents.
    const sample = await sampleNonZero(src, unmarked, 64);
    const first = unmarked[0]!;
    const where = `first in block "${first.block.name}" page ${first.ranges[0]![0]}`;
    const setPages = stats.reduce((s, x) => s + x.setPages, 0);
    if (sample.nonZero && setPages > unmarkedCount) {
      // The bitmaps were written (most data pages have their bit): a live copy leaves these. A
      // page sent with data in an early pass and found zero in a later one has its bit cleared by
      // QEMU, but its old bytes stay in the file; a restore loads it as zeros, which is right.
      checks.add(
        'mapped-ram.bitmap-vs-extents',
        'warn',
        `${unmarkedCount} page(s) hold old data with no bit in the bitmap (${where}), beside ${setPages} marked: pages that became zero during a live copy keep their earlier bytes in the file and load as zeros; restorable`,
      );
    } else if (sample.nonZero) {
      checks.add(
        'mapped-ram.bitmap-vs-extents',
        'fail',
        `${unmarkedCount} page(s) hold data but have no bit in the bitmap (${where}; sampled page at file offset ${sample.nonZeroOffset} is non-zero): the bitmaps were never written (background-snapshot or a save that did not complete), so a restore would load zeros instead of this data — save again without background-snapshot`,
      );
    } else {
      checks.add(
        'mapped-ram.bitmap-vs-extents',
        'warn',
        `${unmarkedCount} allocated page(s) with no bitmap bit (${where}) hold zeros in all ${sample.sampled} sampled: the image was probably copied without keeping holes; restorable, but it wastes ${human(unmarkedCount * TARGET_PAGE_SIZE)}`,
      );
    }
    return stats;
  }
  const set = stats.reduce((s, x) => s + x.setPages, 0);
  checks.add(
    'mapped-ram.bitmap-vs-extents',
    truncatedScan ? 'warn' : 'pass',
    `${set} page(s) marked written, exactly the allocated pages of the pages regions${truncatedScan ? ' (extent scan stopped early: too many extents)' : ''}`,
  );
  return stats;
}

async function sampleNonZero(
  src: VerifySource,
  unmarked: Array<{ block: RamBlock; ranges: Range[]; count: number }>,
  max: number,
): Promise<{ sampled: number; nonZero: boolean; nonZeroOffset?: number }> {
  const all: number[] = [];
  for (const u of unmarked) for (const [s, e] of u.ranges) for (let p = s; p < e && all.length < 100_000; p++) all.push(u.block.mappedRam!.pagesOffset + p * TARGET_PAGE_SIZE);
  const step = Math.max(1, Math.floor(all.length / max));
  let sampled = 0;
  for (let i = 0; i < all.length && sampled < max; i += step) {
    const off = all[i]!;
    const page = await src.read(off, TARGET_PAGE_SIZE);
    sampled++;
    if (page.some((b) => b !== 0)) return { sampled, nonZero: true, nonZeroOffset: off };
  }
  return { sampled, nonZero: false };
}

async function sparseness(src: VerifySource, walk: StreamWalk, checks: Checks, stats: BlockStats[] | undefined): Promise<void> {
  if (!src.allocatedBytes) {
    checks.add('sparseness', 'skip', 'the source cannot report its allocated size (not a file)');
    return;
  }
  let allocated: number;
  try {
    allocated = await src.allocatedBytes();
  } catch (err) {
    checks.add('sparseness', 'skip', `cannot stat: ${(err as Error).message}`);
    return;
  }
  const base = `${human(allocated)} allocated of ${human(src.size)} logical (${((100 * allocated) / Math.max(1, src.size)).toFixed(1)}%)`;
  if (!walk.mappedRam) {
    checks.add('sparseness', 'pass', `${base}; a legacy stream has no holes to keep`);
    return;
  }
  const regionPages = stats?.reduce((s, x) => s + x.pages, 0) ?? 0;
  const allocPages = stats?.reduce((s, x) => s + x.allocatedPages, 0) ?? 0;
  const setPages = stats?.reduce((s, x) => s + x.setPages, 0) ?? 0;
  const dense = regionPages > 0 ? allocPages >= 0.9 * regionPages && setPages < 0.9 * regionPages : allocated >= 0.9 * src.size;
  if (dense) {
    checks.add(
      'sparseness',
      'warn',
      `${base}: a sparse image whose pages regions are ${regionPages ? `${((100 * allocPages) / regionPages).toFixed(0)}%` : 'fully'} allocated although only ${setPages} page(s) were written — it was copied without keeping holes (copy with cp --sparse=always or rsync --sparse)`,
    );
  } else {
    checks.add('sparseness', 'pass', `${base}; pages regions: ${allocPages} of ${regionPages} pages allocated, ${setPages} marked written`);
  }
}
