/**
 * The Grafana dashboard (infra/grafana/vmsave.json) is valid and in step with the code: every
 * panel's query names only metrics the services export (the definitions in `METRICS` plus Node's
 * default process metrics), and every vmsave metric is on some panel. The Prometheus scrape
 * config names each service at its default metrics port.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { DEFAULT_METRICS_PORTS, METRICS, ServiceMetrics, metricNames } from '../src/index.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const text = readFileSync(path.join(ROOT, 'infra/grafana/vmsave.json'), 'utf8');

interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: { refId: string; expr: string }[];
}

/** Metric names in a PromQL expression: identifiers that are neither functions, keywords, label names nor inside strings or ranges. */
function metricsIn(expr: string): string[] {
  const noStrings = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""').replace(/\[[^\]]*\]/g, '[]');
  // Label lists of `by (…)` / `without (…)` and label matchers `{…}` name labels, not metrics.
  const noLabels = noStrings.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ').replace(/\{[^}]*\}/g, ' ');
  const keywords = new Set(['sum', 'min', 'max', 'avg', 'count', 'rate', 'irate', 'increase', 'histogram_quantile', 'and', 'or', 'unless', 'bool', 'offset', 'le']);
  const out: string[] = [];
  for (const m of noLabels.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*(?=\s*(\(|\b))/g)) {
    const id = m[0];
    const after = noLabels.slice(m.index! + id.length).trimStart();
    if (keywords.has(id) || after.startsWith('(') || /^\d/.test(id)) continue;
    out.push(id);
  }
  return out;
}

const exported = (() => {
  const m = new ServiceMetrics('executor');
  const defaults = (m.registry.getMetricsAsArray() as { name: string }[]).map((x) => x.name);
  const names = new Set([...metricNames(), ...defaults]);
  // A histogram's series are <name>_bucket, _sum and _count.
  for (const d of Object.values(METRICS)) if (d.type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(d.name + s);
  for (const n of defaults) for (const s of ['_bucket', '_sum', '_count']) names.add(n + s);
  return names;
})();

describe('the Grafana dashboard', () => {
  const dash = JSON.parse(text) as { uid: string; title: string; panels: Panel[]; templating: { list: { name: string; type: string }[] } };
  const panels = dash.panels.filter((p) => p.type !== 'row');

  it('is a dashboard with a uid, a Prometheus data source variable and panels laid out on the 24-column grid', () => {
    expect(dash.uid).toBe('vmsave');
    expect(dash.templating.list).toContainEqual(expect.objectContaining({ name: 'datasource', type: 'datasource' }));
    expect(panels.length).toBeGreaterThan(10);
    expect(new Set(dash.panels.map((p) => p.id)).size).toBe(dash.panels.length);
    for (const p of dash.panels) expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
  });

  it("every panel's query names at least one metric, and only metrics the services export", () => {
    const unknown: string[] = [];
    for (const p of panels) {
      // biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's own variable syntax, not a template string
      expect(p.datasource?.uid, p.title).toBe('${datasource}');
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets!) {
        const names = metricsIn(t.expr);
        expect(names.length, `${p.title}: ${t.expr}`).toBeGreaterThan(0);
        for (const n of names) if (!exported.has(n)) unknown.push(`${p.title}: ${n}`);
      }
    }
    expect(unknown).toEqual([]);
  });

  it('shows every vmsave metric on some panel', () => {
    const used = new Set(panels.flatMap((p) => (p.targets ?? []).flatMap((t) => metricsIn(t.expr))).map((n) => n.replace(/_(bucket|sum|count)$/, '')));
    expect(metricNames().filter((n) => !used.has(n))).toEqual([]);
  });

  it('the name finder reads PromQL as meant', () => {
    expect(metricsIn('histogram_quantile(0.9, sum by (le, format) (rate(vmsave_save_seconds_bucket{format="x y"}[5m])))')).toEqual(['vmsave_save_seconds_bucket']);
    expect(metricsIn('a_bytes / b_bytes')).toEqual(['a_bytes', 'b_bytes']);
  });
});

describe('the Prometheus scrape config', () => {
  const prom = readFileSync(path.join(ROOT, 'infra/prometheus/prometheus.yml'), 'utf8');
  it('scrapes every service at its default metrics port', () => {
    for (const [svc, port] of Object.entries(DEFAULT_METRICS_PORTS)) {
      expect(prom).toMatch(new RegExp(`job_name: ${svc}\\n\\s+static_configs:\\n\\s+- targets: \\["${svc}:${port}"\\]`));
    }
  });
});
