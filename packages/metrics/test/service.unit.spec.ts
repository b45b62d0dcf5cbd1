import net from 'node:net';
import { makeEvent, type JobEvent } from '@vmsave/contracts';
import { describe, expect, it } from 'vitest';
import { JobMetrics, ServiceMetrics, metricsEnv, parseMetrics, sampleValue, serveMetrics } from '../src/index.ts';
import { z } from 'zod';

/** The value of one series in the exposition text, written `name{a="x",b="y"}` (undefined when absent). */
function value(text: string, series: string): number | undefined {
  const m = /^([^{]+)(?:\{(.*)\})?$/.exec(series)!;
  const want = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]));
  const hit = parseMetrics(text).find(
    (s) => s.name === m[1] && Object.keys(s.labels).length === Object.keys(want).length && Object.entries(want).every(([k, v]) => s.labels[k] === v),
  );
  return hit?.value;
}

const quiet = {
  lines: [] as string[],
  info() {},
  error(_o: object, msg: string) {
    quiet.lines.push(msg);
  },
};

const request = { requestId: 'r-1', vm: 'web-1', format: 'sparse', channels: 4, directIo: true, after: 'resume', priority: 'normal' } as never;

describe('ServiceMetrics: what the bus hooks count', () => {
  it('counts published events by type, admissions by outcome and rule, verdicts and their checks', async () => {
    const m = new ServiceMetrics('scheduler');
    m.bus.eventPublished(makeEvent('SaveRequested', 's-1', { request }, { source: 'scheduler' }));
    m.bus.eventPublished(makeEvent('SaveRejected', 's-2', { rule: 'vm-exists', message: 'no such VM' }, { source: 'scheduler' }));
    m.bus.eventPublished(makeEvent('SaveRejected', 's-3', { rule: 'vm-exists', message: 'no such VM' }, { source: 'scheduler' }));
    m.bus.eventPublished(
      makeEvent(
        'ImageVerified',
        's-1',
        {
          imagePath: '/i/x.vmsave',
          checks: [
            { name: 'header.magic', status: 'pass', detail: '' },
            { name: 'sparseness', status: 'warn', detail: '' },
          ],
        },
        { source: 'verifier' },
      ),
    );
    const t = await m.text();
    expect(value(t, 'vmsave_events_published_total{type="SaveRequested",service="scheduler"}')).toBe(1);
    expect(value(t, 'vmsave_events_published_total{type="SaveRejected",service="scheduler"}')).toBe(2);
    expect(value(t, 'vmsave_admissions_total{kind="save",outcome="accepted",rule="none",service="scheduler"}')).toBe(1);
    expect(value(t, 'vmsave_admissions_total{kind="save",outcome="rejected",rule="vm-exists",service="scheduler"}')).toBe(2);
    expect(value(t, 'vmsave_verifications_total{outcome="verified",service="scheduler"}')).toBe(1);
    expect(value(t, 'vmsave_verification_checks_total{check="sparseness",status="warn",service="scheduler"}')).toBe(1);
  });

  it('counts redeliveries, dead letters (stored or lost) and connection changes', async () => {
    const m = new ServiceMetrics('executor');
    const before = await m.text();
    expect(value(before, 'vmsave_bus_connected{service="executor"}')).toBe(1);
    expect(value(before, 'vmsave_bus_reconnects_total{service="executor"}')).toBe(0);
    m.bus.redelivered('VMSAVE_WORK', 'executor-a');
    m.bus.redelivered('VMSAVE_WORK', 'executor-a');
    m.bus.deadLettered('executor-a', true);
    m.bus.deadLettered('executor-a', false);
    m.bus.connectionStatus('disconnect');
    let t = await m.text();
    expect(value(t, 'vmsave_bus_redeliveries_total{stream="VMSAVE_WORK",consumer="executor-a",service="executor"}')).toBe(2);
    expect(value(t, 'vmsave_bus_dead_letters_total{stored="true",service="executor"}')).toBe(1);
    expect(value(t, 'vmsave_bus_dead_letters_total{stored="false",service="executor"}')).toBe(1);
    expect(value(t, 'vmsave_bus_disconnects_total{service="executor"}')).toBe(1);
    expect(value(t, 'vmsave_bus_connected{service="executor"}')).toBe(0);
    m.bus.connectionStatus('reconnecting');
    m.bus.connectionStatus('reconnect');
    t = await m.text();
    expect(value(t, 'vmsave_bus_reconnects_total{service="executor"}')).toBe(1);
    expect(value(t, 'vmsave_bus_connected{service="executor"}')).toBe(1);
  });

  it('includes the default process metrics', async () => {
    const t = await new ServiceMetrics('verifier').text();
    expect(t).toMatch(/^process_cpu_seconds_total\{service="verifier"\} /m);
    expect(t).toMatch(/^nodejs_eventloop_lag_p99_seconds\{service="verifier"\} /m);
    expect(t).toMatch(/^process_resident_memory_bytes\{service="verifier"\} /m);
  });
});

describe('JobMetrics: saves and restores from the executor’s events', () => {
  const started = makeEvent(
    'SaveStarted',
    's-1',
    { host: 'h', attempt: 1, fencingToken: 1, imagePath: '/i/x.vmsave', format: 'sparse', channels: 4, directIo: true, wasRunning: true, ramBytes: 1 << 28 },
    { source: 'executor@h' },
  );
  const completed = makeEvent(
    'SaveCompleted',
    's-1',
    {
      host: 'h',
      attempt: 1,
      fencingToken: 1,
      imagePath: '/i/x.vmsave',
      format: 'sparse',
      bytes: 1 << 28,
      blocks: 131072,
      durationMs: 1500,
      throughputBytesPerSec: 1,
      vmState: 'running',
      qemu: {},
    },
    { source: 'executor@h' },
  );

  it('a completed save: +1 completed, one duration and one size sample labelled by the attempt’s channels and direct IO', async () => {
    const m = new ServiceMetrics('executor');
    const jobs = new JobMetrics(m);
    await jobs.observe(completed, [makeEvent('SaveRequested', 's-1', { request }, { source: 'scheduler' }), started, completed]);
    const t = await m.text();
    const l = 'format="sparse",channels="4",direct_io="true",service="executor"';
    expect(value(t, 'vmsave_saves_total{format="sparse",outcome="completed",service="executor"}')).toBe(1);
    expect(value(t, `vmsave_save_seconds_count{${l}}`)).toBe(1);
    expect(value(t, `vmsave_save_seconds_sum{${l}}`)).toBe(1.5);
    expect(value(t, `vmsave_save_seconds_bucket{le="2",${l}}`)).toBe(1);
    expect(value(t, `vmsave_save_seconds_bucket{le="1",${l}}`)).toBe(0);
    expect(value(t, `vmsave_save_bytes_sum{${l}}`)).toBe(131072 * 512);
  });

  it('a failed save counts as failed with the format of its attempt; a restore reads the image’s traits', async () => {
    const m = new ServiceMetrics('executor');
    const jobs = new JobMetrics(m, async (p) => (p === '/i/x.vmsave' ? { format: 'sparse', channels: 2, directIo: false, allocatedBytes: 4096 } : undefined));
    const failed = makeEvent(
      'SaveFailed',
      's-1',
      { attempt: 1, stage: 'migrate', reason: 'x', code: 'qemu-migration-failed', retryable: true, vmResumed: true },
      { source: 'executor@h' },
    );
    await jobs.observe(failed, [started, failed]);
    const rs = makeEvent(
      'RestoreStarted',
      'r-1',
      { host: 'h', attempt: 1, fencingToken: 1, imagePath: '/i/x.vmsave', format: 'sparse', vm: { name: 'web-1' } as never },
      { source: 'executor@h' },
    );
    const rc = makeEvent(
      'RestoreCompleted',
      'r-1',
      { host: 'h', attempt: 1, fencingToken: 1, imagePath: '/i/x.vmsave', vm: 'web-1', durationMs: 800, vmState: 'running' },
      { source: 'executor@h' },
    );
    await jobs.observe(rc, [rs, rc]);
    const t = await m.text();
    expect(value(t, 'vmsave_saves_total{format="sparse",outcome="failed",service="executor"}')).toBe(1);
    expect(value(t, 'vmsave_restores_total{format="sparse",outcome="completed",service="executor"}')).toBe(1);
    expect(value(t, 'vmsave_restore_seconds_count{format="sparse",channels="2",direct_io="false",service="executor"}')).toBe(1);
    expect(value(t, 'vmsave_restore_bytes_sum{format="sparse",channels="2",direct_io="false",service="executor"}')).toBe(4096);
  });

  it('never throws, even when the image cannot be read', async () => {
    const m = new ServiceMetrics('executor');
    const jobs = new JobMetrics(m, async () => {
      throw new Error('ENOENT');
    });
    const rc = makeEvent(
      'RestoreCompleted',
      'r-1',
      { host: 'h', attempt: 1, fencingToken: 1, imagePath: '/gone', vm: 'web-1', durationMs: 800, vmState: 'running' },
      { source: 'executor@h' },
    );
    await expect(jobs.observe(rc, [rc] as JobEvent[])).resolves.toBeUndefined();
  });
});

describe('the /metrics endpoint', () => {
  it('serves the registry on /metrics, 404 elsewhere; port 0 is off', async () => {
    const m = new ServiceMetrics('dashboard');
    expect(await serveMetrics(m.registry, { host: '127.0.0.1', port: 0, log: quiet })).toBeUndefined();
    const port = await freePort();
    const srv = await m.serve({ VMSAVE_METRICS_HOST: '127.0.0.1', VMSAVE_METRICS_PORT: port }, quiet);
    expect(srv?.port).toBe(port);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/metrics`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      expect(await res.text()).toMatch(/^vmsave_bus_connected\{service="dashboard"\} 1$/m);
      expect((await fetch(`http://127.0.0.1:${port}/`)).status).toBe(404);
      expect((await fetch(`http://127.0.0.1:${port}/metrics`, { method: 'POST' })).status).toBe(405);
    } finally {
      await m.close();
    }
  });

  it('a port already in use is logged and leaves the service running without metrics', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as net.AddressInfo).port;
    quiet.lines.length = 0;
    try {
      expect(await serveMetrics(new ServiceMetrics('scheduler').registry, { host: '127.0.0.1', port, log: quiet })).toBeUndefined();
      expect(quiet.lines.join('\n')).toMatch(new RegExp(`metrics endpoint NOT serving: cannot listen on 127\\.0\\.0\\.1:${port}`));
    } finally {
      blocker.close();
    }
  });
});

describe('parseMetrics / sampleValue', () => {
  it('reads samples with labels in any order, escapes, and sums matching series', () => {
    const t = '# HELP x y\n# TYPE x counter\nx{a="1",b="q\\"z"} 2\nx{b="w",a="1"} 3\ny 7\n';
    expect(parseMetrics(t)).toEqual([
      { name: 'x', labels: { a: '1', b: 'q"z' }, value: 2 },
      { name: 'x', labels: { b: 'w', a: '1' }, value: 3 },
      { name: 'y', labels: {}, value: 7 },
    ]);
    expect(sampleValue(t, 'x', { a: '1' })).toBe(5);
    expect(sampleValue(t, 'x', { b: 'w' })).toBe(3);
    expect(sampleValue(t, 'nope')).toBe(0);
  });
});

describe('metricsEnv', () => {
  const schema = z.object(metricsEnv('executor'));
  it('defaults to localhost and the service’s own port', () => {
    expect(schema.parse({})).toEqual({ VMSAVE_METRICS_HOST: '127.0.0.1', VMSAVE_METRICS_PORT: 9465 });
    expect(schema.parse({ VMSAVE_METRICS_PORT: '0', VMSAVE_METRICS_HOST: '0.0.0.0' })).toEqual({ VMSAVE_METRICS_HOST: '0.0.0.0', VMSAVE_METRICS_PORT: 0 });
  });
  it('refuses a port out of range, naming the variable and the rule', () => {
    const r = schema.safeParse({ VMSAVE_METRICS_PORT: '70000' });
    expect(r.success).toBe(false);
    expect(r.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual(['VMSAVE_METRICS_PORT: a port from 0 (off) to 65535']);
  });
});

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
}
