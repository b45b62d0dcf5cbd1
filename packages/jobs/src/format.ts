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

/** What a migration sample says about RAM (QEMU's `query-migrate` `ram`: bytes, and page counts). */
export interface RamProgressInput {
  status: string;
  /** Logical RAM (`ram.total`), zero pages included. */
  total: number;
  /** Dirty bytes not yet sent (`ram.remaining`): pages not scanned yet, zero or not. */
  remaining: number;
  /** Pages written in full (`ram.normal`) and zero pages found (`ram.duplicate`, never written by mapped-ram). */
  normal: number;
  duplicate: number;
  /** `ram.page-size` (4096 when absent). */
  pageSize?: number;
}

/** Progress counted in bytes written to the image: what a bandwidth cap limits and what the disk sees. */
export interface WriteProgress {
  /** Bytes that will have been written when the save is done (estimated until it is). */
  totalBytes: number;
  /** Bytes written so far (`normal` pages × page size). */
  doneBytes: number;
  remainingBytes: number;
  /** Write rate over the last few seconds. */
  bytesPerSec: number;
  etaMs?: number;
}

const MIN_RATE_SPAN_MS = 500;

/**
 * Rate, percentage and ETA of a save from the bytes it writes, not from logical RAM: a VM whose
 * RAM is mostly zero pages writes a fraction of it (QEMU's `mbps` and `ram.total` count them
 * too, so a save capped at 20 MB/s showed 82 MB/s and jumped from 25 % to done). The bytes still
 * to write are estimated as the remaining dirty bytes times the share of non-zero pages among
 * those scanned so far (all of them until any page is scanned); when the scan is over (nothing
 * remains) it is exactly what was written. The rate is the slope of written bytes over
 * `windowMs`. Pure apart from the samples it keeps.
 */
export class WriteProgressEstimator {
  private readonly points: Array<{ t: number; done: number }> = [];

  constructor(private readonly windowMs = 3000) {}

  sample(p: RamProgressInput, nowMs: number): WriteProgress {
    const page = p.pageSize && p.pageSize > 0 ? p.pageSize : 4096;
    const done = p.normal * page;
    const scanned = p.normal + p.duplicate;
    const nonZeroShare = scanned > 0 ? p.normal / scanned : 1;
    const completed = p.status === 'completed';
    const toWrite = completed ? 0 : Math.max(0, p.remaining) * nonZeroShare;
    // Never above the logical RAM left to write, and never below what is written already.
    const totalBytes = Math.max(done, Math.min(done + toWrite, Math.max(0, p.total - p.duplicate * page)));
    this.points.push({ t: nowMs, done });
    while (this.points.length > 2 && this.points[1]!.t <= nowMs - this.windowMs) this.points.shift();
    const first = this.points[0]!;
    const dt = nowMs - first.t;
    // A rate over a few milliseconds is noise (the first pages go out in a burst): wait for half a second of samples.
    const bytesPerSec = dt >= MIN_RATE_SPAN_MS ? Math.max(0, ((done - first.done) * 1000) / dt) : 0;
    const remainingBytes = totalBytes - done;
    const etaMs = completed ? 0 : bytesPerSec > 0 ? (remainingBytes / bytesPerSec) * 1000 : undefined;
    return { totalBytes, doneBytes: done, remainingBytes, bytesPerSec, ...(etaMs !== undefined ? { etaMs } : {}) };
  }
}
