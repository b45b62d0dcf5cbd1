import { describe, expect, it } from 'vitest';
import { loadConfig } from './config.ts';

describe('loadConfig', () => {
  it('binds to localhost with no token and runs the projection by default', () => {
    expect(loadConfig({})).toMatchObject({
      bus: { servers: 'nats://127.0.0.1:4222', name: 'dashboard' },
      redisUrl: 'redis://127.0.0.1:6379',
      redisPrefix: 'vmsave',
      host: '127.0.0.1',
      port: 8080,
      token: undefined,
      project: true,
    });
  });

  it('reads every variable, an empty one counting as unset', () => {
    const c = loadConfig({
      NATS_URL: 'nats://a:4222,nats://b:4222',
      REDIS_URL: 'redis://r:6380/2',
      VMSAVE_DASHBOARD_HOST: '0.0.0.0',
      VMSAVE_DASHBOARD_PORT: '9000',
      VMSAVE_DASHBOARD_TOKEN: 'a-long-enough-token',
      VMSAVE_REDIS_PREFIX: 'staging',
      VMSAVE_DASHBOARD_PROJECT: 'false',
      NATS_USER: '',
    });
    expect(c).toMatchObject({ host: '0.0.0.0', port: 9000, token: 'a-long-enough-token', redisPrefix: 'staging', project: false, redisUrl: 'redis://r:6380/2' });
    expect(c.bus.servers).toBe('nats://a:4222,nats://b:4222');
    expect(c.bus.user).toBeUndefined();
  });

  it('names the variable at fault', () => {
    expect(() => loadConfig({ VMSAVE_DASHBOARD_PORT: 'eighty' })).toThrow(/VMSAVE_DASHBOARD_PORT/);
    expect(() => loadConfig({ VMSAVE_DASHBOARD_PORT: '70000' })).toThrow(/VMSAVE_DASHBOARD_PORT/);
    expect(() => loadConfig({ VMSAVE_DASHBOARD_TOKEN: 'short' })).toThrow(/VMSAVE_DASHBOARD_TOKEN: at least 16/);
    expect(() => loadConfig({ VMSAVE_DASHBOARD_PROJECT: 'maybe' })).toThrow(/VMSAVE_DASHBOARD_PROJECT/);
    expect(() => loadConfig({ VMSAVE_REDIS_PREFIX: 'a b' })).toThrow(/VMSAVE_REDIS_PREFIX/);
  });

  it('serves its metrics on 127.0.0.1:9467 and links Grafana and every service’s /metrics by default', () => {
    const c = loadConfig({});
    expect(c.metrics).toEqual({ VMSAVE_METRICS_HOST: '127.0.0.1', VMSAVE_METRICS_PORT: 9467 });
    expect(c.links.grafana).toBe('http://127.0.0.1:3000/d/vmsave');
    expect(c.links.metrics.map((l) => `${l.name}=${l.url}`)).toEqual([
      'scheduler=http://127.0.0.1:9464/metrics',
      'executor=http://127.0.0.1:9465/metrics',
      'verifier=http://127.0.0.1:9466/metrics',
      'dashboard=http://127.0.0.1:9467/metrics',
    ]);
    const d = loadConfig({ VMSAVE_GRAFANA_URL: 'none', VMSAVE_METRICS_LINKS: 'executor-a=http://a:9465/metrics, executor-b=http://b:9465/metrics' });
    expect(d.links).toEqual({
      grafana: undefined,
      metrics: [
        { name: 'executor-a', url: 'http://a:9465/metrics' },
        { name: 'executor-b', url: 'http://b:9465/metrics' },
      ],
    });
    expect(loadConfig({ VMSAVE_METRICS_LINKS: 'none' }).links.metrics).toEqual([]);
    expect(() => loadConfig({ VMSAVE_METRICS_LINKS: 'scheduler' })).toThrow(/VMSAVE_METRICS_LINKS: "scheduler" is not name=http/);
    expect(() => loadConfig({ VMSAVE_GRAFANA_URL: 'grafana' })).toThrow(/VMSAVE_GRAFANA_URL/);
    expect(() => loadConfig({ VMSAVE_METRICS_PORT: '-1' })).toThrow(/VMSAVE_METRICS_PORT: a port from 0/);
  });
});
