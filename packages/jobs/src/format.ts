/** Pure text formatting of sizes, rates, durations and progress, for the CLI and the dashboard alike. */

const KiB = 1024;
const MiB = KiB * 1024;
const GiB = MiB * 1024;

/** `512 B`, `1.5 KiB`, `64.0 MiB`, `4.00 GiB`; `?` when not a number. */
export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return '?';
  if (n >= GiB) return `${(n / GiB).toFixed(2)} GiB`;
  if (n >= MiB) return `${(n / MiB).toFixed(1)} MiB`;
  if (n >= KiB) return `${(n / KiB).toFixed(1)} KiB`;
  return `${n} B`;
}

/** A transfer rate in GiB/s with two decimals. */
export function fmtRate(bytesPerSec: number): string {
  return `${(bytesPerSec / GiB).toFixed(2)} GiB/s`;
}

/** A clock-style duration, `mm:ss` or `h:mm:ss` (for an ETA); `--:--` when unknown. */
export function fmtDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '--:--';
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const mmss = `${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}`;
  return h > 0 ? `${h}:${mmss}` : mmss;
}

/** An elapsed time the way people say it: `850 ms`, `2.6 s`, `3m 05s`, `1h 02m`; `—` when unknown. */
export function fmtElapsed(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Seconds with two decimals (`2.60`), `-` when unknown. */
export function fmtSeconds(ms: number | undefined): string {
  return ms === undefined ? '-' : (ms / 1000).toFixed(2);
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
