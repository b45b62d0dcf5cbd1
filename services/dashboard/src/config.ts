import { z } from 'zod';
import { BusEnv, busOptions, parseEnv, type BusOptions } from '@vmsave/bus';
import { DEFAULT_METRICS_PORTS, metricsEnv, type MetricsSettings } from '@vmsave/metrics';

const bool = z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => v === 'true' || v === '1' || v === 'yes');

/** Environment variables the dashboard reads: the shared bus ones plus its own. */
export const DashboardEnv = BusEnv.extend({
  /** Address to bind: localhost unless configured otherwise. */
  VMSAVE_DASHBOARD_HOST: z.string().min(1).default('127.0.0.1'),
  VMSAVE_DASHBOARD_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  /** When set, every request needs `Authorization: Bearer <token>` or `?token=<token>`. */
  VMSAVE_DASHBOARD_TOKEN: z.string().min(16, 'at least 16 characters').optional(),
  /**
   * Run the read-model projection in this process. Two projectors on one prefix race
   * (both skip applied sequences, but may interleave writes of one job): run exactly one.
   */
  VMSAVE_DASHBOARD_PROJECT: bool.default(true),
  /** `/metrics` of the dashboard itself (its own port, not the page's): VMSAVE_METRICS_HOST (127.0.0.1), VMSAVE_METRICS_PORT (9467; 0 = off). */
  ...metricsEnv('dashboard'),
  /** The page header's link to Grafana (`none`: no link). */
  VMSAVE_GRAFANA_URL: z.union([z.literal('none'), z.url({ error: 'an http(s) URL, or none' })]).default('http://127.0.0.1:3000/d/vmsave'),
  /** The page header's links to each service's `/metrics`: `name=url,…` (`none`: no links); default: every service's default port on 127.0.0.1. */
  VMSAVE_METRICS_LINKS: z
    .string()
    .default(
      Object.entries(DEFAULT_METRICS_PORTS)
        .map(([name, port]) => `${name}=http://127.0.0.1:${port}/metrics`)
        .join(','),
    )
    .transform((v, ctx) => {
      if (v.trim() === 'none') return [];
      const out: { name: string; url: string }[] = [];
      for (const raw of v.split(',')) {
        const part = raw.trim();
        if (!part) continue;
        const i = part.indexOf('=');
        const name = part.slice(0, i).trim();
        const url = part.slice(i + 1).trim();
        if (i <= 0 || !/^https?:\/\/\S+$/.test(url)) ctx.addIssue({ code: 'custom', message: `"${part}" is not name=http(s)://…` });
        else out.push({ name, url });
      }
      return out;
    }),
});

export interface DashboardConfig {
  bus: BusOptions;
  redisUrl: string;
  redisPrefix: string;
  host: string;
  port: number;
  token?: string;
  project: boolean;
  metrics: MetricsSettings;
  /** What the page header links to. */
  links: { grafana?: string; metrics: { name: string; url: string }[] };
}

/** Parse the dashboard's configuration once; the error names each bad variable and its rule. */
export function loadConfig(env: Record<string, string | undefined> = process.env): DashboardConfig {
  // An empty variable means "not set".
  const present = Object.fromEntries(Object.keys(DashboardEnv.shape).map((k) => [k, env[k] === '' ? undefined : env[k]]));
  const e = parseEnv(DashboardEnv, present, 'dashboard');
  return {
    bus: busOptions(e, 'dashboard'),
    redisUrl: e.REDIS_URL,
    redisPrefix: e.VMSAVE_REDIS_PREFIX,
    host: e.VMSAVE_DASHBOARD_HOST,
    port: e.VMSAVE_DASHBOARD_PORT,
    token: e.VMSAVE_DASHBOARD_TOKEN,
    project: e.VMSAVE_DASHBOARD_PROJECT,
    metrics: { VMSAVE_METRICS_HOST: e.VMSAVE_METRICS_HOST, VMSAVE_METRICS_PORT: e.VMSAVE_METRICS_PORT },
    links: { grafana: e.VMSAVE_GRAFANA_URL === 'none' ? undefined : e.VMSAVE_GRAFANA_URL, metrics: e.VMSAVE_METRICS_LINKS },
  };
}
