/**
 * Every service's `/metrics` scraped during a real save and restore (private nats-server, Redis,
 * QEMU, a 128 MiB VM): the counters and histograms move by exactly what the jobs did.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobEvent } from '@vmsave/contracts';
import { parseMetrics, sampleValue, type Sample } from '@vmsave/metrics';
import { QmpClient } from '@vmsave/qmp';
import { freePort, patternVm, uniq, waitFor } from '@vmsave/testkit';
import { NatsCluster, Stack } from '../src/index.ts';

type Svc = 'scheduler' | 'executor' | 'verifier' | 'dashboard';
let stack: Stack;
let nats: NatsCluster;
let natsDir: string;
let vmName: string;
const ports = {} as Record<Svc, number>;
let pagePort = 0;
/** The save's labels (format, channels, direct IO): its image's header says the same, so the restore is labelled alike. */
let saveLabels: Record<string, string> = {};

async function scrape(svc: Svc): Promise<Sample[]> {
  const res = await fetch(`http://127.0.0.1:${ports[svc]}/metrics`);
  expect(res.status, svc).toBe(200);
  return parseMetrics(await res.text());
}
const scrapeAll = async () =>
  Object.fromEntries(await Promise.all((['scheduler', 'executor', 'verifier', 'dashboard'] as const).map(async (s) => [s, await scrape(s)]))) as Record<Svc, Sample[]>;

/** Scrape `svc` until `name{labels}` has moved by `by` from `before` (the event reaches readers a moment before its publisher counts it). */
async function moved(svc: Svc, before: Sample[], name: string, labels: Record<string, string>, by: number): Promise<Sample[]> {
  const from = sampleValue(before, name, labels);
  let last: Sample[] = [];
  const reached = async () => {
    last = await scrape(svc);
    return sampleValue(last, name, labels) - from >= by;
  };
  await waitFor(`${svc} ${name}${JSON.stringify(labels)} to move by ${by}`, reached, 20_000, 200).catch(() => undefined);
  expect(sampleValue(last, name, labels) - from, `${svc} ${name} ${JSON.stringify(labels)}`).toBe(by);
  return last;
}
const delta = (before: Sample[], after: Sample[], name: string, labels: Record<string, string> = {}) => sampleValue(after, name, labels) - sampleValue(before, name, labels);

beforeAll(async () => {
  // A private NATS: this test starts a scheduler, which must not act on other runs' commands.
  natsDir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-metrics-nats-'));
  nats = await NatsCluster.start(natsDir, 1);
  for (const s of ['scheduler', 'executor', 'verifier', 'dashboard'] as const) {
    let p = await freePort();
    while (Object.values(ports).includes(p)) p = await freePort();
    ports[s] = p;
  }
  stack = await Stack.start({
    hosts: ['a'],
    natsUrl: nats.url,
    hostEnv: { a: { VMSAVE_METRICS_PORT: String(ports.executor) } },
    serviceEnv: { scheduler: { VMSAVE_METRICS_PORT: String(ports.scheduler) }, verifier: { VMSAVE_METRICS_PORT: String(ports.verifier) } },
  });
  do pagePort = await freePort();
  while (Object.values(ports).includes(pagePort));
  await stack.startService('dashboard', { VMSAVE_METRICS_PORT: String(ports.dashboard), VMSAVE_DASHBOARD_PORT: String(pagePort), VMSAVE_DASHBOARD_TOKEN: '' });
  await stack.waitForLog('dashboard', /"msg":"metrics at http:\/\/127\.0\.0\.1:\d+\/metrics"/, 120_000);
  vmName = uniq('metrics').replace(/[^A-Za-z0-9_-]/g, '');
  await stack.startVm('a', await patternVm(stack.dir, vmName, 128));
  await stack.waitForHost('a', [vmName]);
});
afterAll(async () => {
  await stack?.stop();
  await nats?.stop();
  if (natsDir) await rm(natsDir, { recursive: true, force: true });
});

describe('/metrics of every service during a real save and restore', () => {
  let imagePath = '';
  let before: Record<Svc, Sample[]>;

  it('each service serves its process and bus metrics, on 127.0.0.1 at its configured port', async () => {
    before = await scrapeAll();
    for (const svc of ['scheduler', 'executor', 'verifier', 'dashboard'] as const) {
      expect(sampleValue(before[svc], 'process_cpu_seconds_total', { service: svc }), svc).toBeGreaterThan(0);
      expect(sampleValue(before[svc], 'vmsave_bus_connected', { service: svc }), svc).toBe(1);
      expect(sampleValue(before[svc], 'vmsave_bus_reconnects_total', { service: svc }), svc).toBe(0);
      expect(
        before[svc].some((s) => s.name === 'vmsave_bus_reconnects_total'),
        svc,
      ).toBe(true);
    }
    expect(sampleValue(before.executor, 'vmsave_executor_image_dir_free_bytes')).toBeGreaterThan(0);
    // The test's VM has its QMP socket in the executor's QMP directory.
    expect(sampleValue(before.executor, 'vmsave_executor_qemu_processes')).toBe(1);
    // The ops page's header links come from the dashboard's /api/links.
    const links = (await (await fetch(`http://127.0.0.1:${pagePort}/api/links`)).json()) as { grafana?: string; metrics: { name: string; url: string }[] };
    expect(links.grafana).toBe('http://127.0.0.1:3000/d/vmsave');
    expect(links.metrics.map((l) => l.name)).toEqual(['scheduler', 'executor', 'verifier', 'dashboard']);
  });

  it('a sparse save: admission accepted +1, one admission timed, save completed +1 with one duration and size sample, one verdict', async () => {
    const { jobId, admission } = await stack.client.save({ requestId: uniq('save'), vm: vmName, format: 'sparse', channels: 2 });
    expect(admission).toMatchObject({ outcome: 'accepted' });
    const final = await stack.client.waitForJob(jobId, { timeoutMs: 120_000 });
    expect(final.status).toBe('verified');
    imagePath = final.imagePath!;
    const history = await stack.client.history(jobId);
    const started = history.find((e): e is Extract<JobEvent, { type: 'SaveStarted' }> => e.type === 'SaveStarted')!;
    const done = history.find((e): e is Extract<JobEvent, { type: 'SaveCompleted' }> => e.type === 'SaveCompleted')!;
    const l = { format: 'sparse', channels: String(started.data.channels), direct_io: String(started.data.directIo) };
    saveLabels = l;

    const sch = await moved('scheduler', before.scheduler, 'vmsave_admissions_total', { kind: 'save', outcome: 'accepted', rule: 'none' }, 1);
    expect(delta(before.scheduler, sch, 'vmsave_admission_seconds_count')).toBe(1);
    expect(delta(before.scheduler, sch, 'vmsave_admissions_total', { outcome: 'rejected' })).toBe(0);
    expect(delta(before.scheduler, sch, 'vmsave_events_published_total', { type: 'SaveScheduled' })).toBe(1);
    const jobsVerified = await moved('scheduler', before.scheduler, 'vmsave_jobs', { kind: 'save', state: 'verified' }, 1);
    expect(sampleValue(jobsVerified, 'vmsave_scheduler_active_jobs')).toBe(0);

    const ex = await moved('executor', before.executor, 'vmsave_saves_total', { format: 'sparse', outcome: 'completed' }, 1);
    expect(delta(before.executor, ex, 'vmsave_save_seconds_count', l)).toBe(1);
    expect(delta(before.executor, ex, 'vmsave_save_seconds_sum', l)).toBeCloseTo(done.data.durationMs / 1000, 6);
    expect(delta(before.executor, ex, 'vmsave_save_bytes_count', l)).toBe(1);
    expect(delta(before.executor, ex, 'vmsave_save_bytes_sum', l)).toBe(done.data.blocks * 512);
    expect(delta(before.executor, ex, 'vmsave_events_published_total', { type: 'SaveCompleted' })).toBe(1);
    expect(delta(before.executor, ex, 'vmsave_saves_total', { outcome: 'failed' })).toBe(0);

    const ver = await moved('verifier', before.verifier, 'vmsave_verifications_total', { outcome: 'verified' }, 1);
    expect(delta(before.verifier, ver, 'vmsave_verifications_total', { outcome: 'rejected' })).toBe(0);
    expect(delta(before.verifier, ver, 'vmsave_verification_checks_total')).toBe(final.checks!.length);
    expect(delta(before.verifier, ver, 'vmsave_verification_checks_total', { check: 'header.magic', status: 'pass' })).toBe(1);
    for (const svc of ['scheduler', 'executor', 'verifier'] as const) expect(delta(before[svc], await scrape(svc), 'vmsave_bus_dead_letters_total'), svc).toBe(0);
    before = await scrapeAll();
  });

  it('a restore of that image: admission accepted +1, restore completed +1 with one duration and size sample; no new verdict', async () => {
    await using q = await QmpClient.connect(path.join(stack.dirs(stack.host('a')).qmpDir, `${vmName}.qmp`));
    await q.execute('quit').catch(() => undefined);
    await q.close();
    await waitFor('the source VM to stop', async () => (await stack.waitForHost('a')).vms.find((v) => v.name === vmName)?.status === 'stopped', 20_000);

    const { jobId, admission } = await stack.client.restore({ requestId: uniq('restore'), image: path.basename(imagePath) });
    expect(admission).toMatchObject({ outcome: 'accepted' });
    const final = await stack.client.waitForJob(jobId, { timeoutMs: 120_000 });
    expect(final.status, await stack.log(`executor:${stack.host('a')}`)).toBe('completed');
    const history = await stack.client.history(jobId);
    const done = history.find((e): e is Extract<JobEvent, { type: 'RestoreCompleted' }> => e.type === 'RestoreCompleted')!;

    const sch = await moved('scheduler', before.scheduler, 'vmsave_admissions_total', { kind: 'restore', outcome: 'accepted', rule: 'none' }, 1);
    expect(delta(before.scheduler, sch, 'vmsave_admission_seconds_count')).toBe(1);
    const ex = await moved('executor', before.executor, 'vmsave_restores_total', { format: 'sparse', outcome: 'completed' }, 1);
    const l = saveLabels;
    expect(delta(before.executor, ex, 'vmsave_restore_seconds_count', l)).toBe(1);
    expect(delta(before.executor, ex, 'vmsave_restore_seconds_sum', l)).toBeCloseTo(done.data.durationMs / 1000, 6);
    expect(delta(before.executor, ex, 'vmsave_restore_bytes_count', l)).toBe(1);
    expect(delta(before.executor, ex, 'vmsave_saves_total')).toBe(0);
    // The restored VM's QEMU runs with its QMP socket in the executor's directory.
    expect(sampleValue(ex, 'vmsave_executor_qemu_processes')).toBe(1);
    expect(delta(before.verifier, await scrape('verifier'), 'vmsave_verifications_total')).toBe(0);
  });
});
