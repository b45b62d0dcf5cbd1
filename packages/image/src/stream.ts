/**
 * A walker for QEMU's migration stream (format version 3, QEMU 10), reading from a
 * ByteSource at a given offset. Pure: no file I/O of its own.
 *
 * It never trusts a length or offset it has not checked against the end of the source,
 * never allocates more than a bound, and never throws for malformed input: every problem
 * becomes a `StreamProblem` naming the verifier check it belongs to. Device sections
 * (which carry no length) are walked with the JSON VM description that ends the stream,
 * summing the field sizes it gives, subsections included.
 */
import { z } from 'zod';
import { Cursor, NotBuffered, OutOfBounds, safeNumber, type ByteSource } from './source.ts';

export const QEVM_MAGIC = 0x5145564d;
export const QEVM_VERSION = 3;

export const SECTION = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

/** RAM record flags (low bits of the be64 that also carries the page address). */
export const RAM_FLAG = {
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  HOOK: 0x80,
  MULTIFD_FLUSH: 0x200,
} as const;
const KNOWN_RAM_FLAGS = Object.values(RAM_FLAG).reduce((a, b) => a | b, 0);

export const TARGET_PAGE_SIZE = 4096;
export const MAPPED_RAM_HEADER_SIZE = 28;
export const MAPPED_RAM_VERSION = 1;
export const MAPPED_RAM_ALIGNMENT = 1024 * 1024;

/** Verifier check names a stream problem can belong to. */
export type StreamCheck = 'stream.magic' | 'stream.version' | 'stream.config' | 'mapped-ram.layout' | 'stream.ram' | 'stream.devices' | 'stream.complete';

export interface StreamProblem {
  check: StreamCheck;
  /** Absolute file offset where it was found. */
  offset: number;
  detail: string;
}

/** The 28-byte header QEMU writes for each RAM block when mapped-ram is on. */
export interface MappedRamHeader {
  /** Absolute offset of the header itself. */
  offset: number;
  version: number;
  pageSize: number;
  bitmapOffset: number;
  pagesOffset: number;
}

export interface RamBlock {
  name: string;
  usedLength: number;
  /** Absolute offset of the block's entry (its name-length byte) in the START section. */
  entryOffset: number;
  mappedRam?: MappedRamHeader;
}

export interface RamInfo {
  sectionId: number;
  version: number;
  /** Total from the MEM_SIZE record. */
  memSize: number;
  blocks: RamBlock[];
  /** Sum of the blocks' used lengths. */
  usedTotal: number;
  /** A RAM END section (written at completion, when mapped-ram bitmaps are written) was seen. */
  endSection: boolean;
  /** Page records in the stream itself (legacy format; mapped-ram sends pages over multifd). */
  pages: { normal: number; zero: number; xbzrle: number };
  /** Absolute offset of the RAM START section's type byte. */
  startOffset: number;
  /** Absolute offset just past the footer of the last RAM section (START, PART or END) walked. */
  sectionsEnd: number;
}

export interface DeviceSection {
  idstr: string;
  instanceId: number;
  version: number;
  offset: number;
  size: number;
}

export interface StreamWalk {
  /** Absolute offset of the `QEVM` magic. */
  offset: number;
  magic: boolean;
  version?: number;
  machine?: string;
  /** Capabilities listed in `configuration/capabilities`; undefined when that subsection is absent. */
  capabilities?: string[];
  configSubsections: Array<{ name: string; version: number }>;
  hasConfiguration: boolean;
  /** True when the configuration section lists `mapped-ram`. */
  mappedRam: boolean;
  ram?: RamInfo;
  devices: DeviceSection[];
  commands: Array<{ cmd: number; length: number; offset: number }>;
  /** Offset of the EOF marker, when reached. */
  eofOffset?: number;
  /** Where the JSON VM description was found (offset of its 0x06 byte). */
  description?: { offset: number; length: number; end: number };
  /** True when the walk went from the magic to a description ending exactly at the end of the source. */
  complete: boolean;
  problems: StreamProblem[];
}

export interface WalkOptions {
  /** Largest JSON description searched for at the end (default 16 MiB). */
  maxDescriptionBytes?: number;
  /** Most RAM blocks accepted (default 4096). */
  maxBlocks?: number;
  /** Most device sections accepted (default 100000). */
  maxSections?: number;
}

/* ---------- the JSON VM description ---------- */

const DescField = z.looseObject({
  name: z.string(),
  type: z.string().optional(),
  size: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  array_len: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).optional(),
});
interface DescVmsd {
  vmsd_name: string;
  version: number;
  fields?: Array<z.infer<typeof DescField>>;
  subsections?: DescVmsd[];
}
const DescVmsd: z.ZodType<DescVmsd> = z.looseObject({
  vmsd_name: z.string(),
  version: z.number().int(),
  fields: z.array(DescField).optional(),
  subsections: z.array(z.lazy(() => DescVmsd)).optional(),
});
const DescDevice = z.looseObject({
  name: z.string(),
  instance_id: z.number().int(),
  vmsd_name: z.string(),
  version: z.number().int(),
  fields: z.array(DescField).optional(),
  subsections: z.array(DescVmsd).optional(),
});
/** The JSON QEMU appends after EOF (`QEMU_VM_VMDESCRIPTION`). */
export const VmDescription = z.looseObject({
  page_size: z.number().int().optional(),
  configuration: DescVmsd.optional(),
  devices: z.array(DescDevice),
});
export type VmDescription = z.infer<typeof VmDescription>;

const MAX_VMSD_DEPTH = 64;

/** Bytes a vmstate description occupies in the stream: its fields, then each subsection with its 0x05 header. */
export function vmsdStreamSize(v: Pick<DescVmsd, 'fields' | 'subsections'>, depth = 0): number {
  if (depth > MAX_VMSD_DEPTH) throw new RangeError(`subsections nested deeper than ${MAX_VMSD_DEPTH}`);
  let total = 0;
  for (const f of v.fields ?? []) total += f.size * (f.array_len ?? 1);
  for (const s of v.subsections ?? []) total += 1 + 1 + Buffer.byteLength(s.vmsd_name, 'latin1') + 4 + vmsdStreamSize(s, depth + 1);
  if (!Number.isSafeInteger(total)) throw new RangeError('field sizes add up to more than 2^53');
  return total;
}

interface FoundDescription {
  offset: number;
  length: number;
  end: number;
  json: VmDescription;
}

/**
 * Find `0x00 EOF, 0x06, be32 length, {json}` at the end of [start, limit): the description must end
 * exactly at `limit`. When it does not, look for one that ends earlier, to say how much garbage follows.
 */
async function findDescription(src: ByteSource, start: number, limit: number, maxBytes: number, problems: StreamProblem[]): Promise<FoundDescription | undefined> {
  const attempt = async (tailLen: number, exact: boolean): Promise<FoundDescription | undefined> => {
    const from = Math.max(start, limit - tailLen);
    const tail = await src.read(from, limit - from);
    if (tail.length !== limit - from) return undefined;
    let parses = 0;
    for (let i = tail.length - 6; i >= 1; i--) {
      if (tail[i] !== SECTION.VMDESCRIPTION || tail[i + 5] !== 0x7b /* { */ || tail[i - 1] !== SECTION.EOF) continue;
      const len = ((tail[i + 1]! << 24) | (tail[i + 2]! << 16) | (tail[i + 3]! << 8) | tail[i + 4]!) >>> 0;
      const end = i + 5 + len;
      if (exact ? end !== tail.length : end > tail.length || tail[end - 1] !== 0x7d /* } */) continue;
      if (++parses > 16) return undefined;
      try {
        const parsed = VmDescription.safeParse(JSON.parse(Buffer.from(tail.subarray(i + 5, end)).toString('utf8')));
        if (parsed.success) return { offset: from + i, length: len, end: from + end, json: parsed.data };
        if (exact) {
          problems.push({
            check: 'stream.devices',
            offset: from + i + 5,
            detail: `the VM description at the end of the stream does not have the expected shape: ${z.prettifyError(parsed.error).slice(0, 300)}`,
          });
          return undefined;
        }
      } catch {
        /* not JSON: keep looking */
      }
    }
    return undefined;
  };
  const small = Math.min(256 * 1024, maxBytes + 6);
  const found = (await attempt(small, true)) ?? (maxBytes + 6 > small ? await attempt(maxBytes + 6, true) : undefined);
  if (found) return found;
  const early = await attempt(Math.min(maxBytes + 6, 4 * 1024 * 1024), false);
  if (early) {
    problems.push({
      check: 'stream.complete',
      offset: early.end,
      detail: `the stream's VM description ends at offset ${early.end} but ${limit - early.end} more byte(s) follow up to the end of the file: garbage was appended after the end of the stream (or the file was concatenated)`,
    });
    return early;
  }
  return undefined;
}

/* ---------- the walk ---------- */

class Stop extends Error {
  constructor(readonly problem: StreamProblem) {
    super(problem.detail);
  }
}

function describeBounds(e: OutOfBounds, what: string, fileEnd: number): string {
  if (e.position + e.wanted > fileEnd && e.limit >= fileEnd) {
    return `the file ends at offset ${fileEnd} in the middle of ${what} (needed ${e.wanted} byte(s) at ${e.position}): the image is truncated`;
  }
  return `${what}: ${e.message}`;
}

/**
 * Walk the QEMU stream that starts at `offset` in `src` and ends at `limit` (default: end of source).
 * Never throws for malformed data; see `StreamWalk.problems`.
 */
export async function walkStream(src: ByteSource, offset: number, options: WalkOptions & { limit?: number; resume?: StreamPrefix } = {}): Promise<StreamWalk> {
  return (await walkFrom(src, offset, options, options.resume)).walk;
}

/**
 * Where a walk of a stream still being written stopped (`walkStreamPrefix`): the walk so far (the
 * header, the configuration and every RAM section) and the offset of the first section after them.
 * `walkStream(src, offset, { resume })` goes on from there over the whole file and gives what a walk
 * from the start gives (the prefix's RAM info is taken over, not copied: resume once).
 */
export interface StreamPrefix {
  walk: StreamWalk;
  /** Offset of the first section that is not a RAM section (a device section, a command, EOF). */
  at: number;
  /** Sections walked before it (counted against `maxSections` as a whole walk does). */
  sections: number;
}

/**
 * Walk a legacy stream that may still be growing: the magic, the configuration and the RAM
 * sections, up to the first other section, without the VM description at the end (not written
 * yet). `src` may serve its reads as the bytes arrive (`FollowFeed`); its `size` bounds the walk.
 * Returns the prefix, or the walk with its problems when it stopped early (a configuration
 * subsection that needs the description, damage): then walk the whole file instead.
 */
export async function walkStreamPrefix(src: ByteSource, offset: number, options: WalkOptions = {}): Promise<{ prefix?: StreamPrefix; walk: StreamWalk }> {
  return walkFrom(src, offset, { ...options, prefixOnly: true }, undefined);
}

async function walkFrom(
  src: ByteSource,
  offset: number,
  options: WalkOptions & { limit?: number; prefixOnly?: boolean },
  resume: StreamPrefix | undefined,
): Promise<{ prefix?: StreamPrefix; walk: StreamWalk }> {
  const limit = Math.min(options.limit ?? src.size, src.size);
  const maxBlocks = options.maxBlocks ?? 4096;
  const maxSections = options.maxSections ?? 100_000;
  const prefixOnly = options.prefixOnly === true;
  let prefix: StreamPrefix | undefined;
  const walk: StreamWalk = resume
    ? { ...resume.walk, configSubsections: [...resume.walk.configSubsections], devices: [...resume.walk.devices], commands: [...resume.walk.commands], problems: [] }
    : {
        offset,
        magic: false,
        configSubsections: [],
        hasConfiguration: false,
        mappedRam: false,
        devices: [],
        commands: [],
        complete: false,
        problems: [],
      };
  const c = new Cursor(src, offset, limit);
  let what = 'the stream header';
  let check: StreamCheck = 'stream.magic';
  const stop = (ck: StreamCheck, detail: string, at = c.pos): never => {
    throw new Stop({ check: ck, offset: at, detail });
  };

  try {
    if (offset > limit) stop('stream.magic', `the stream offset ${offset} is past the end of the file (${limit} bytes)`, offset);
    let desc: FoundDescription | undefined;
    if (resume) {
      // The prefix walked the header and the configuration; the description is looked for from
      // where a whole walk looks for it (after the magic and version), then the walk goes on.
      desc = await findDescription(src, offset + 8, limit, options.maxDescriptionBytes ?? 16 * 1024 * 1024, walk.problems);
      if (desc) walk.description = { offset: desc.offset, length: desc.length, end: desc.end };
      c.seek(resume.at);
    } else {
      const magic = await c.be32();
      if (magic !== QEVM_MAGIC) stop('stream.magic', `no QEMU stream at offset ${offset}: found 0x${magic.toString(16).padStart(8, '0')} instead of "QEVM" (0x5145564d)`, offset);
      walk.magic = true;
      check = 'stream.version';
      walk.version = await c.be32();
      if (walk.version !== QEVM_VERSION) stop('stream.version', `QEMU stream version ${walk.version}, only version ${QEVM_VERSION} exists for QEMU ≥ 1.3`, offset + 4);

      // The description is needed to size device sections; look for it before walking them.
      if (!prefixOnly) {
        desc = await findDescription(src, c.pos, limit, options.maxDescriptionBytes ?? 16 * 1024 * 1024, walk.problems);
        if (desc) walk.description = { offset: desc.offset, length: desc.length, end: desc.end };
      }

      check = 'stream.config';
      what = 'the configuration section';
      if ((await c.peekU8()) === SECTION.CONFIGURATION) {
        walk.hasConfiguration = true;
        await c.u8();
        const len = await c.be32();
        if (len === 0 || len > 256) stop('stream.config', `machine type name length ${len} is not plausible (1..256)`);
        walk.machine = await c.latin1(len);
        while ((await c.peekU8()) === SECTION.SUBSECTION) {
          const at = c.pos;
          await c.u8();
          const name = await c.latin1(await c.u8());
          const version = await c.be32();
          walk.configSubsections.push({ name, version });
          if (name === 'configuration/capabilities') {
            const count = await c.be32();
            if (count > 256) stop('stream.config', `configuration/capabilities claims ${count} entries`, at);
            const caps: string[] = [];
            for (let i = 0; i < count; i++) caps.push(await c.latin1(await c.u8()));
            walk.capabilities = caps;
          } else {
            const sub = desc?.json.configuration?.subsections?.find((s) => s.vmsd_name === name);
            if (!sub) stop('stream.config', `unknown configuration subsection "${name}" and no VM description entry to size it`, at);
            c.skip(vmsdStreamSize(sub!));
          }
        }
        walk.mappedRam = walk.capabilities?.includes('mapped-ram') ?? false;
      }
    }

    let nextDevice = 0;
    let sections = resume?.sections ?? 0;
    const footer = async (id: number, name: string): Promise<void> => {
      const at = c.pos;
      const t = await c.u8();
      const fid = await c.be32();
      if (t !== SECTION.FOOTER || fid !== id) {
        stop(
          check,
          `section "${name}" (id ${id}) does not end with its footer at offset ${at}: found type 0x${t.toString(16)} id ${fid} — the section's contents are damaged or have an unexpected size`,
          at,
        );
      }
    };

    for (;;) {
      if (++sections > maxSections) stop('stream.complete', `more than ${maxSections} sections: refusing to walk further`);
      check = 'stream.complete';
      what = 'a section header';
      const at = c.pos;
      const type = await c.u8();
      if (prefixOnly && walk.ram && type !== SECTION.PART && type !== SECTION.END) {
        prefix = { walk, at, sections: sections - 1 };
        break;
      }
      if (type === SECTION.START || type === SECTION.FULL) {
        const id = await c.be32();
        const idstr = await c.latin1(await c.u8());
        const instanceId = await c.be32();
        const version = await c.be32();
        if (type === SECTION.START && idstr === 'ram') {
          check = 'stream.ram';
          what = 'the RAM setup section';
          if (walk.ram) stop('stream.ram', 'a second RAM START section', at);
          if (version !== 4) stop('stream.ram', `RAM section version ${version}, expected 4`, at);
          walk.ram = {
            sectionId: id,
            version,
            memSize: 0,
            blocks: [],
            usedTotal: 0,
            endSection: false,
            pages: { normal: 0, zero: 0, xbzrle: 0 },
            startOffset: at,
            sectionsEnd: at,
          };
          await ramStart(c, walk, walk.ram, maxBlocks, stop);
          await ramRecords(c, walk.ram, stop);
          await footer(id, idstr);
          walk.ram.sectionsEnd = c.pos;
        } else if (type === SECTION.START) {
          stop('stream.devices', `iterable section "${idstr}" (START) is not one this walker can size (only "ram" is)`, at);
        } else {
          check = 'stream.devices';
          what = `device section "${idstr}"`;
          const dev = desc?.json.devices[nextDevice];
          if (!desc)
            stop(
              'stream.devices',
              `device section "${idstr}" at offset ${at} cannot be walked: no VM description ends at the end of the file — the image is truncated (or the stream is damaged)`,
              at,
            );
          if (!dev || dev.name !== idstr || dev.instance_id !== instanceId) {
            stop(
              'stream.devices',
              `device section "${idstr}" instance ${instanceId} at offset ${at} does not match the VM description (expected ${dev ? `"${dev.name}" instance ${dev.instance_id}` : 'no more devices'})`,
              at,
            );
          }
          nextDevice++;
          let size: number;
          try {
            size = vmsdStreamSize(dev!);
          } catch (e) {
            return stop('stream.devices', `the VM description of "${idstr}" cannot be sized: ${(e as Error).message}`, at);
          }
          c.skip(size);
          walk.devices.push({ idstr, instanceId, version, offset: at, size });
          await footer(id, idstr);
        }
      } else if (type === SECTION.PART || type === SECTION.END) {
        const id = await c.be32();
        if (!walk.ram || id !== walk.ram.sectionId) stop('stream.ram', `${type === SECTION.END ? 'END' : 'PART'} section for unknown section id ${id}`, at);
        check = 'stream.ram';
        what = 'a RAM section';
        await ramRecords(c, walk.ram!, stop);
        if (type === SECTION.END) walk.ram!.endSection = true;
        await footer(id, 'ram');
        walk.ram!.sectionsEnd = c.pos;
      } else if (type === SECTION.COMMAND) {
        const cmd = await c.be16();
        const length = await c.be16();
        c.skip(length);
        if (walk.commands.length < 64) walk.commands.push({ cmd, length, offset: at });
      } else if (type === SECTION.EOF) {
        walk.eofOffset = at;
        break;
      } else {
        stop('stream.complete', `unknown section type 0x${type.toString(16)} at offset ${at}: the stream is damaged here`, at);
      }
    }

    if (prefix) return { prefix, walk };
    check = 'stream.complete';
    if (desc && nextDevice !== desc.json.devices.length) {
      stop('stream.devices', `the VM description lists ${desc.json.devices.length} devices but the stream has ${nextDevice} device sections`, walk.eofOffset);
    }
    if (!walk.ram) stop('stream.ram', 'the stream has no RAM section', walk.eofOffset);
    if (!walk.ram!.endSection) {
      stop(
        'stream.complete',
        'the stream has no RAM END section: QEMU did not finish the save normally (for mapped-ram the bitmaps are written only then, e.g. background-snapshot writes none)',
        walk.eofOffset,
      );
    }
    if (!desc) {
      const d = walk.eofOffset! + 1 < limit ? 'it is not followed by a well-formed VM description' : 'the VM description that must follow it is missing';
      stop('stream.complete', `the stream reaches EOF at offset ${walk.eofOffset} but ${d} ending at the end of the file`, walk.eofOffset);
    }
    if (desc!.offset !== walk.eofOffset! + 1) {
      stop('stream.complete', `EOF marker at ${walk.eofOffset}, but the VM description found at the end of the file starts at ${desc!.offset}`, walk.eofOffset);
    }
    walk.complete = desc!.end === limit;
  } catch (e) {
    if (e instanceof Stop) walk.problems.push(e.problem);
    else if (e instanceof OutOfBounds) walk.problems.push({ check, offset: e.position, detail: describeBounds(e, what, limit) });
    else walk.problems.push({ check, offset: c.pos, detail: `${what}: ${(e as Error)?.message ?? String(e)}` });
  }
  return { walk };
}

type StopFn = (check: StreamCheck, detail: string, at?: number) => never;

async function ramStart(c: Cursor, walk: StreamWalk, ram: RamInfo, maxBlocks: number, stop: StopFn): Promise<void> {
  const at = c.pos;
  const v = await c.be64();
  const flags = Number(v & 0xfffn);
  if (!(flags & RAM_FLAG.MEM_SIZE)) stop('stream.ram', `RAM setup does not start with a MEM_SIZE record (flags 0x${flags.toString(16)})`, at);
  const total = safeNumber(v & ~0xfffn);
  if (total === undefined) return stop('stream.ram', `RAM total ${v & ~0xfffn} is absurdly large`, at);
  ram.memSize = total;
  while (ram.usedTotal < total) {
    if (ram.blocks.length >= maxBlocks) stop('stream.ram', `more than ${maxBlocks} RAM blocks`);
    const entryOffset = c.pos;
    const nameLen = await c.u8();
    if (nameLen === 0) stop('stream.ram', `RAM block entry with an empty name at ${entryOffset}`, entryOffset);
    const name = await c.latin1(nameLen);
    const used = safeNumber(await c.be64());
    if (used === undefined || used === 0 || used % TARGET_PAGE_SIZE !== 0) {
      stop('stream.ram', `RAM block "${name}" has a used length that is zero, huge, or not a multiple of ${TARGET_PAGE_SIZE}`, entryOffset);
    }
    const block: RamBlock = { name, usedLength: used!, entryOffset };
    ram.blocks.push(block);
    ram.usedTotal += used!;
    if (walk.mappedRam) {
      const h: MappedRamHeader = {
        offset: c.pos,
        version: await c.be32(),
        pageSize: Number((await c.be64()) & 0xffffffffn),
        bitmapOffset: safeNumber(await c.be64()) ?? -1,
        pagesOffset: safeNumber(await c.be64()) ?? -1,
      };
      block.mappedRam = h;
      const problems = mappedRamHeaderProblems(block, c.limit);
      if (problems.length > 0) stop('mapped-ram.layout', `RAM block "${name}": ${problems.join('; ')}`, h.offset);
      // QEMU continues the stream right after the block's pages region.
      c.seek(h.pagesOffset + used!);
    }
  }
  if (ram.usedTotal !== total) {
    stop(walk.mappedRam ? 'mapped-ram.layout' : 'stream.ram', `RAM blocks add up to ${ram.usedTotal} bytes but MEM_SIZE says ${total}`, at);
  }
}

/** What is wrong with a mapped-ram block header, checked against the end of the file. */
export function mappedRamHeaderProblems(block: RamBlock, fileEnd: number): string[] {
  const h = block.mappedRam;
  if (!h) return ['no mapped-ram header'];
  const p: string[] = [];
  if (h.version !== MAPPED_RAM_VERSION) p.push(`header version ${h.version}, expected ${MAPPED_RAM_VERSION}`);
  if (h.pageSize !== TARGET_PAGE_SIZE) p.push(`page size ${h.pageSize}, expected ${TARGET_PAGE_SIZE}`);
  if (h.bitmapOffset !== h.offset + MAPPED_RAM_HEADER_SIZE) p.push(`bitmap offset ${h.bitmapOffset}, expected header position + 28 = ${h.offset + MAPPED_RAM_HEADER_SIZE}`);
  const bitmapEnd = h.bitmapOffset + bitmapBytes(block.usedLength);
  if (h.pagesOffset < 0 || h.pagesOffset % MAPPED_RAM_ALIGNMENT !== 0) p.push(`pages offset ${h.pagesOffset} is not aligned to 1 MiB`);
  else if (h.pagesOffset < bitmapEnd) p.push(`pages offset ${h.pagesOffset} overlaps the bitmap ending at ${bitmapEnd}`);
  if (h.pagesOffset < 0 || h.pagesOffset + block.usedLength > fileEnd) {
    p.push(
      `pages region [${h.pagesOffset}, ${h.pagesOffset + block.usedLength}) extends past the end of the file (${fileEnd} bytes): the image is truncated or the header is damaged`,
    );
  }
  return p;
}

/** Bytes of a mapped-ram bitmap for a block of `usedLength` bytes: ceil(pages / 64) × 8. */
export function bitmapBytes(usedLength: number): number {
  return Math.ceil(usedLength / TARGET_PAGE_SIZE / 64) * 8;
}

/** The block a CONTINUE record refers to; QEMU keeps it across RAM section parts (ram.c's last_sent_block). */
const lastBlock = new WeakMap<RamInfo, RamBlock>();

async function ramRecords(c: Cursor, ram: RamInfo, stop: StopFn): Promise<void> {
  // Records are parsed synchronously out of the cursor's window; when a field is not buffered the
  // window is refilled from the record's start (failing as that field's read would) and the record
  // is parsed again. Its pages are counted only once it is parsed whole.
  for (;;) {
    const at = c.pos;
    try {
      if (ramRecord(c, ram, stop, at)) return;
    } catch (e) {
      if (!(e instanceof NotBuffered)) throw e;
      await c.load(at, e.position, e.wanted);
      c.pos = at;
    }
  }
}

/** One RAM record at `at`, from the window only (NotBuffered otherwise); true at the EOS record. */
function ramRecord(c: Cursor, ram: RamInfo, stop: StopFn, at: number): boolean {
  const hi = c.be64HiSync();
  const lo = c.low;
  const flags = lo & 0xfff;
  if (flags & ~KNOWN_RAM_FLAGS) stop('stream.ram', `unknown RAM record flags 0x${(flags & ~KNOWN_RAM_FLAGS).toString(16)} at offset ${at}: the stream is damaged here`, at);
  if (flags & RAM_FLAG.EOS) return true;
  if (flags & RAM_FLAG.HOOK) stop('stream.ram', `RAM hook record (RDMA) at offset ${at}: not supported in a file`, at);
  if (flags & RAM_FLAG.MEM_SIZE) stop('stream.ram', `unexpected MEM_SIZE record at offset ${at}`, at);
  if (flags === RAM_FLAG.MULTIFD_FLUSH || flags === 0) {
    if (flags === 0) stop('stream.ram', `RAM record with no flags at offset ${at}`, at);
    return false;
  }
  const kinds = flags & (RAM_FLAG.ZERO | RAM_FLAG.PAGE | RAM_FLAG.XBZRLE);
  if (kinds !== RAM_FLAG.ZERO && kinds !== RAM_FLAG.PAGE && kinds !== RAM_FLAG.XBZRLE) {
    stop('stream.ram', `RAM record at offset ${at} has flags 0x${flags.toString(16)}: not exactly one page kind`, at);
  }
  let current: RamBlock | undefined = lastBlock.get(ram);
  if (!(flags & RAM_FLAG.CONTINUE)) {
    const name = c.latin1Sync(c.u8Sync());
    current = ram.blocks.find((b) => b.name === name);
    if (!current) stop('stream.ram', `page record at offset ${at} names unknown RAM block "${name}"`, at);
    lastBlock.set(ram, current!); // the same block again if the record is parsed again after a refill
  } else if (!current) {
    stop('stream.ram', `page record at offset ${at} continues a block but none was named before`, at);
  }
  // The address is the u64 without its flag bits; at or above 2^53 (high half ≥ 2^21) it is not a safe number.
  const addr = hi * 2 ** 32 + (lo - flags);
  if (hi >= 2 ** 21 || addr >= current!.usedLength) {
    const hex = ((BigInt(hi) << 32n) | BigInt(lo - flags)).toString(16);
    stop('stream.ram', `page address 0x${hex} at offset ${at} is outside block "${current!.name}" (${current!.usedLength} bytes)`, at);
  }
  if (kinds === RAM_FLAG.ZERO) {
    const fill = c.u8Sync();
    if (fill !== 0) stop('stream.ram', `zero-page record at offset ${at} carries fill byte ${fill}, QEMU only writes 0`, at);
    ram.pages.zero++;
  } else if (kinds === RAM_FLAG.PAGE) {
    c.skip(TARGET_PAGE_SIZE);
    ram.pages.normal++;
  } else {
    const enc = c.u8Sync();
    const len = c.be16Sync();
    if (enc !== 1 || len > TARGET_PAGE_SIZE) stop('stream.ram', `XBZRLE record at offset ${at} has encoding ${enc} and length ${len}`, at);
    c.skip(len);
    ram.pages.xbzrle++;
  }
  return false;
}
