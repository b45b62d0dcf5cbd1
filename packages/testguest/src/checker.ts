import { DATA_START, HB, HB_WINDOWS, HEARTBEAT_ADDR, HEARTBEAT_MAGIC, PAGE_MAGIC, PAGE_SIZE, pageChecksum } from './layout.ts';

/** The guest's heartbeat page, decoded. */
export interface Heartbeat {
  version: number;
  /** Number of page writes started since boot; write `cursor` may be in flight. */
  cursor: number;
  /** Loop turns since boot (advances while the guest runs, also while it waits for its rate). */
  counter: number;
  /** TSC at the last loop turn. */
  tsc: bigint;
  firstPfn: number;
  npages: number;
  rate: number;
  share: number;
  seed: number;
  /** TSC frequency the guest was told (`tsc_khz=`), 0 if none. */
  tscKhz: number;
  /** Sum of the TSC gaps between two loop turns longer than `stallThreshold`: time the guest saw itself stopped. */
  stalledTsc: bigint;
  stallCount: number;
  maxGapTsc: bigint;
  stallThreshold: number;
  bootTsc: bigint;
  /** End of the RAM above 1 MiB the guest found (multiboot `mem_upper`). */
  ramTop: number;
  /** Generation of the pass under way (from 1). */
  generation: number;
  /** Index (from 0, within the data pages) of the page in flight. */
  position: number;
  /** Version 2: the guest's stall windows (see {@link StallWindow}); undefined for version 1. */
  stallWindows?: StallWindows;
}

/** The guest's stall history: per window of 2^`shift` TSC ticks, the longest stall that ended in it. */
export interface StallWindows {
  shift: number;
  /** Slots the guest keeps (windows of history). */
  slots: number;
  /** The slots in use. */
  windows: StallWindow[];
}

/** The stalls that ended in one window of the guest's TSC (`tsc >> shift === window`, mod 2^32). */
export interface StallWindow {
  window: number;
  stalls: number;
  longestTsc: bigint;
}

/** Decodes a heartbeat page; undefined when its magic is absent (guest not booted yet). */
export function parseHeartbeat(page: Uint8Array): Heartbeat | undefined {
  if (page.byteLength < PAGE_SIZE) return undefined;
  const v = new DataView(page.buffer, page.byteOffset, PAGE_SIZE);
  const w = (i: number) => v.getUint32(i * 4, true);
  const w64 = (lo: number, hi: number) => (BigInt(w(hi)) << 32n) | BigInt(w(lo));
  if (w(HB.magic) !== HEARTBEAT_MAGIC) return undefined;
  const npages = w(HB.npages);
  const cursor = w(HB.cursor);
  return {
    version: w(HB.version),
    cursor,
    counter: w(HB.counter),
    tsc: w64(HB.tscLo, HB.tscHi),
    firstPfn: w(HB.firstPfn),
    npages,
    rate: w(HB.rate),
    share: w(HB.share),
    seed: w(HB.seed),
    tscKhz: w(HB.tscKhz),
    stalledTsc: w64(HB.stallLo, HB.stallHi),
    stallCount: w(HB.stallCount),
    maxGapTsc: w64(HB.maxGapLo, HB.maxGapHi),
    stallThreshold: w(HB.stallThreshold),
    bootTsc: w64(HB.bootTscLo, HB.bootTscHi),
    ramTop: w(HB.ramTop),
    generation: npages > 0 ? Math.floor(cursor / npages) + 1 : 0,
    position: npages > 0 ? cursor % npages : 0,
    ...(w(HB.version) >= 2 ? { stallWindows: stallWindows(w) } : {}),
  };
}

function stallWindows(w: (i: number) => number): StallWindows {
  const shift = w(HB.winShift);
  const slots = Math.min(w(HB.winSlots), (PAGE_SIZE / 4 - HB_WINDOWS) / 4);
  const windows: StallWindow[] = [];
  for (let i = 0; i < slots; i++) {
    const o = HB_WINDOWS + i * 4;
    const stalls = w(o + 1);
    if (stalls > 0) windows.push({ window: w(o), stalls, longestTsc: (BigInt(w(o + 3)) << 32n) | BigInt(w(o + 2)) });
  }
  return { shift, slots, windows };
}

/** What is wrong with one data page. */
export type PageProblem =
  /** magic and index right, checksum wrong: partly written or damaged */
  | 'torn'
  /** a page of the guest's format whose index is not its position */
  | 'wrong-index'
  /** an older generation than the heartbeat implies for its position */
  | 'stale'
  /** a newer generation than the heartbeat implies (or written where nothing was yet) */
  | 'ahead'
  /** no page where one was written */
  | 'missing';

export interface PageIssue {
  /** Page frame number (guest-physical address / 4096). */
  pfn: number;
  problem: PageProblem;
  /** The generation found, when the page has a valid header. */
  generation?: number;
  /** The generation the heartbeat implies for this position (0: not written yet). */
  expected?: number;
}

/** The page under the heartbeat's cursor, which may legitimately be in any of these states. */
export type InFlight = 'old' | 'new' | 'torn';

export interface DumpAnalysis {
  /** Every page matches the heartbeat: gen g before the cursor, g−1 after it, the one under it old, new or torn. */
  consistent: boolean;
  /** Why the dump cannot be analysed at all (no heartbeat, too short). */
  reason?: string;
  heartbeat?: Heartbeat;
  /** Data pages the guest writes (heartbeat `npages`). */
  pages: number;
  /** Pages with a valid header and checksum. */
  written: number;
  /** Pages that were never written (allowed only in the first pass, after the cursor). */
  unwritten: number;
  /** Count of valid pages per generation. */
  generations: Record<number, number>;
  /** First index (within the data pages) whose content is not of the current generation (the boundary seen). */
  boundary: number;
  inFlight?: InFlight;
  /** The first `maxIssues` problems; `issueCount` counts all. */
  issues: PageIssue[];
  issueCount: number;
}

export interface AnalyseOptions {
  /** Guest-physical address of `buf[0]` (default 0: a `pmemsave 0 <ram size>` dump). */
  base?: number;
  /** Issues kept in the result (default 100). */
  maxIssues?: number;
}

type PageState = { kind: 'absent' } | { kind: 'wrong-index'; index: number } | { kind: 'torn'; generation: number } | { kind: 'ok'; generation: number };

function pageState(view: DataView, offset: number, pfn: number): PageState {
  if (view.getUint32(offset, true) !== PAGE_MAGIC) return { kind: 'absent' };
  const index = view.getUint32(offset + 4, true);
  if (index !== pfn) return { kind: 'wrong-index', index };
  const generation = view.getUint32(offset + 8, true);
  if (view.getUint32(offset + 12, true) !== pageChecksum(view, offset)) return { kind: 'torn', generation };
  return { kind: 'ok', generation };
}

/**
 * Checks a dump of guest RAM (e.g. QMP `pmemsave 0 <ram size>`) against the guest's heartbeat:
 * every data page self-consistent (magic, index = its position, checksum), generation g
 * before the heartbeat's cursor and g−1 after it (never written, in the first pass), and only
 * the page under the cursor possibly torn. Pure; never throws on bad content.
 *
 * @example
 * ```ts
 * const a = analyseDump(await readFile('ram.bin'));
 * if (!a.consistent) console.log(a.reason ?? a.issues);
 * ```
 */
export function analyseDump(buf: Uint8Array, opts: AnalyseOptions = {}): DumpAnalysis {
  const base = opts.base ?? 0;
  const maxIssues = opts.maxIssues ?? 100;
  const result: DumpAnalysis = { consistent: false, pages: 0, written: 0, unwritten: 0, generations: {}, boundary: 0, issues: [], issueCount: 0 };
  const hbOffset = HEARTBEAT_ADDR - base;
  if (hbOffset < 0 || hbOffset + PAGE_SIZE > buf.byteLength) {
    result.reason = `dump (base ${base}, ${buf.byteLength} bytes) does not hold the heartbeat page at ${HEARTBEAT_ADDR}`;
    return result;
  }
  const hb = parseHeartbeat(buf.subarray(hbOffset, hbOffset + PAGE_SIZE));
  if (!hb) {
    result.reason = 'no heartbeat: magic absent (guest not booted?)';
    return result;
  }
  result.heartbeat = hb;
  result.pages = hb.npages;
  const end = hb.firstPfn * PAGE_SIZE + hb.npages * PAGE_SIZE - base;
  if (hb.firstPfn * PAGE_SIZE !== DATA_START || end > buf.byteLength) {
    result.reason = `heartbeat names pages ${hb.firstPfn}..${hb.firstPfn + hb.npages - 1}, outside the dump (base ${base}, ${buf.byteLength} bytes)`;
    return result;
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const g = hb.generation;
  const issue = (i: PageIssue) => {
    result.issueCount++;
    if (result.issues.length < maxIssues) result.issues.push(i);
  };
  let boundarySeen = false;
  for (let i = 0; i < hb.npages; i++) {
    const pfn = hb.firstPfn + i;
    const st = pageState(view, pfn * PAGE_SIZE - base, pfn);
    if (st.kind === 'ok') {
      result.written++;
      result.generations[st.generation] = (result.generations[st.generation] ?? 0) + 1;
    } else if (st.kind === 'absent') result.unwritten++;
    if (!boundarySeen && !(st.kind === 'ok' && st.generation === g)) {
      result.boundary = i;
      boundarySeen = true;
    }
    const expected = i < hb.position ? g : g - 1;
    if (i === hb.position) {
      if (st.kind === 'torn') result.inFlight = 'torn';
      else if (st.kind === 'ok' && st.generation === g) result.inFlight = 'new';
      else if ((st.kind === 'ok' && st.generation === g - 1) || (st.kind === 'absent' && g === 1)) result.inFlight = 'old';
      else if (st.kind === 'wrong-index') issue({ pfn, problem: 'wrong-index' });
      else if (st.kind === 'ok') issue({ pfn, problem: st.generation < g ? 'stale' : 'ahead', generation: st.generation, expected: g });
      else issue({ pfn, problem: 'missing', expected: g });
      continue;
    }
    if (st.kind === 'wrong-index') issue({ pfn, problem: 'wrong-index' });
    else if (st.kind === 'torn') issue({ pfn, problem: 'torn', generation: st.generation, expected });
    else if (st.kind === 'absent') {
      if (expected !== 0) issue({ pfn, problem: 'missing', expected });
    } else if (st.generation !== expected) issue({ pfn, problem: st.generation < expected ? 'stale' : 'ahead', generation: st.generation, expected });
  }
  if (!boundarySeen) result.boundary = hb.npages;
  result.consistent = result.issueCount === 0;
  return result;
}

/** A heartbeat read at a known wall time (e.g. `performance.now()` around a `pmemsave`). */
export interface HeartbeatSample {
  wallMs: number;
  heartbeat: Heartbeat;
}

export interface StoppedTime {
  /** Wall time between the samples. */
  wallMs: number;
  /** Guest TSC time between the samples. */
  guestMs: number;
  /** Loop turns of the guest between the samples (0: it never ran). */
  counterDelta: number;
  /** Wall time the TSC did not advance (a TSC that is held while the VM is stopped, as under TCG). */
  hiddenMs: number;
  /**
   * Time the guest saw itself stopped: TSC jumps between two of its loop turns (KVM keeps the TSC
   * running while stopped). A stall is counted whole when the guest runs again, so one that began
   * before `before` can make this exceed `wallMs` by up to the guest's largest gap.
   */
  stalledMs: number;
  /** `hiddenMs + stalledMs`: how long the guest did not run. */
  stoppedMs: number;
  /**
   * The longest single stall between the samples (heartbeat version 2): the longest stop the guest
   * saw, where `stalledMs` sums every stall (a vCPU starved by the host counts too). Taken from the
   * guest's stall windows the samples fall in, so a stall that ended up to one window (2^27 TSC
   * ticks, ~50 ms) before `before` may count. Undefined for version 1, or when the samples are
   * further apart than the guest's window history.
   */
  longestStallMs?: number;
}

/** TSC frequency from two samples taken while the guest ran. */
export function tscHzBetween(before: HeartbeatSample, after: HeartbeatSample): number {
  const wall = after.wallMs - before.wallMs;
  if (!(wall > 0)) throw new RangeError(`tscHzBetween: wallMs must increase, got ${before.wallMs} then ${after.wallMs}`);
  return (Number(after.heartbeat.tsc - before.heartbeat.tsc) * 1000) / wall;
}

/**
 * How long the guest was stopped between two heartbeat samples. `tscHz` defaults to the
 * guest's `tsc_khz`; pass one measured with {@link tscHzBetween} when the guest had none.
 */
export function stoppedTime(before: HeartbeatSample, after: HeartbeatSample, opts: { tscHz?: number } = {}): StoppedTime {
  const tscHz = opts.tscHz ?? before.heartbeat.tscKhz * 1000;
  if (!(tscHz > 0)) throw new RangeError('stoppedTime: tscHz must be > 0 (the guest had no tsc_khz; measure it with tscHzBetween)');
  const wallMs = after.wallMs - before.wallMs;
  const guestMs = (Number(after.heartbeat.tsc - before.heartbeat.tsc) * 1000) / tscHz;
  const stalledMs = (Number(after.heartbeat.stalledTsc - before.heartbeat.stalledTsc) * 1000) / tscHz;
  const hiddenMs = Math.max(0, wallMs - guestMs);
  const counterDelta = (after.heartbeat.counter - before.heartbeat.counter) >>> 0;
  const longest = longestStallTsc(before.heartbeat, after.heartbeat);
  return {
    wallMs,
    guestMs,
    counterDelta,
    hiddenMs,
    stalledMs,
    stoppedMs: hiddenMs + stalledMs,
    ...(longest === undefined ? {} : { longestStallMs: (Number(longest) * 1000) / tscHz }),
  };
}

/** The longest stall in `after`'s stall windows from the one of `before.tsc` to the one of `after.tsc`. */
function longestStallTsc(before: Heartbeat, after: Heartbeat): bigint | undefined {
  const sw = after.stallWindows;
  if (!sw || sw.slots === 0 || sw.shift >= 64) return undefined;
  const shift = BigInt(sw.shift);
  const first = Number((before.tsc >> shift) & 0xffffffffn);
  const windows = (after.tsc >> shift) - (before.tsc >> shift);
  // The slot of the first window is reused `slots` windows later: beyond that the history is gone.
  if (windows < 0n || windows >= BigInt(sw.slots)) return undefined;
  const span = Number(windows);
  let longest = 0n;
  for (const x of sw.windows) if ((x.window - first) >>> 0 <= span && x.longestTsc > longest) longest = x.longestTsc;
  return longest;
}

/** {@link stoppedTime}'s `stoppedMs`. */
export function stoppedMs(before: HeartbeatSample, after: HeartbeatSample, opts: { tscHz?: number } = {}): number {
  return stoppedTime(before, after, opts).stoppedMs;
}
