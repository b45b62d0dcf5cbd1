/** The throughput chart: the fleet's live transfer rate and completed saves' averages (uPlot, bundled). */
import uPlot from 'uplot';
import { $ } from './dom.ts';
import type { CompletedPoint, ThroughputAnswer, ThroughputPoint } from './types.ts';

const GiB = 1024 ** 3;

const chart: { u: uPlot | null; live: ThroughputPoint[]; completed: CompletedPoint[]; windowS: number } = { u: null, live: [], completed: [], windowS: 3600 };

function chartData(): uPlot.AlignedData {
  const cutoff = Date.now() / 1000 - chart.windowS;
  const points = new Map<number, [number | null, number | null]>();
  for (const p of chart.live) if (p.t >= cutoff) points.set(p.t, [p.bytesPerSec / GiB, null]);
  for (const c of chart.completed) {
    if (c.t < cutoff) continue;
    const e = points.get(c.t) ?? [null, null];
    e[1] = Math.max(e[1] ?? 0, c.bytesPerSec / GiB);
    points.set(c.t, e);
  }
  const xs = [...points.keys()].sort((a, b) => a - b);
  return [xs, xs.map((t) => points.get(t)![0]), xs.map((t) => points.get(t)![1])];
}

export function initChart({ live, completed }: ThroughputAnswer): void {
  chart.live = live;
  chart.completed = completed;
  const el = $('#chart');
  const gib = (_u: uPlot, v: number | null) => (v == null ? '—' : `${v.toFixed(2)} GiB/s`);
  const u = new uPlot(
    {
      width: Math.max(300, el.clientWidth),
      height: 220,
      scales: {
        // At least the last ten minutes, so a fresh dashboard's axis reads in minutes, not milliseconds.
        x: {
          time: true,
          range: (_u, min, max) => {
            const now = Date.now() / 1000;
            return [Math.min(min ?? now, now - 600), Math.max(max ?? now, now)];
          },
        },
        y: { range: (_u, _min, max) => [0, Math.max(0.5, (max ?? 0) * 1.1)] },
      },
      series: [
        {},
        { label: 'fleet (live)', stroke: '#2563eb', fill: 'rgba(37,99,235,0.08)', width: 1.5, value: gib },
        { label: 'completed saves', stroke: '#7c3aed', width: 0, paths: () => null, points: { show: true, size: 7, fill: '#7c3aed' }, value: gib },
      ],
      axes: [{}, { label: 'GiB/s', values: (_u, vals) => vals.map((v) => v.toFixed(1)) }],
    },
    chartData(),
    el,
  );
  chart.u = u;
  window.addEventListener('resize', () => u.setSize({ width: Math.max(300, el.clientWidth), height: 220 }));
}

export function chartAddLive(point: ThroughputPoint): void {
  chart.live.push(point);
  if (chart.live.length > chart.windowS) chart.live.splice(0, chart.live.length - chart.windowS);
  chart.u?.setData(chartData());
}

export function chartAddCompleted(point: CompletedPoint): void {
  chart.completed.push(point);
}
