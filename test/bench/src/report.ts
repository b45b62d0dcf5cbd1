/**
 * From samples to the Markdown section and the SVG chart. Pure (strings in, strings out).
 */
import type { CpuReport, DiskBandwidth, DiskDelta, Machine } from './sys.ts';
import type { Mode } from './modes.ts';
import { fmtInt, fmtNum, fmtPct, fmtSummary, markdownTable, median, rates, ratio, summarize, GiB } from './stats.ts';

export type VmState = 'idle' | 'dirty';

export interface OpDiag {
  cpu?: CpuReport;
  disk?: DiskDelta;
}

/** One event of a job as the client saw it: `atMs` is the event's own timestamp, `seenMs` its arrival, both from publishing. */
export interface TimelineEntry {
  type: string;
  atMs: number;
  seenMs: number;
}

/** One save + restore of one VM state in one mode through vmsave (the bus). */
export interface VmsaveSample {
  state: VmState;
  mode: string;
  rep: number;
  /** Publish → SaveCompleted as the client saw it. */
  saveS: number;
  /** The executor's own durationMs from SaveCompleted. */
  saveExecutorS: number;
  /** Publish → ImageVerified/ImageRejected (the verifier reads the image after the save). */
  verifiedS?: number;
  verified?: boolean;
  bytes: number;
  blocks: number;
  /** Publish → RestoreCompleted as the client saw it. */
  restoreS: number;
  /** The executor's durationMs from RestoreCompleted (gate + QEMU start + migration + cont). */
  restoreExecutorS: number;
  /** verifyImage on this image with a cold page cache, timed by the benchmark (the restore gate's cost). */
  gateColdS?: number;
  cacheDropped: boolean;
  save: OpDiag;
  restore: OpDiag;
  saveTimeline?: TimelineEntry[];
  restoreTimeline?: TimelineEntry[];
}

export interface RawSample {
  state: VmState;
  mode: string;
  rep: number;
  saveS: number;
  saveSyncS: number;
  migrateS: number;
  syncS: number;
  bytes: number;
  blocks: number;
  restoreLaunchS: number;
  restoreMigrateS: number;
  restoreS: number;
  cacheDropped: boolean;
  save: OpDiag;
  restore: OpDiag;
}

export interface Results {
  startedAt: string;
  finishedAt?: string;
  durationS?: number;
  command: string;
  ramMiB: number;
  dirtyMiB: number;
  reps: number;
  machine: Machine;
  imageDirNote: string;
  dropCachesPermitted: boolean;
  disk: DiskBandwidth[];
  modes: Mode[];
  vmsave: VmsaveSample[];
  raw: RawSample[];
  /** Samples that failed (not in the medians), with the reason. */
  failures: Array<{ state: VmState; mode: string; rep: number; path: 'vmsave' | 'raw'; error: string }>;
  notes: string[];
}

/** Bytes a save actually wrote (allocated blocks), the basis of every GiB/s here. */
export const dataBytes = (blocks: number): number => blocks * 512;

export interface Row {
  mode: Mode;
  vmsave: VmsaveSample[];
  raw: RawSample[];
}

export function rowsOf(r: Results, state: VmState): Row[] {
  return r.modes.map((mode) => ({
    mode,
    vmsave: r.vmsave.filter((s) => s.state === state && s.mode === mode.id),
    raw: r.raw.filter((s) => s.state === state && s.mode === mode.id),
  }));
}

export interface DiskLimits {
  write: number | undefined;
  read: number | undefined;
  coldRead: number | undefined;
}

export function diskLimits(disk: DiskBandwidth[]): DiskLimits {
  return {
    write: median(disk.map((d) => d.directWrite)),
    read: median(disk.map((d) => d.directRead)),
    coldRead: median(disk.map((d) => d.coldBufferedRead)),
  };
}

/** Save ratio: vmsave (client-seen) / raw QEMU with fdatasync; restore: vmsave / raw including QEMU start. */
export function ratios(row: Row): { save: number | undefined; saveNoSync: number | undefined; restore: number | undefined; restoreMigrationOnly: number | undefined } {
  const v = (f: (s: VmsaveSample) => number) => median(row.vmsave.map(f));
  const w = (f: (s: RawSample) => number) => median(row.raw.map(f));
  return {
    save: ratio(
      v((s) => s.saveS),
      w((s) => s.saveSyncS),
    ),
    saveNoSync: ratio(
      v((s) => s.saveS),
      w((s) => s.saveS),
    ),
    restore: ratio(
      v((s) => s.restoreS),
      w((s) => s.restoreS),
    ),
    restoreMigrationOnly: ratio(
      v((s) => s.restoreS),
      w((s) => s.restoreMigrateS),
    ),
  };
}

/** The main table of one VM state: vmsave's numbers, its ratio to raw QEMU and its share of the disk. */
export function mainTable(r: Results, state: VmState): string {
  const lim = diskLimits(r.disk);
  const rows = rowsOf(r, state).map((row) => {
    const { mode, vmsave: v } = row;
    if (v.length === 0) {
      const raw = row.raw;
      const bytes = raw.map((s) => dataBytes(s.blocks));
      const sv = rates(
        bytes,
        raw.map((s) => s.saveSyncS),
      );
      const rs = rates(
        bytes,
        raw.map((s) => s.restoreMigrateS),
      );
      return [
        mode.pipeDirect ? `${mode.label} ‡` : `${mode.label} (every vmsave sample failed; raw QEMU shown)`,
        `(raw ${fmtSummary(summarize(raw.map((s) => s.saveSyncS)))})`,
        `(raw ${fmtSummary(summarize(raw.map((s) => s.restoreS)))})`,
        fmtInt(median(raw.map((s) => s.bytes))),
        fmtInt(median(raw.map((s) => s.blocks))),
        `(raw ${fmtSummary(summarize(sv), 2)})`,
        `(raw ${fmtSummary(summarize(rs), 2)})`,
        '—',
        '—',
        `(raw ${fmtPct(ratio(median(sv), lim.write !== undefined ? lim.write / GiB : undefined))})`,
        `(raw ${fmtPct(ratio(median(rs), lim.read !== undefined ? lim.read / GiB : undefined))})`,
      ];
    }
    const bytes = v.map((s) => dataBytes(s.blocks));
    const saveRates = rates(
      bytes,
      v.map((s) => s.saveS),
    );
    const restoreRates = rates(
      bytes,
      v.map((s) => s.restoreS),
    );
    const q = ratios(row);
    return [
      mode.label,
      fmtSummary(summarize(v.map((s) => s.saveS))),
      fmtSummary(summarize(v.map((s) => s.restoreS))),
      fmtInt(median(v.map((s) => s.bytes))),
      fmtInt(median(v.map((s) => s.blocks))),
      fmtSummary(summarize(saveRates), 2),
      fmtSummary(summarize(restoreRates), 2),
      fmtNum(q.save, 2),
      fmtNum(q.restore, 2),
      fmtPct(ratio(median(saveRates), lim.write !== undefined ? lim.write / GiB : undefined)),
      fmtPct(ratio(median(restoreRates), lim.read !== undefined ? lim.read / GiB : undefined)),
    ];
  });
  return markdownTable(
    [
      'mode',
      'save s',
      'restore s',
      'size (bytes)',
      'blocks',
      'save GiB/s',
      'restore GiB/s',
      'save ratio vmsave/raw',
      'restore ratio vmsave/raw',
      'save / disk write',
      'restore / disk read',
    ],
    rows,
  );
}

/** The anchor: raw QEMU over QMP, and where vmsave's time goes. */
export function anchorTable(r: Results, state: VmState): string {
  const rows = rowsOf(r, state).map((row) => {
    const { mode, vmsave: v, raw } = row;
    const q = ratios(row);
    return [
      mode.label,
      fmtSummary(summarize(raw.map((s) => s.saveS))),
      fmtSummary(summarize(raw.map((s) => s.saveSyncS))),
      fmtSummary(summarize(v.map((s) => s.saveExecutorS))),
      fmtNum(q.saveNoSync, 2),
      fmtSummary(summarize(raw.map((s) => s.restoreMigrateS))),
      fmtSummary(summarize(raw.map((s) => s.restoreS))),
      fmtSummary(summarize(v.map((s) => s.restoreExecutorS))),
      fmtSummary(summarize(v.map((s) => s.gateColdS))),
      fmtSummary(summarize(v.map((s) => s.verifiedS))),
    ];
  });
  return markdownTable(
    [
      'mode',
      'raw save s',
      'raw save + fdatasync s',
      'vmsave executor save s',
      'vmsave / raw without sync',
      'raw restore s (migration only)',
      'raw restore s (+ QEMU start)',
      'vmsave executor restore s',
      'restore gate (verifyImage, cold) s',
      'vmsave publish → verified s',
    ],
    rows,
  );
}

/** Where the time goes, measured: QEMU CPU, its busiest thread, disk utilisation and traffic (medians). */
export function diagTable(r: Results, state: VmState): string {
  const out: string[][] = [];
  for (const row of rowsOf(r, state)) {
    const entries: Array<[string, 'save' | 'restore', OpDiag[], number[]]> = [
      ['vmsave', 'save', row.vmsave.map((s) => s.save), row.vmsave.map((s) => s.saveS)],
      ['raw', 'save', row.raw.map((s) => s.save), row.raw.map((s) => s.saveSyncS)],
      ['vmsave', 'restore', row.vmsave.map((s) => s.restore), row.vmsave.map((s) => s.restoreS)],
      ['raw', 'restore', row.raw.map((s) => s.restore), row.raw.map((s) => s.restoreS)],
    ];
    for (const [path, op, diags, secs] of entries) {
      if (diags.length === 0) continue;
      const cpu = median(diags.map((d) => d.cpu?.processS));
      const share = median(diags.map((d) => d.cpu?.busiestThreadShare));
      const busiest = diags.find((d) => d.cpu?.busiestThread)?.cpu?.busiestThread ?? '—';
      const util = median(diags.map((d) => d.disk?.util));
      const wr = median(diags.map((d) => d.disk?.writeBytes));
      const rd = median(diags.map((d) => d.disk?.readBytes));
      const t = median(secs);
      const top =
        diags[0]?.cpu?.threads
          .slice(0, 3)
          .map((x) => `${x.name} ${fmtNum(x.cpuS, 2)}`)
          .join(', ') ?? '—';
      out.push([
        row.mode.label,
        path,
        op,
        fmtNum(t),
        fmtNum(cpu, 2),
        fmtPct(ratio(cpu, t)),
        `${busiest} ${fmtPct(share)}`,
        top,
        fmtPct(util),
        fmtNum(wr !== undefined ? wr / GiB : undefined, 2),
        fmtNum(rd !== undefined ? rd / GiB : undefined, 2),
      ]);
    }
  }
  return markdownTable(
    [
      'mode',
      'path',
      'op',
      'wall s',
      'QEMU CPU s',
      'QEMU CPU / wall',
      'busiest thread (CPU / wall)',
      'top threads (CPU s, rep 1)',
      'disk busy',
      'disk GiB written',
      'disk GiB read',
    ],
    out,
  );
}

/** Milliseconds between steps of a job, from the events' own timestamps (same clock: one machine). */
export function steps(tl: TimelineEntry[] | undefined, kind: 'Save' | 'Restore'): Record<string, number> | undefined {
  if (!tl) return undefined;
  const first = (t: string) => tl.find((e) => e.type === `${kind}${t}`);
  const last = (t: string) => [...tl].reverse().find((e) => e.type === `${kind}${t}`);
  const req = first('Requested');
  const sch = last('Scheduled');
  const st = first('Started');
  const done = first('Completed');
  if (!req || !sch || !st || !done) return undefined;
  return {
    admit: req.atMs,
    schedule: sch.atMs - req.atMs,
    start: st.atMs - sch.atMs,
    run: done.atMs - st.atMs,
    deliver: done.seenMs - done.atMs,
  };
}

/** Where vmsave's time goes between publishing and the client seeing the completion (medians, ms). */
export function stepsTable(r: Results, state: VmState): string {
  const rows: string[][] = [];
  for (const row of rowsOf(r, state)) {
    if (row.vmsave.length === 0) continue;
    for (const kind of ['Save', 'Restore'] as const) {
      const st = row.vmsave.map((s) => steps(kind === 'Save' ? s.saveTimeline : s.restoreTimeline, kind));
      const m = (k: string) => fmtNum(median(st.map((x) => x?.[k])), 0);
      const total = median(row.vmsave.map((s) => (kind === 'Save' ? s.saveS : s.restoreS)));
      const exec = median(row.vmsave.map((s) => (kind === 'Save' ? s.saveExecutorS : s.restoreExecutorS)));
      rows.push([
        row.mode.label,
        kind.toLowerCase(),
        m('admit'),
        m('schedule'),
        m('start'),
        m('run'),
        m('deliver'),
        fmtNum(total !== undefined ? total * 1000 : undefined, 0),
        fmtNum(exec !== undefined ? exec * 1000 : undefined, 0),
      ]);
    }
  }
  return markdownTable(
    ['mode', 'op', 'publish → Requested', 'Requested → Scheduled', 'Scheduled → Started', 'Started → Completed', 'Completed → client', 'client total', 'executor durationMs'],
    rows,
  );
}

export function diskTable(r: Results): string {
  const rows = r.disk.map((d, i) => [
    `#${i + 1}`,
    fmtNum(d.directWrite / GiB, 2),
    fmtNum(d.directRead / GiB, 2),
    fmtNum(d.coldBufferedRead !== undefined ? d.coldBufferedRead / GiB : undefined, 2),
    fmtNum(d.bytes / GiB, 1),
  ]);
  const lim = diskLimits(r.disk);
  rows.push([
    'median',
    fmtNum(lim.write !== undefined ? lim.write / GiB : undefined, 2),
    fmtNum(lim.read !== undefined ? lim.read / GiB : undefined, 2),
    fmtNum(lim.coldRead !== undefined ? lim.coldRead / GiB : undefined, 2),
    '',
  ]);
  return markdownTable(['dd run', 'O_DIRECT write GiB/s', 'O_DIRECT read GiB/s', 'cold buffered read GiB/s', 'GiB'], rows);
}

/** The generated part of docs/benchmarks.md. */
export function renderSection(r: Results): string {
  const m = r.machine;
  const lines: string[] = [];
  lines.push(`Generated by \`${r.command}\` on ${r.startedAt.slice(0, 16).replace('T', ' ')} UTC in ${fmtNum((r.durationS ?? 0) / 60, 1)} min.`);
  lines.push('');
  lines.push(`- Machine: ${m.cpus} × ${m.cpuModel}, ${m.ramGiB} GiB RAM, ${m.os}, kernel ${m.kernel}`);
  lines.push(`- Disk: ${m.disk}; images on ${m.imageDirFs}. ${r.imageDirNote}`);
  lines.push(`- ${m.qemu}; Node ${m.node}; KVM.`);
  lines.push(
    `- VM: q35, 1 vCPU, ${r.ramMiB} MiB RAM, no guest OS (SeaBIOS finds nothing to boot). **idle** = freshly started; **dirty** = ${r.dirtyMiB} MiB (${fmtPct(r.dirtyMiB / r.ramMiB)} of RAM) of random bytes loaded into RAM at start.`,
  );
  lines.push(
    `- ${r.reps} repetition(s) per mode and state; cells are \`median (min–max)\`. Page cache dropped before every restore (\`sync; echo 3 > /proc/sys/vm/drop_caches\`): **${r.dropCachesPermitted ? 'permitted, done' : 'NOT permitted here: restores may read from the page cache'}**.`,
  );
  lines.push(
    '- save s / restore s: vmsave through the bus, from publishing the request to the `SaveCompleted` / `RestoreCompleted` event as the client receives it (restore includes starting QEMU and the verify gate).',
  );
  lines.push('- GiB/s = bytes the image allocates on disk (blocks × 512) ÷ time; "/ disk" divides that by the dd O_DIRECT write (save) or read (restore) bandwidth below.');
  lines.push(
    '- save ratio = vmsave save ÷ raw QEMU save **with** fdatasync (vmsave syncs, QEMU does not); restore ratio = vmsave restore ÷ raw QEMU restore including starting QEMU (a restore needs a QEMU either way). Both without-sync / migration-only figures are in the anchor table.',
  );
  lines.push('- ‡ legacy + direct IO is not offered by vmsave: that row is raw QEMU writing into a pipe drained by `dd oflag=direct` (read back with `dd iflag=direct`).');
  lines.push('');
  lines.push('### Disk limits (dd, 4 MiB blocks, on the image directory)');
  lines.push('');
  lines.push(diskTable(r));
  for (const state of ['dirty', 'idle'] as const) {
    if (!r.vmsave.some((s) => s.state === state) && !r.raw.some((s) => s.state === state)) continue;
    lines.push('');
    lines.push(`### ${state === 'dirty' ? `Dirty VM (${r.dirtyMiB} MiB of random data in ${r.ramMiB} MiB)` : `Idle VM (${r.ramMiB} MiB, freshly started)`}`);
    lines.push('');
    lines.push(mainTable(r, state));
    lines.push('');
    lines.push(`Raw QEMU anchor and vmsave's own timings (${state}):`);
    lines.push('');
    lines.push(anchorTable(r, state));
    lines.push('');
    lines.push(
      `Where vmsave's time goes (${state}; ms, medians; from the events' timestamps — save: Scheduled → Started is the executor taking the work, connecting QMP, pausing and creating the image; Started → Completed is QEMU's migration plus fdatasync and finalize; restore: Scheduled → Started includes the verify gate, Started → Completed is starting QEMU, the migration and cont):`,
    );
    lines.push('');
    lines.push(stepsTable(r, state));
    lines.push('');
    lines.push(`What limits it (${state}; medians; CPU from /proc/PID/task/*/stat of the QEMU, disk from /proc/diskstats over the operation):`);
    lines.push('');
    lines.push(diagTable(r, state));
  }
  if (r.failures.length) {
    lines.push('');
    lines.push(`Failed samples (left out of the medians: the save and restore of that repetition; a fresh VM in the same state replaced the lost one and the run went on):`);
    lines.push('');
    lines.push(
      markdownTable(
        ['state', 'mode', 'rep', 'path', 'error'],
        r.failures.map((f) => [f.state, f.mode, String(f.rep + 1), f.path, f.error.replaceAll('\n', ' ')]),
        ['l', 'l', 'r', 'l', 'l'],
      ),
    );
  }
  if (r.notes.length) {
    lines.push('');
    lines.push('Notes from this run:');
    lines.push('');
    for (const n of r.notes) lines.push(`- ${n}`);
  }
  lines.push('');
  lines.push('![save and restore GiB/s per mode, dirty VM](benchmarks/chart.svg)');
  return lines.join('\n');
}

export const BEGIN = '<!-- bench:begin (generated by npm run bench; edits here are overwritten) -->';
export const END = '<!-- bench:end -->';

/** Puts the generated section between the markers of an existing document (or a new one). */
export function spliceSection(existing: string | undefined, section: string, fallbackIntro: string): string {
  const block = `${BEGIN}\n${section}\n${END}`;
  if (existing) {
    const a = existing.indexOf(BEGIN);
    const b = existing.indexOf(END);
    if (a >= 0 && b > a) return existing.slice(0, a) + block + existing.slice(b + END.length);
  }
  return `${fallbackIntro}\n\n${block}\n`;
}

const escXml = (s: string): string => s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');

/**
 * A grouped horizontal bar chart (SVG): per mode, save and restore GiB/s of vmsave and raw QEMU
 * for one state, with the disk's O_DIRECT write and read bandwidth as dashed lines.
 */
export function renderChart(r: Results, state: VmState = 'dirty'): string {
  const rows = rowsOf(r, state);
  const lim = diskLimits(r.disk);
  const series = [
    {
      name: 'vmsave save',
      color: '#1f77b4',
      get: (row: Row) =>
        median(
          rates(
            row.vmsave.map((s) => dataBytes(s.blocks)),
            row.vmsave.map((s) => s.saveS),
          ),
        ),
    },
    {
      name: 'raw QEMU save (+fdatasync)',
      color: '#9ecae1',
      get: (row: Row) =>
        median(
          rates(
            row.raw.map((s) => dataBytes(s.blocks)),
            row.raw.map((s) => s.saveSyncS),
          ),
        ),
    },
    {
      name: 'vmsave restore',
      color: '#d62728',
      get: (row: Row) =>
        median(
          rates(
            row.vmsave.map((s) => dataBytes(s.blocks)),
            row.vmsave.map((s) => s.restoreS),
          ),
        ),
    },
    {
      name: 'raw QEMU restore (+QEMU start)',
      color: '#fc9272',
      get: (row: Row) =>
        median(
          rates(
            row.raw.map((s) => dataBytes(s.blocks)),
            row.raw.map((s) => s.restoreS),
          ),
        ),
    },
  ];
  const values = rows.map((row) => series.map((s) => s.get(row)));
  const maxV = Math.max(0.1, ...values.flat().filter((x): x is number => x !== undefined), (lim.write ?? 0) / GiB, (lim.read ?? 0) / GiB);
  const scaleMax = Math.ceil(maxV * 4) / 4;
  const left = 330;
  const width = 900;
  const plotW = width - left - 30;
  const barH = 11;
  const groupH = series.length * barH + 14;
  const top = 60;
  const height = top + rows.length * groupH + 60;
  const x = (v: number): number => left + (v / scaleMax) * plotW;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  parts.push(
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${escXml(`Save and restore GiB/s per mode — ${state} VM (${state === 'dirty' ? `${r.dirtyMiB} MiB data in ` : ''}${r.ramMiB} MiB), medians of ${r.reps}`)}</text>`,
  );
  series.forEach((s, i) => {
    const lx = 40 + i * 215;
    parts.push(`<rect x="${lx}" y="32" width="12" height="12" fill="${s.color}"/><text x="${lx + 16}" y="42">${escXml(s.name)}</text>`);
  });
  for (let t = 0; t <= scaleMax + 1e-9; t += scaleMax > 2 ? 0.5 : 0.25) {
    parts.push(`<line x1="${x(t)}" y1="${top - 4}" x2="${x(t)}" y2="${height - 45}" stroke="#eee"/>`);
    parts.push(`<text x="${x(t)}" y="${height - 30}" text-anchor="middle">${t.toFixed(2)}</text>`);
  }
  parts.push(`<text x="${left + plotW / 2}" y="${height - 12}" text-anchor="middle">GiB/s (allocated image bytes ÷ time)</text>`);
  rows.forEach((row, gi) => {
    const gy = top + gi * groupH;
    parts.push(`<text x="${left - 8}" y="${gy + (series.length * barH) / 2 + 4}" text-anchor="end">${escXml(row.mode.label)}</text>`);
    series.forEach((s, si) => {
      const v = values[gi]![si];
      const y = gy + si * barH;
      if (v === undefined) {
        parts.push(`<text x="${left + 4}" y="${y + barH - 2}" font-size="9" fill="#999">n/a</text>`);
        return;
      }
      parts.push(`<rect x="${left}" y="${y}" width="${Math.max(0.5, x(v) - left)}" height="${barH - 1}" fill="${s.color}"/>`);
      parts.push(`<text x="${x(v) + 3}" y="${y + barH - 2}" font-size="9">${v.toFixed(2)}</text>`);
    });
  });
  const limitLine = (v: number | undefined, label: string, color: string, dy: number): void => {
    if (v === undefined) return;
    const lx = x(v / GiB);
    parts.push(`<line x1="${lx}" y1="${top - 6}" x2="${lx}" y2="${height - 45}" stroke="${color}" stroke-dasharray="5,4" stroke-width="1.5"/>`);
    parts.push(`<text x="${lx + 3}" y="${top - 8 + dy}" font-size="10" fill="${color}">${escXml(label)} ${(v / GiB).toFixed(2)}</text>`);
  };
  limitLine(lim.write, 'disk O_DIRECT write', '#1f77b4', 0);
  limitLine(lim.read, 'disk O_DIRECT read', '#d62728', 10);
  parts.push('</svg>');
  return parts.join('\n');
}
