/**
 * The event log's retention on the real stack (issue 17, "the log's growth"; docs/operations.md
 * "The event log's retention"): a private NATS (a scheduler runs), real Redis and QEMU, a 64 MiB
 * VM, `VMSAVE_EVENT_MAX_AGE` of a few seconds on every service and a scheduler snapshot every
 * second. A save is verified, then its events age out of `VMSAVE_EVT` (the stream is asked); after
 * that `vmsave jobs`, `vmsave job`, the dashboard's API and `vmsave images` still show the job and
 * its image (from the read models), a restore of the image completes (the executor's full gate:
 * the image's descriptor and seal, the save's verdict being gone), and a scheduler restarted after
 * a SIGKILL still answers a repeated request id of the old job as a duplicate and admits a restore
 * of its image (both from its snapshot).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { BusEnv, eventsOfJob, parseEnv } from '@vmsave/bus';
import { streams, streamsWithEventMaxAge } from '@vmsave/contracts';
import { QmpClient } from '@vmsave/qmp';
import { patternVm, uniq, waitFor } from '@vmsave/testkit';
import { NatsCluster, Stack } from '../src/index.ts';
import { EXIT, vmsave } from '../src/vmsave-bin.ts';

/** Long enough for a 64 MiB save and its verdict, short enough to wait for (JetStream's expiry timer runs about once a second). */
const MAX_AGE_S = 15;

let dir: string;
let nats: NatsCluster;
let stack: Stack;
let host: string;
let env: Record<string, string>;
let port = 0;
const vm = uniq('ret').replace(/[^A-Za-z0-9_-]/g, '');
const saveRequestId = uniq('ret-save');
let saveJobId = '';
let imagePath = '';

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
}

const count = (text: string, re: RegExp) => text.split('\n').filter((l) => re.test(l)).length;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-retention-'));
  nats = await NatsCluster.start(dir, 1);
  stack = await Stack.start({
    hosts: ['a'],
    natsUrl: nats.url,
    env: { VMSAVE_EVENT_MAX_AGE: `${MAX_AGE_S}s` },
    serviceEnv: { scheduler: { VMSAVE_SNAPSHOT_INTERVAL_MS: '1000' } },
  });
  host = stack.host('a');
  port = await freePort();
  await stack.startService('dashboard', { VMSAVE_DASHBOARD_PORT: String(port), VMSAVE_DASHBOARD_HOST: '127.0.0.1', VMSAVE_DASHBOARD_TOKEN: '' });
  await waitFor('the dashboard to answer', async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.ok, 60_000, 250);
  await stack.startVm('a', await patternVm(stack.dir, vm, 64));
  await stack.waitForHost('a', [vm]);
  env = { ...stack.env, VMSAVE_LOG_LEVEL: 'warn' };
}, 240_000);

afterAll(async () => {
  await stack?.stop();
  await nats?.stop();
  await rm(dir, { recursive: true, force: true }).catch(() => undefined);
});

describe('VMSAVE_EVENT_MAX_AGE', () => {
  it('reads durations and none; a bad value is an error naming the variable and the rule', () => {
    const read = (v: string) => parseEnv(BusEnv, { VMSAVE_EVENT_MAX_AGE: v }, 'test').VMSAVE_EVENT_MAX_AGE;
    expect(read('30d')).toBe(30 * 86_400_000);
    expect(read('90s')).toBe(90_000);
    expect(read('none')).toBe(0);
    expect(parseEnv(BusEnv, {}, 'test').VMSAVE_EVENT_MAX_AGE).toBeUndefined();
    expect(() => read('500ms')).toThrow(/test configuration: VMSAVE_EVENT_MAX_AGE: a duration of at least 1s .* got "500ms"/);
    expect(() => read('30 days')).toThrow(/VMSAVE_EVENT_MAX_AGE: a duration/);
  });

  it('absent leaves the streams as defined; 0 keeps all; a max age caps the log and commands dedupe windows', () => {
    expect(streamsWithEventMaxAge(undefined).find((d) => d.name === streams.events.name)?.maxAgeMs).toBeUndefined();
    const keep = streamsWithEventMaxAge(0);
    expect(keep.find((d) => d.name === streams.events.name)).toMatchObject({ maxAgeMs: 0, duplicateWindowMs: streams.events.duplicateWindowMs });
    const short = streamsWithEventMaxAge(5000);
    expect(short.find((d) => d.name === streams.events.name)).toMatchObject({ maxAgeMs: 5000, duplicateWindowMs: 5000 });
    expect(short.find((d) => d.name === streams.commands.name)?.duplicateWindowMs).toBe(5000);
    expect(short.find((d) => d.name === streams.work.name)?.duplicateWindowMs).toBe(streams.work.duplicateWindowMs);
    const long = streamsWithEventMaxAge(30 * 86_400_000);
    expect(long.find((d) => d.name === streams.events.name)?.duplicateWindowMs).toBe(streams.events.duplicateWindowMs);
    expect(() => streamsWithEventMaxAge(10)).toThrow(RangeError);
  });
});

describe('the event log with a max age on the real stack', { timeout: 600_000 }, () => {
  it('the services set the max age on VMSAVE_EVT (and cap its and the commands stream dedupe windows to it)', async () => {
    const evt = await stack.bus.jsm.streams.info(streams.events.name);
    expect(evt.config.max_age).toBe(MAX_AGE_S * 1e9);
    expect(evt.config.duplicate_window).toBe(MAX_AGE_S * 1e9);
    expect((await stack.bus.jsm.streams.info(streams.commands.name)).config.duplicate_window).toBe(MAX_AGE_S * 1e9);
    // The hosts stream keeps its own max age.
    expect((await stack.bus.jsm.streams.info(streams.hosts.name)).config.max_age).toBe(streams.hosts.maxAgeMs * 1e6);
  });

  it('a verified save whose events aged out: vmsave jobs, vmsave job, the dashboard API and vmsave images still show it', async () => {
    const { jobId, admission } = await stack.client.save({ requestId: saveRequestId, vm, format: 'legacy', after: 'quit' });
    expect(admission).toMatchObject({ outcome: 'accepted' });
    const s = await stack.client.waitForJob(jobId, { timeoutMs: 180_000 });
    expect(s.status, JSON.stringify(s.rejection ?? s.lastFailure)).toBe('verified');
    saveJobId = jobId;
    imagePath = s.imagePath!;
    expect((await eventsOfJob(stack.bus, jobId)).map((e) => e.event.type)).toContain('ImageVerified');

    // Aged out: the stream no longer has any event of the job, and its first sequence moved past them.
    await waitFor('the save job events to age out of VMSAVE_EVT', async () => (await eventsOfJob(stack.bus, jobId)).length === 0, (MAX_AGE_S + 60) * 1000, 500);
    const state = (await stack.bus.jsm.streams.info(streams.events.name)).state;
    expect(state.first_seq).toBeGreaterThan(1);
    expect(state.messages).toBeLessThan(state.last_seq);

    const jobs = await vmsave(['jobs', '--vm', vm, '--json'], env);
    expect(jobs.code, jobs.stderr).toBe(EXIT.ok);
    const listed = JSON.parse(jobs.stdout) as { source: string; jobs: { jobId: string; status: string; imagePath?: string }[] };
    expect(listed.source).toBe('redis');
    expect(listed.jobs).toEqual([expect.objectContaining({ jobId, status: 'verified', imagePath })]);

    const one = await vmsave(['job', jobId, '--json'], env);
    expect(one.code, one.stderr).toBe(EXIT.ok);
    const shown = JSON.parse(one.stdout) as { source: string; job: { status: string; checks?: unknown[] }; events: unknown[] };
    expect(shown).toMatchObject({ source: 'read-model', job: { status: 'verified' }, events: [] });
    expect(shown.job.checks?.length).toBeGreaterThan(0);
    expect(one.stderr).toMatch(/aged out of the event log/);

    const api = (await (await fetch(`http://127.0.0.1:${port}/api/jobs?vm=${encodeURIComponent(vm)}`)).json()) as { items: { jobId: string; status: string }[]; total: number };
    expect(api.total).toBe(1);
    expect(api.items[0]).toMatchObject({ jobId, status: 'verified' });
    const detail = await fetch(`http://127.0.0.1:${port}/api/jobs/${jobId}`);
    expect(detail.status).toBe(200);
    expect(((await detail.json()) as { job: { status: string }; events: unknown[] }).job.status).toBe('verified');

    const images = await vmsave(['images', '--vm', vm, '--json'], env);
    expect(images.code, images.stderr).toBe(EXIT.ok);
    const imgs = JSON.parse(images.stdout) as { source: string; images: { jobId: string; host: string; imagePath: string; status: string }[] };
    expect(imgs.source).toBe('redis');
    expect(imgs.images).toEqual([expect.objectContaining({ jobId, host, imagePath, status: 'verified' })]);
  });

  it('a restore of that image completes: the full gate checks the image against its descriptor and seal', async () => {
    expect(imagePath).not.toBe('');
    await waitFor('the source VM to stop', async () => (await stack.waitForHost('a')).vms.find((v) => v.name === vm)?.status === 'stopped', 30_000, 250);
    const { jobId, admission } = await stack.client.restore({ requestId: uniq('ret-restore'), image: path.basename(imagePath) });
    expect(admission).toMatchObject({ outcome: 'accepted' });
    const s = await stack.client.waitForJob(jobId, { timeoutMs: 180_000 });
    expect(s.status, await stack.log(`executor:${host}`)).toBe('completed');
    const history = await stack.client.history(jobId);
    const requested = history.find((e) => e.type === 'RestoreRequested');
    expect(requested?.type === 'RestoreRequested' && requested.data.sourceJobId).toBe(saveJobId);
    const started = history.find((e) => e.type === 'RestoreStarted');
    expect(started).toBeDefined();
    expect(await stack.log(`executor:${host}`)).toMatch(/"sourceJobId":"[^"]+".*the source save's events are no longer in the log/);
  });

  it('a scheduler restarted (SIGKILL) after the events aged out answers a repeated request id of the old job as a duplicate and admits a restore of its image, from its snapshot', async () => {
    await waitFor('the save job events to be gone', async () => (await eventsOfJob(stack.bus, saveJobId)).length === 0, 10_000, 500);
    // The restore's events too, so the snapshot is all the scheduler has of both jobs.
    await new Promise((r) => setTimeout(r, (MAX_AGE_S + 3) * 1000));
    await stack.kill('scheduler', 'SIGKILL');
    await stack.startService('scheduler');
    await waitFor('the scheduler to run again', async () => count(await stack.log('scheduler'), /"msg":"scheduler running"/) >= 2, 120_000, 250);
    const log = await stack.log('scheduler');
    expect(count(log, /"msg":"loaded the state snapshot"/)).toBe(1);
    // The snapshot covered everything the log dropped.
    expect(log).not.toMatch(/no longer holds events after the snapshot/);

    // The same request id again: past the commands stream's dedupe window (capped to the max age),
    // so the scheduler itself sees it; it answers with the existing job and makes no new one.
    const r = await stack.client.save({ requestId: saveRequestId, vm, format: 'legacy', after: 'quit' }, { admissionTimeoutMs: 30_000 });
    expect(r.duplicate).toBe(false);
    expect(r.jobId).toBe(saveJobId);
    expect(r.admission).toMatchObject({ outcome: 'accepted', requestId: saveRequestId, jobId: saveJobId, duplicate: true });
    await new Promise((res) => setTimeout(res, 2000));
    expect(await eventsOfJob(stack.bus, saveJobId)).toEqual([]);

    // The restarted scheduler still admits a restore of the image (its save is in the snapshot only).
    {
      await using q = await QmpClient.connect(path.join(stack.dirs(host).qmpDir, `${vm}.qmp`));
      await q.execute('quit').catch(() => undefined);
    }
    await waitFor('the restored VM to stop', async () => (await stack.waitForHost('a')).vms.find((v) => v.name === vm)?.status === 'stopped', 30_000, 250);
    const again = await stack.client.restore({ requestId: uniq('ret-restore2'), image: path.basename(imagePath) });
    expect(again.admission).toMatchObject({ outcome: 'accepted' });
    const s = await stack.client.waitForJob(again.jobId, { timeoutMs: 180_000 });
    expect(s.status, await stack.log(`executor:${host}`)).toBe('completed');
  });
});
