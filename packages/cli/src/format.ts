/** Pure text formatting for the terminal: sizes, rates, durations, tables, progress bars. */

const KiB = 1024;
const MiB = KiB * 1024;
const GiB = MiB * 1024;

export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return '?';
  if (n >= GiB) return `${(n / GiB).toFixed(2)} GiB`;
  if (n >= MiB) return `${(n / MiB).toFixed(1)} MiB`;
  if (n >= KiB) return `${(n / KiB).toFixed(1)} KiB`;
  return `${n} B`;
}

export function fmtRate(bytesPerSec: number): string {
  return `${(bytesPerSec / GiB).toFixed(2)} GiB/s`;
}

export function fmtDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '--:--';
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const mmss = `${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}`;
  return h > 0 ? `${h}:${mmss}` : mmss;
}

export function fmtSeconds(ms: number | undefined): string {
  return ms === undefined ? '-' : (ms / 1000).toFixed(2);
}

/** A plain text table: a header row, a rule, then rows; columns padded to their widest cell. */
export function table(header: string[], rows: string[][], opts: { right?: number[] } = {}): string {
  const all = [header, ...rows];
  const w = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const right = new Set(opts.right ?? []);
  const line = (r: string[]) => r.map((c, i) => (right.has(i) ? (c ?? '').padStart(w[i]!) : (c ?? '').padEnd(w[i]!))).join('  ').trimEnd();
  return [line(header), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n') + '\n';
}

export interface ProgressView {
  label: string;
  totalBytes: number;
  doneBytes: number;
  bytesPerSec: number;
  /** Estimated time left; computed from the rate when absent. */
  etaMs?: number;
}

/** One progress line: `label [#####.....]  42%  1.2 GiB / 4.0 GiB  1.50 GiB/s  ETA 00:02`. */
export function progressLine(p: ProgressView, width = 30): string {
  const frac = p.totalBytes > 0 ? Math.min(1, Math.max(0, p.doneBytes / p.totalBytes)) : 0;
  const filled = Math.round(frac * width);
  const bar = '#'.repeat(filled) + '.'.repeat(width - filled);
  const eta = p.etaMs ?? (p.bytesPerSec > 0 ? ((p.totalBytes - p.doneBytes) / p.bytesPerSec) * 1000 : NaN);
  return `${p.label} [${bar}] ${String(Math.floor(frac * 100)).padStart(3)}%  ${fmtBytes(p.doneBytes)} / ${fmtBytes(p.totalBytes)}  ${fmtRate(p.bytesPerSec)}  ETA ${fmtDuration(eta)}`;
}

/**
 * Draws one progress line on a TTY stream, in place, at most every `everyMs`; does nothing
 * when the stream is not a TTY (scripts and logs get no escape codes).
 */
export class ProgressBar {
  private last = 0;
  private drawn = false;
  constructor(private readonly out: NodeJS.WriteStream, private readonly everyMs = 100) {}

  get enabled(): boolean {
    return this.out.isTTY === true;
  }

  update(p: ProgressView, force = false): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (!force && now - this.last < this.everyMs) return;
    this.last = now;
    const cols = this.out.columns || 100;
    this.out.write(`\r\x1b[2K${progressLine(p, Math.max(10, Math.min(30, cols - 70))).slice(0, cols - 1)}`);
    this.drawn = true;
  }

  /** Erase the line (before printing something else). */
  clear(): void {
    if (this.enabled && this.drawn) this.out.write('\r\x1b[2K');
    this.drawn = false;
  }
}
