/**
 * The test guest's memory layout and page format, shared with `infra/guest/guest.c`
 * (change both together).
 */
export const PAGE_SIZE = 4096;
/** Guest-physical address of the heartbeat page. */
export const HEARTBEAT_ADDR = 0x1ff000;
/** Guest-physical address of the first data page. */
export const DATA_START = 0x200000;
/** "VMSP", little-endian, in word 0 of every written data page. */
export const PAGE_MAGIC = 0x50534d56;
/** "VMHB", little-endian, in word 0 of the heartbeat page. */
export const HEARTBEAT_MAGIC = 0x42484d56;

/** Word offsets in the heartbeat page. */
export const HB = {
  magic: 0,
  version: 1,
  cursor: 2,
  counter: 3,
  tscLo: 4,
  tscHi: 5,
  firstPfn: 6,
  npages: 7,
  rate: 8,
  share: 9,
  seed: 10,
  tscKhz: 11,
  stallLo: 12,
  stallHi: 13,
  maxGapLo: 14,
  maxGapHi: 15,
  stallThreshold: 16,
  bootTscLo: 17,
  bootTscHi: 18,
  stallCount: 19,
  ramTop: 20,
  /** Version 2: a stall window is 2^winShift TSC ticks. */
  winShift: 21,
  /** Version 2: number of stall-window slots from word {@link HB_WINDOWS}. */
  winSlots: 22,
} as const;

/**
 * Word offset of the stall windows (version 2): `winSlots` slots of 4 words, for the window
 * `w = tsc >> winShift` at slot `w % winSlots`: w, the stalls that ended in it, the longest of
 * them (TSC ticks, lo and hi). A slot is valid when its stall count is not 0.
 */
export const HB_WINDOWS = 64;

function mix(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

function fnv(h: number, w: number): number {
  return Math.imul(h ^ w, 16777619) >>> 0;
}

/** The first word of the page's xorshift32 stream state, as the guest seeds it. */
function pageSeed(seed: number, pfn: number, generation: number): number {
  const x = mix((seed ^ mix((Math.imul(pfn, 0x9e3779b1) ^ mix(Math.imul(generation, 0x85ebca77) >>> 0)) >>> 0)) >>> 0);
  return x === 0 ? 1 : x;
}

/** The checksum (word 3) of the page at `offset`: FNV-1a over its words 0..2 and 4..1023. */
export function pageChecksum(view: DataView, offset = 0): number {
  let h = 2166136261;
  for (let i = 0; i < PAGE_SIZE / 4; i++) if (i !== 3) h = fnv(h, view.getUint32(offset + i * 4, true));
  return h;
}

/** The page the guest writes at page frame `pfn` in `generation` (for tests and tools). */
export function makePage(pfn: number, generation: number, seed: number): Uint8Array {
  const page = new Uint8Array(PAGE_SIZE);
  const view = new DataView(page.buffer);
  let x = pageSeed(seed, pfn, generation);
  for (let i = 4; i < PAGE_SIZE / 4; i++) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    view.setUint32(i * 4, x, true);
  }
  view.setUint32(0, PAGE_MAGIC, true);
  view.setUint32(4, pfn, true);
  view.setUint32(8, generation, true);
  view.setUint32(12, pageChecksum(view), true);
  return page;
}
