/** Terminal-only output: plain text tables and an in-place progress bar (the formatters are `@vmsave/jobs`'). */
import { progressLine, type ProgressView } from '@vmsave/jobs';

/** A plain text table: a header row, a rule, then rows; columns padded to their widest cell. */
export function table(header: string[], rows: string[][], opts: { right?: number[] } = {}): string {
  const all = [header, ...rows];
  const w = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const right = new Set(opts.right ?? []);
  const line = (r: string[]) =>
    r
      .map((c, i) => (right.has(i) ? (c ?? '').padStart(w[i]!) : (c ?? '').padEnd(w[i]!)))
      .join('  ')
      .trimEnd();
  return `${[line(header), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n')}\n`;
}

/**
 * Draws one progress line on a TTY stream, in place, at most every `everyMs`; does nothing
 * when the stream is not a TTY (scripts and logs get no escape codes).
 */
export class ProgressBar {
  private last = 0;
  private drawn = false;
  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly everyMs = 100,
  ) {}

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
