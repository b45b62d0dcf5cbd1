/**
 * Pure number crunching for the benchmark: medians, ranges, ratios, rates and the Markdown
 * tables. No I/O here, so it is unit-tested on its own.
 */

export const GiB = 1024 ** 3;

/** Median of the finite values (mean of the two middle ones for an even count); undefined when none. */
export function median(values: readonly (number | undefined)[]): number | undefined {
  const v = finite(values).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

/** Median, min and max of the finite values; undefined when there are none. */
export function summarize(values: readonly (number | undefined)[]): Summary | undefined {
  const v = finite(values);
  const m = median(v);
  if (m === undefined) return undefined;
  return { median: m, min: Math.min(...v), max: Math.max(...v), n: v.length };
}

function finite(values: readonly (number | undefined)[]): number[] {
  return values.filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
}

/** a / b, undefined when either is missing or b is not positive. */
export function ratio(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b <= 0) return undefined;
  return a / b;
}

/** GiB per second for `bytes` moved in `seconds`; undefined for a zero or missing time. */
export function gibPerSec(bytes: number | undefined, seconds: number | undefined): number | undefined {
  if (bytes === undefined || seconds === undefined || !(seconds > 0)) return undefined;
  return bytes / GiB / seconds;
}

/** Per-sample rates, so that the rate column has its own min–max (not the rate of the median time). */
export function rates(bytes: readonly (number | undefined)[], seconds: readonly (number | undefined)[]): (number | undefined)[] {
  return seconds.map((s, i) => gibPerSec(bytes[i], s));
}

/** Significant-looking fixed digits: 3 decimals below 1, 2 below 10, 1 above. */
export function fmtNum(x: number | undefined, digits?: number): string {
  if (x === undefined || !Number.isFinite(x)) return '—';
  const d = digits ?? (Math.abs(x) < 1 ? 3 : Math.abs(x) < 10 ? 2 : 1);
  return x.toFixed(d);
}

/** `1.23 (1.10–1.40)`, or just the value when there was one sample or min = max. */
export function fmtSummary(s: Summary | undefined, digits?: number): string {
  if (!s) return '—';
  const m = fmtNum(s.median, digits);
  if (s.n < 2) return m;
  const lo = fmtNum(s.min, digits);
  const hi = fmtNum(s.max, digits);
  return lo === hi ? m : `${m} (${lo}–${hi})`;
}

/** Integer with thousands separators (the seed's table prints sizes that way). */
export function fmtInt(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return '—';
  return Math.round(x).toLocaleString('en-US');
}

export function fmtPct(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return '—';
  return `${Math.round(x * 100)} %`;
}

/** A Markdown table; cells are escaped for `|`. */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[], align?: readonly ('l' | 'r')[]): string {
  const esc = (s: string): string => s.replaceAll('|', '\\|');
  const sep = header.map((_, i) => ((align?.[i] ?? (i === 0 ? 'l' : 'r')) === 'r' ? '---:' : '---'));
  return [header, sep, ...rows].map((r) => `| ${r.map((c) => (r === sep ? c : esc(c ?? ''))).join(' | ')} |`).join('\n');
}

/** Parses `--ram 1024 --reps=1 --modes a,b` style arguments; unknown flags are errors. */
export function parseArgs(argv: readonly string[], known: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') continue;
    const m = /^--([a-z][a-z-]*)(?:=(.*))?$/.exec(a);
    if (!m) throw new Error(`unexpected argument ${JSON.stringify(a)}`);
    const name = m[1]!;
    if (!known.includes(name)) throw new Error(`unknown option --${name} (known: ${known.map((k) => `--${k}`).join(', ')})`);
    let value = m[2];
    if (value === undefined) {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) value = 'true';
      else {
        value = next;
        i++;
      }
    }
    out[name] = value;
  }
  return out;
}

/** A positive integer option, with the name in the error. */
export function positiveInt(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${JSON.stringify(value)}`);
  return n;
}

/**
 * Guest-physical regions to fill with random data on a q35 machine with `ramMiB` of RAM, as
 * [address, MiB] pairs of at most `chunkMiB` each (QEMU's loader reads a file with one read(),
 * which Linux caps just under 2 GiB). q35 puts RAM below 2 GiB (or all of it when it is below
 * 2816 MiB) and the rest above 4 GiB. The first 16 MiB and the last 64 MiB of low RAM stay
 * free for the firmware. Fills the high part first, then low RAM, until `targetMiB`.
 */
export function dirtyRegions(ramMiB: number, targetMiB: number, chunkMiB = 512): Array<[number, number]> {
  const MiB = 1024 * 1024;
  const lowMiB = ramMiB >= 2816 ? 2048 : ramMiB;
  const highMiB = ramMiB - lowMiB;
  const spans: Array<[number, number]> = [];
  let left = targetMiB;
  const take = (startMiB: number, sizeMiB: number, baseAddr: number): void => {
    let at = startMiB;
    const end = startMiB + Math.min(sizeMiB, left);
    while (at < end) {
      const n = Math.min(chunkMiB, end - at);
      spans.push([baseAddr + at * MiB, n]);
      at += n;
      left -= n;
    }
  };
  if (highMiB > 0) take(0, highMiB, 4 * 1024 * MiB);
  const lowUsable = Math.max(0, lowMiB - 16 - 64);
  if (left > 0) take(16, lowUsable, 0);
  if (left > 0) throw new Error(`cannot place ${targetMiB} MiB of data in ${ramMiB} MiB of RAM (at most ${targetMiB - left} MiB)`);
  return spans;
}
