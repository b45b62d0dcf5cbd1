import { describe, expect, it } from 'vitest';
import { dirtyRegions, fmtInt, fmtSummary, gibPerSec, markdownTable, median, parseArgs, positiveInt, rates, ratio, summarize, GiB } from './stats.ts';
import { mainTable, ratios, spliceSection, BEGIN, END, type RawSample, type Results, type VmsaveSample } from './report.ts';
import { selectModes } from './modes.ts';

describe('median and summaries', () => {
  it('takes the middle of an odd count and the mean of the middle two of an even count', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });
  it('ignores missing and non-finite values, and has no median of nothing', () => {
    expect(median([undefined, 5, Number.NaN, 1, Infinity])).toBe(3);
    expect(median([])).toBeUndefined();
    expect(summarize([undefined])).toBeUndefined();
  });
  it('summarizes with min, max and count', () => {
    expect(summarize([2, 9, 4])).toEqual({ median: 4, min: 2, max: 9, n: 3 });
  });
  it('prints median (min–max), or one value when there is one sample or no spread', () => {
    expect(fmtSummary(summarize([1.234, 1.5, 2]))).toBe('1.50 (1.23–2.00)');
    expect(fmtSummary(summarize([0.1234]))).toBe('0.123');
    expect(fmtSummary(summarize([2, 2]))).toBe('2.00');
    expect(fmtSummary(undefined)).toBe('—');
  });
});

describe('ratios and rates', () => {
  it('divides, and refuses a missing or non-positive denominator', () => {
    expect(ratio(3, 2)).toBe(1.5);
    expect(ratio(3, 0)).toBeUndefined();
    expect(ratio(undefined, 2)).toBeUndefined();
  });
  it('computes GiB/s per sample so the rate has its own range', () => {
    expect(gibPerSec(2 * GiB, 4)).toBe(0.5);
    expect(gibPerSec(GiB, 0)).toBeUndefined();
    expect(rates([GiB, GiB], [1, 2])).toEqual([1, 0.5]);
  });
  it('formats integers with separators', () => {
    expect(fmtInt(4301340432)).toBe('4,301,340,432');
  });
});

describe('markdown', () => {
  it('builds a table with right-aligned numbers and escaped pipes', () => {
    expect(markdownTable(['a', 'b'], [['x|y', '1']])).toBe('| a | b |\n| --- | ---: |\n| x\\|y | 1 |');
  });
  it('replaces only the generated section of an existing document', () => {
    const doc = `# T\n\nintro\n\n${BEGIN}\nold\n${END}\n\nanalysis\n`;
    expect(spliceSection(doc, 'new', '# X')).toBe(`# T\n\nintro\n\n${BEGIN}\nnew\n${END}\n\nanalysis\n`);
    expect(spliceSection(undefined, 'new', '# X')).toBe(`# X\n\n${BEGIN}\nnew\n${END}\n`);
  });
});

describe('arguments', () => {
  it('parses --name value and --name=value, and rejects unknown options', () => {
    expect(parseArgs(['--ram', '1024', '--reps=1', '--keep'], ['ram', 'reps', 'keep'])).toEqual({ ram: '1024', reps: '1', keep: 'true' });
    expect(() => parseArgs(['--rma', '1'], ['ram'])).toThrow(/unknown option --rma/);
    expect(() => positiveInt('0', 'reps', 3)).toThrow(/--reps must be a positive integer/);
    expect(positiveInt(undefined, 'reps', 3)).toBe(3);
  });
  it('selects modes by id and names unknown ones', () => {
    expect(selectModes('legacy,sparse-8').map((m) => m.id)).toEqual(['legacy', 'sparse-8']);
    expect(selectModes(undefined)).toHaveLength(7);
    expect(() => selectModes('nope')).toThrow(/unknown mode/);
  });
});

describe('dirty regions of a q35 guest', () => {
  it('fills RAM above 4 GiB first, then low RAM after the first 16 MiB, in chunks', () => {
    const r = dirtyRegions(4096, 3584);
    expect(r.reduce((n, [, mib]) => n + mib, 0)).toBe(3584);
    expect(r[0]).toEqual([4 * GiB, 512]);
    expect(r.every(([, mib]) => mib <= 512)).toBe(true);
    const low = r.filter(([a]) => a < 4 * GiB);
    expect(low[0]![0]).toBe(16 * 1024 * 1024);
    expect(Math.max(...low.map(([a, mib]) => a + mib * 1024 * 1024))).toBeLessThanOrEqual((2048 - 64) * 1024 * 1024);
  });
  it('keeps a small VM in low RAM and refuses what does not fit', () => {
    expect(dirtyRegions(1024, 896).every(([a]) => a < GiB)).toBe(true);
    expect(() => dirtyRegions(1024, 1000)).toThrow(/cannot place/);
  });
});

describe('the main table', () => {
  const v = (saveS: number, restoreS: number): VmsaveSample => ({
    state: 'dirty',
    mode: 'legacy',
    rep: 0,
    saveS,
    saveExecutorS: saveS - 0.05,
    bytes: 4 * GiB,
    blocks: (2 * GiB) / 512,
    restoreS,
    restoreExecutorS: restoreS - 0.05,
    cacheDropped: true,
    save: {},
    restore: {},
  });
  const raw = (saveSyncS: number, restoreS: number): RawSample => ({
    state: 'dirty',
    mode: 'legacy',
    rep: 0,
    saveS: saveSyncS - 0.1,
    saveSyncS,
    migrateS: saveSyncS - 0.2,
    syncS: 0.1,
    bytes: 4 * GiB,
    blocks: (2 * GiB) / 512,
    restoreLaunchS: 0.1,
    restoreMigrateS: restoreS - 0.1,
    restoreS,
    cacheDropped: true,
    save: {},
    restore: {},
  });
  const results = (): Results => ({
    startedAt: '2026-01-01T00:00:00Z',
    command: 'npm run bench',
    ramMiB: 4096,
    dirtyMiB: 3584,
    reps: 3,
    machine: { cpus: 2, cpuModel: 'x', ramGiB: 24, kernel: 'k', os: 'o', disk: 'vda', filesystem: 'ext4', qemu: 'q', node: 'n', imageDirFs: 'ext4' },
    imageDirNote: '',
    dropCachesPermitted: true,
    disk: [{ directWrite: 2 * GiB, directRead: GiB, coldBufferedRead: 2 * GiB, bytes: 2 * GiB, blockSize: '4 MiB' }],
    modes: selectModes('legacy'),
    vmsave: [v(2, 2), v(2.2, 2.4), v(1.8, 2.2)],
    raw: [raw(2, 2), raw(2, 2), raw(2.1, 2.1)],
    failures: [],
    notes: [],
  });
  it('uses medians of each path for the ratios (save against raw with fdatasync)', () => {
    const r = results();
    const q = ratios({ mode: r.modes[0]!, vmsave: r.vmsave, raw: r.raw });
    expect(q.save).toBeCloseTo(2 / 2, 6);
    expect(q.restore).toBeCloseTo(2.2 / 2, 6);
    expect(q.saveNoSync).toBeCloseTo(2 / 1.9, 6);
  });
  it('prints medians with ranges, rates, ratios and the share of the disk', () => {
    const row = mainTable(results(), 'dirty').split('\n')[2]!;
    // 2 GiB allocated in 2 s = 1 GiB/s = 50 % of 2 GiB/s write; restore 2 GiB in 2.2 s vs 1 GiB/s read.
    expect(row).toBe('| legacy | 2.00 (1.80–2.20) | 2.20 (2.00–2.40) | 4,294,967,296 | 4,194,304 | 1.00 (0.91–1.11) | 0.91 (0.83–1.00) | 1.00 | 1.10 | 50 % | 91 % |');
  });
});
