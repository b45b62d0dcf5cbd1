import { describe, expect, it } from 'vitest';
import { fmtBytes, fmtDuration, fmtElapsed, fmtRate, fmtSeconds, progressLine, WriteProgressEstimator } from './format.ts';

describe('formatters', () => {
  it('draws a progress line with bytes, GiB/s and ETA', () => {
    const l = progressLine({ label: 'save', totalBytes: 4 * 2 ** 30, doneBytes: 2 ** 30, bytesPerSec: 2 ** 30 });
    expect(l).toBe(`save [${'#'.repeat(8)}${'.'.repeat(22)}]  25%  1.00 GiB / 4.00 GiB  1.00 GiB/s  ETA 00:03`);
  });
  it('clock durations, elapsed times, seconds', () => {
    expect(fmtDuration(3_725_000)).toBe('1:02:05');
    expect(fmtDuration(NaN)).toBe('--:--');
    expect([fmtElapsed(850), fmtElapsed(2600), fmtElapsed(185_000), fmtElapsed(3_725_000), fmtElapsed(undefined)]).toEqual(['850 ms', '2.6 s', '3m 05s', '1h 02m', '—']);
    expect([fmtSeconds(2600), fmtSeconds(undefined)]).toEqual(['2.60', '-']);
  });
  it('sizes and rates', () => {
    expect([fmtBytes(512), fmtBytes(1536), fmtBytes(64 * 2 ** 20), fmtBytes(4 * 2 ** 30 + 8192), fmtBytes(NaN)]).toEqual(['512 B', '1.5 KiB', '64.0 MiB', '4.00 GiB', '?']);
    expect(fmtRate(1.7 * 2 ** 30)).toBe('1.70 GiB/s');
  });
});

describe('WriteProgressEstimator (bytes written, not logical RAM)', () => {
  /** The case: a 1 GiB guest, a quarter of its pages non-zero, spread evenly; a save capped at 20 MB/s; QEMU's mbps says 82 MB/s. */
  const PAGE = 4096;
  const TOTAL = 1 << 30;
  const RATE = 20e6;
  const pages = TOTAL / PAGE;
  const at = (writtenBytes: number, status = 'active') => {
    const normal = Math.floor(writtenBytes / PAGE);
    const duplicate = Math.min(pages - normal, normal * 3);
    return { status, total: TOTAL, remaining: (pages - normal - duplicate) * PAGE, normal, duplicate, pageSize: PAGE, mbps: 82 * 8 };
  };

  it('a 20 MB/s capped save shows about 20 MB/s, a percentage that follows the scan and an ETA of the time really left', () => {
    const est = new WriteProgressEstimator();
    const written = TOTAL / 4;
    const secs = written / RATE;
    const seen: Array<{ t: number; pct: number; rate: number; eta?: number }> = [];
    for (let t = 0; t <= secs * 1000; t += 250) {
      const w = est.sample(at((RATE * t) / 1000), t);
      seen.push({ t, pct: (w.doneBytes / w.totalBytes) * 100, rate: w.bytesPerSec, eta: w.etaMs });
    }
    const settled = seen.filter((s) => s.t >= 3000);
    for (const s of settled) expect(s.rate / RATE).toBeCloseTo(1, 1);
    // Half-way through the time, half-way through the bar (it used to read 12 %, then jump from 25 % to done).
    const half = seen.find((s) => s.t >= (secs * 1000) / 2)!;
    expect(half.pct).toBeGreaterThan(45);
    expect(half.pct).toBeLessThan(55);
    expect(half.eta! / 1000).toBeCloseTo(secs / 2, 0);
    expect(seen.at(-1)!.pct).toBeGreaterThan(97);
    for (let i = 1; i < seen.length; i++) expect(seen[i]!.pct).toBeGreaterThanOrEqual(seen[i - 1]!.pct - 0.01);
    const done = est.sample(at(written, 'completed'), secs * 1000 + 250);
    expect(done).toMatchObject({ doneBytes: done.totalBytes, remainingBytes: 0, etaMs: 0 });
  });

  it('before any page is scanned it expects the whole RAM, and a restoring QEMU (no ram counters) shows nothing', () => {
    const est = new WriteProgressEstimator();
    expect(est.sample({ status: 'setup', total: TOTAL, remaining: TOTAL, normal: 0, duplicate: 0 }, 0)).toEqual({
      totalBytes: TOTAL,
      doneBytes: 0,
      remainingBytes: TOTAL,
      bytesPerSec: 0,
    });
    expect(new WriteProgressEstimator().sample({ status: 'active', total: 0, remaining: 0, normal: 0, duplicate: 0 }, 0)).toMatchObject({
      totalBytes: 0,
      doneBytes: 0,
      bytesPerSec: 0,
    });
  });
});
