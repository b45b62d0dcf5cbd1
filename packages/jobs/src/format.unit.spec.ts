import { describe, expect, it } from 'vitest';
import { fmtBytes, fmtDuration, fmtElapsed, fmtRate, fmtSeconds, progressLine } from './format.ts';

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
