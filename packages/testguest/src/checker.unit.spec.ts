import { describe, expect, it } from 'vitest';
import { analyseDump, parseHeartbeat, stoppedMs, stoppedTime, tscHzBetween, type Heartbeat, type HeartbeatSample } from './checker.ts';
import { DATA_START, HB, HB_WINDOWS, HEARTBEAT_ADDR, HEARTBEAT_MAGIC, PAGE_SIZE, makePage } from './layout.ts';

const FIRST_PFN = DATA_START / PAGE_SIZE;

/** A dump as the guest leaves it after `cursor` page writes (write `cursor` not started). */
function dump(npages: number, cursor: number, seed = 7, extra = 0): Uint8Array {
  const buf = new Uint8Array(DATA_START + (npages + extra) * PAGE_SIZE);
  const hb = new DataView(buf.buffer, HEARTBEAT_ADDR, PAGE_SIZE);
  const set = (w: number, v: number) => hb.setUint32(w * 4, v, true);
  set(HB.magic, HEARTBEAT_MAGIC);
  set(HB.version, 1);
  set(HB.cursor, cursor);
  set(HB.counter, cursor * 3);
  set(HB.firstPfn, FIRST_PFN);
  set(HB.npages, npages);
  set(HB.seed, seed);
  set(HB.tscKhz, 1000);
  for (let s = Math.max(0, cursor - npages); s < cursor; s++) writePage(buf, s % npages, Math.floor(s / npages) + 1, seed);
  return buf;
}

function writePage(buf: Uint8Array, index: number, generation: number, seed = 7, pfn = FIRST_PFN + index): void {
  buf.set(makePage(pfn, generation, seed), (FIRST_PFN + index) * PAGE_SIZE);
}

function flip(buf: Uint8Array, offset: number): void {
  buf[offset] = (buf[offset] ?? 0) ^ 0xff;
}

describe('analyseDump', () => {
  it('given the first pass under way, pages before the cursor are gen 1 and the rest unwritten: consistent', () => {
    const a = analyseDump(dump(64, 10));
    expect(a).toMatchObject({ consistent: true, pages: 64, written: 10, unwritten: 54, generations: { 1: 10 }, boundary: 10, inFlight: 'old', issueCount: 0 });
    expect(a.heartbeat).toMatchObject({ generation: 1, position: 10 });
  });

  it('given a third pass, pages are gen 3 before the boundary and gen 2 after it: consistent', () => {
    const a = analyseDump(dump(64, 2 * 64 + 20));
    expect(a).toMatchObject({ consistent: true, written: 64, unwritten: 0, generations: { 3: 20, 2: 44 }, boundary: 20, inFlight: 'old' });
  });

  it('accepts the page under the cursor finished (new) or torn, and reads a dump with a base', () => {
    const buf = dump(64, 64 + 5);
    writePage(buf, 5, 2);
    expect(analyseDump(buf)).toMatchObject({ consistent: true, inFlight: 'new', boundary: 6 });
    flip(buf, (FIRST_PFN + 5) * PAGE_SIZE + 100);
    expect(analyseDump(buf)).toMatchObject({ consistent: true, inFlight: 'torn', boundary: 5 });
    expect(analyseDump(buf.subarray(0x100000), { base: 0x100000 })).toMatchObject({ consistent: true, inFlight: 'torn' });
  });

  it('a torn page away from the cursor is inconsistent', () => {
    const buf = dump(64, 64 + 30);
    flip(buf, (FIRST_PFN + 3) * PAGE_SIZE + 4000);
    const a = analyseDump(buf);
    expect(a.consistent).toBe(false);
    expect(a.issues).toEqual([{ pfn: FIRST_PFN + 3, problem: 'torn', generation: 2, expected: 2 }]);
  });

  it('a stale page behind the boundary is inconsistent', () => {
    const buf = dump(64, 64 + 30);
    writePage(buf, 12, 1);
    expect(analyseDump(buf)).toMatchObject({ consistent: false, issueCount: 1, issues: [{ pfn: FIRST_PFN + 12, problem: 'stale', generation: 1, expected: 2 }] });
  });

  it('a page ahead of the boundary, or written where nothing was yet, is inconsistent', () => {
    const buf = dump(64, 64 + 30);
    writePage(buf, 40, 2);
    expect(analyseDump(buf).issues).toEqual([{ pfn: FIRST_PFN + 40, problem: 'ahead', generation: 2, expected: 1 }]);
    const first = dump(64, 10);
    writePage(first, 20, 1);
    expect(analyseDump(first).issues).toEqual([{ pfn: FIRST_PFN + 20, problem: 'ahead', generation: 1, expected: 0 }]);
  });

  it('a page at the wrong place (index is not its position) is inconsistent', () => {
    const buf = dump(64, 64 + 30);
    writePage(buf, 7, 2, 7, FIRST_PFN + 8);
    expect(analyseDump(buf).issues).toEqual([{ pfn: FIRST_PFN + 7, problem: 'wrong-index' }]);
  });

  it('a page missing where one was written (zeroed) is inconsistent; issues are capped but counted', () => {
    const buf = dump(64, 64 + 30);
    buf.fill(0, (FIRST_PFN + 2) * PAGE_SIZE, (FIRST_PFN + 6) * PAGE_SIZE);
    const a = analyseDump(buf, { maxIssues: 2 });
    expect(a).toMatchObject({ consistent: false, issueCount: 4, unwritten: 4 });
    expect(a.issues).toEqual([
      { pfn: FIRST_PFN + 2, problem: 'missing', expected: 2 },
      { pfn: FIRST_PFN + 3, problem: 'missing', expected: 2 },
    ]);
  });

  it('says why when there is no heartbeat or the dump is too short', () => {
    expect(analyseDump(new Uint8Array(DATA_START))).toMatchObject({ consistent: false, reason: expect.stringMatching(/no heartbeat/) });
    expect(analyseDump(new Uint8Array(4096))).toMatchObject({ consistent: false, reason: expect.stringMatching(/does not hold the heartbeat/) });
    expect(analyseDump(dump(64, 10).subarray(0, DATA_START + 10 * PAGE_SIZE))).toMatchObject({ consistent: false, reason: expect.stringMatching(/outside the dump/) });
  });
});

function sample(wallMs: number, tsc: bigint, counter: number, stalledTsc = 0n): HeartbeatSample {
  const buf = dump(4, 1);
  const hb = parseHeartbeat(buf.subarray(HEARTBEAT_ADDR, HEARTBEAT_ADDR + PAGE_SIZE)) as Heartbeat;
  return { wallMs, heartbeat: { ...hb, tsc, counter, stalledTsc } };
}

describe('stoppedTime', () => {
  // tsc_khz=1000 in the synthetic heartbeat: 1 MHz, 1000 ticks per ms.
  it('a guest that ran all along was not stopped', () => {
    expect(stoppedTime(sample(1000, 5_000_000n, 10), sample(1500, 5_500_000n, 900))).toEqual({
      wallMs: 500,
      guestMs: 500,
      counterDelta: 890,
      hiddenMs: 0,
      stalledMs: 0,
      stoppedMs: 0,
    });
  });

  it('a TSC held while stopped (TCG) shows as wall time the TSC did not advance', () => {
    expect(stoppedMs(sample(0, 1_000_000n, 1), sample(1000, 1_700_000n, 2))).toBe(300);
  });

  it('a TSC that ran while stopped (KVM) shows as the stall the guest saw', () => {
    const t = stoppedTime(sample(0, 0n, 1, 1000n), sample(1000, 1_000_000n, 2, 251_000n));
    expect(t).toMatchObject({ hiddenMs: 0, stalledMs: 250, stoppedMs: 250 });
  });

  it('measures the TSC frequency from two running samples, and refuses a missing one', () => {
    expect(tscHzBetween(sample(0, 0n, 1), sample(500, 1_300_000_000n, 2))).toBe(2_600_000_000);
    expect(() => tscHzBetween(sample(5, 0n, 1), sample(5, 1n, 2))).toThrow(/wallMs must increase/);
    const a = sample(0, 0n, 1);
    a.heartbeat.tscKhz = 0;
    expect(() => stoppedTime(a, sample(1, 1n, 2))).toThrow(/tscHz must be > 0/);
  });
});

describe('the longest stall (heartbeat version 2)', () => {
  // Windows of 2^10 TSC ticks (1.024 ms at the synthetic 1 MHz), 240 slots.
  function v2(stalls: Array<{ endTsc: bigint; gapTsc: bigint }>): Heartbeat {
    const buf = dump(4, 1);
    const hb = new DataView(buf.buffer, HEARTBEAT_ADDR, PAGE_SIZE);
    const set = (w: number, v: number) => hb.setUint32(w * 4, v, true);
    set(HB.version, 2);
    set(HB.winShift, 10);
    set(HB.winSlots, 240);
    for (const { endTsc, gapTsc } of stalls) {
      const w = Number(endTsc >> 10n);
      const o = HB_WINDOWS + (w % 240) * 4;
      if (hb.getUint32(o * 4, true) !== w) for (let i = 0; i < 4; i++) set(o + i, 0);
      set(o, w);
      set(o + 1, hb.getUint32((o + 1) * 4, true) + 1);
      const longest = (BigInt(hb.getUint32((o + 3) * 4, true)) << 32n) | BigInt(hb.getUint32((o + 2) * 4, true));
      if (gapTsc > longest) {
        set(o + 2, Number(gapTsc & 0xffffffffn));
        set(o + 3, Number(gapTsc >> 32n));
      }
    }
    return parseHeartbeat(buf.subarray(HEARTBEAT_ADDR, HEARTBEAT_ADDR + PAGE_SIZE)) as Heartbeat;
  }
  const at = (wallMs: number, tsc: bigint, hb: Heartbeat): HeartbeatSample => ({ wallMs, heartbeat: { ...hb, tsc } });

  it('given stalls before, within and after the samples, the longest within them is the stop the guest saw', () => {
    const hb = v2([
      { endTsc: 10_000n, gapTsc: 90_000n }, // before the first sample's window
      { endTsc: 60_000n, gapTsc: 2_000n },
      { endTsc: 80_000n, gapTsc: 30_000n },
      { endTsc: 80_500n, gapTsc: 5_000n }, // the same window: the longest stays
      { endTsc: 120_000n, gapTsc: 4_000n },
    ]);
    expect(hb.stallWindows).toMatchObject({ shift: 10, slots: 240 });
    expect(hb.stallWindows?.windows.find((x) => x.window === Math.floor(80_000 / 1024))).toEqual({ window: 78, stalls: 2, longestTsc: 30_000n });
    const t = stoppedTime(at(0, 50_000n, hb), at(100, 150_000n, { ...hb, stalledTsc: 41_000n }));
    expect(t.longestStallMs).toBe(30);
    expect(t.stalledMs).toBe(41);
  });

  it('is undefined for a version 1 heartbeat and when the samples outlast the window history', () => {
    expect(stoppedTime(sample(0, 0n, 1), sample(100, 100_000n, 2)).longestStallMs).toBeUndefined();
    const hb = v2([{ endTsc: 60_000n, gapTsc: 2_000n }]);
    expect(stoppedTime(at(0, 50_000n, hb), at(300, 50_000n + 240n * 1024n, hb)).longestStallMs).toBeUndefined();
    expect(stoppedTime(at(0, 50_000n, hb), at(300, 50_000n + 239n * 1024n, hb)).longestStallMs).toBe(2);
  });
});
