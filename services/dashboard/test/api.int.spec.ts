import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostAnnouncement, makeEvent, messages, subjects, type EventOf, type ImageRejected, type ImageVerified } from '@vmsave/contracts';
import { eventsOfJob, publishValidated, type LoggedEvent } from '@vmsave/bus';
import { describeEvent, fold, overdueText, type JobState } from '@vmsave/jobs';
import type { JobView } from '@vmsave/store';
import { createDashboard } from '../src/index.ts';
import type { HostRow } from '../src/queries.ts';
import { publishAll, projected, publishedEventIds, quiet, saveJob, startDashboard, uniq, type Harness } from './helpers.ts';

let h: Harness;
const vm = uniq('vm');
const vm2 = uniq('vm');
const hostA = uniq('host-a');
const hostB = uniq('host-b');
const ok = saveJob(vm, hostA);
const failed = saveJob(vm, hostB);
const rejected = saveJob(vm, hostA);
const running = saveJob(vm2, hostA);
const queued = saveJob(vm2, hostB);
const all = [ok, failed, rejected, running, queued];
/**
 * What the log says about each test job. Other services on a shared NATS (a scheduler, a
 * verifier) may act on these jobs too, so expectations are computed from the log itself.
 */
const truth = new Map<string, JobState>();
const statusOf = (j: { jobId: string }) => truth.get(j.jobId)!.status;
const ids = (list: Array<{ jobId: string }>) => list.map((j) => j.jobId);

/** A job as the API answers it (every job it lists has an id). */
type ApiJob = JobView & { jobId: string };
/** The fields of the API's answers that these tests read; each answer has some of them. */
interface ApiBody {
  items: ApiJob[];
  total: number;
  totals: Record<string, number>;
  cursor: number;
  job: ApiJob;
  events: LoggedEvent[];
  hosts: HostRow[];
  error: string;
  message: string;
}
type Verdict = LoggedEvent & { event: ImageVerified | ImageRejected };

beforeAll(async () => {
  h = await startDashboard();
  const last = await publishAll(h.bus, [
    ok.requested(),
    ok.scheduled(),
    ok.started(),
    ok.completed(),
    ok.verified(),
    failed.requested(),
    failed.scheduled(),
    failed.started(),
    failed.failed(),
    rejected.requested(),
    rejected.rejected(),
    running.requested(),
    running.scheduled(),
    running.started(),
    queued.requested(),
    queued.scheduled(),
  ]);
  await projected(h, last);
  for (const j of all) truth.set(j.jobId, fold((await eventsOfJob(h.bus, j.jobId)).map((e) => e.event)));
  await projected(h, (await h.bus.jsm.streams.info('VMSAVE_EVT')).state.last_seq);
});
afterAll(async () => {
  await h?.close();
});

const get = async (url: string, headers: Record<string, string> = {}) => {
  const res = await h.app.inject({ method: 'GET', url, headers });
  return { status: res.statusCode, body: res.json<ApiBody>(), headers: res.headers };
};

describe('GET /api/jobs', () => {
  it('lists a VM’s jobs newest first, with the total and the log position they include', async () => {
    const r = await get(`/api/jobs?vm=${vm}`);
    expect(r.status).toBe(200);
    expect(r.body.items.map((j) => j.jobId)).toEqual([rejected.jobId, failed.jobId, ok.jobId]);
    expect(r.body.total).toBe(3);
    expect(r.body.cursor).toBeGreaterThan(0);
    expect(r.body.items[2]).toMatchObject({ status: statusOf(ok), host: hostA, format: 'sparse', result: { bytes: expect.any(Number), blocks: expect.any(Number) } });
    for (const item of r.body.items) expect(item.status).toBe(truth.get(item.jobId)!.status);
  });

  it('filters by state (one or several), by host, and by VM and host together', async () => {
    const expected = (pred: (j: (typeof all)[number]) => boolean) => ids(all.filter(pred)).sort();
    const got = async (url: string) => ids((await get(url)).body.items).sort();
    expect(await got(`/api/jobs?vm=${vm}&state=failed`)).toEqual(expected((j) => j.vm === vm && statusOf(j) === 'failed'));
    expect(await got(`/api/jobs?vm=${vm}&state=failed,rejected`)).toEqual(expected((j) => j.vm === vm && ['failed', 'rejected'].includes(statusOf(j))));
    expect(await got(`/api/jobs?host=${hostB}`)).toEqual(expected((j) => truth.get(j.jobId)!.host === hostB));
    const both = await get(`/api/jobs?vm=${vm2}&host=${hostA}`);
    expect(ids(both.body.items)).toEqual([running.jobId]);
    expect(both.body.total).toBe(1);
    expect(await got(`/api/jobs?host=${hostA}&state=running&state=scheduled`)).toEqual(
      expected((j) => truth.get(j.jobId)!.host === hostA && ['running', 'scheduled'].includes(statusOf(j))),
    );
    // Each reason is there to read (when nothing else overrode this test's outcome).
    const byId = new Map((await get(`/api/jobs?vm=${vm}`)).body.items.map((j) => [j.jobId, j] as const));
    if (statusOf(failed) === 'failed') expect(byId.get(failed.jobId)!.lastFailure).toMatchObject({ code: 'ENOSPC', stage: 'migrate', reason: 'No space left on device' });
    expect(byId.get(rejected.jobId)!.rejection).toMatchObject({ rule: expect.any(String), message: expect.any(String) });
  });

  it('pages with limit and offset', async () => {
    const p1 = await get(`/api/jobs?vm=${vm}&limit=2`);
    const p2 = await get(`/api/jobs?vm=${vm}&limit=2&offset=2`);
    expect(p1.body.items).toHaveLength(2);
    expect(p2.body.items.map((j) => j.jobId)).toEqual([ok.jobId]);
    expect(p2.body.total).toBe(3);
    const everything = 'requested,scheduled,running,completed,verified,rejected,failed,cancelled';
    const s2 = await get(`/api/jobs?vm=${vm}&state=${everything}&limit=1&offset=1`);
    expect(ids(s2.body.items)).toEqual([failed.jobId]);
    expect(s2.body.total).toBe(3);
  });

  it('filters by kind and request time, sorts oldest first, and counts per state under the filters', async () => {
    const newest = await get(`/api/jobs?vm=${vm}`);
    const oldest = await get(`/api/jobs?vm=${vm}&order=oldest`);
    expect(ids(oldest.body.items)).toEqual(ids(newest.body.items).reverse());
    expect((await get(`/api/jobs?vm=${vm}&kind=save`)).body.total).toBe(3);
    expect((await get(`/api/jobs?vm=${vm}&kind=restore`)).body.total).toBe(0);
    // [since, until): the middle job alone, by its request time (ms or ISO 8601).
    const at = (id: string) => Date.parse(truth.get(id)!.requestedAt!);
    const mid = at(failed.jobId);
    const window = await get(`/api/jobs?vm=${vm}&since=${mid}&until=${new Date(at(rejected.jobId)).toISOString()}`);
    expect(ids(window.body.items)).toEqual([failed.jobId]);
    expect(window.body.total).toBe(1);
    const totals = newest.body.totals;
    for (const s of ['failed', 'rejected']) expect(totals[s], s).toBe(all.filter((j) => j.vm === vm && statusOf(j) === s).length);
  });

  it('refuses bad parameters with a 400 that names the parameter', async () => {
    const cases: Array<[string, RegExp]> = [
      ['/api/jobs?limit=0', /limit/],
      ['/api/jobs?limit=abc', /limit: must be a number/],
      ['/api/jobs?limit=9999', /limit/],
      ['/api/jobs?offset=-1', /offset/],
      ['/api/jobs?state=done', /state.*must be one or more of requested/],
      ['/api/jobs?vm=bad%20name', /vm: VM name/],
      ['/api/jobs?host=a.b', /host: host name/],
      ['/api/jobs?kind=backup', /kind: must be save, restore or drain/],
      ['/api/jobs?order=random', /order: must be newest or oldest/],
      ['/api/jobs?since=yesterday', /since: must be a time/],
    ];
    for (const [url, re] of cases) {
      const r = await get(url);
      expect(r.status, url).toBe(400);
      expect(r.body.error).toBe('invalid-request');
      expect(r.body.message, url).toMatch(re);
    }
    const badId = await get('/api/jobs/has.dots');
    expect(badId.status).toBe(400);
    expect(badId.body.message).toMatch(/id: job id/);
    const badSince = await get('/api/stream?since=minus-one');
    expect(badSince.status).toBe(400);
    expect(badSince.body.message).toMatch(/since/);
    const badHeader = await get('/api/stream', { 'last-event-id': 'x' });
    expect(badHeader.status).toBe(400);
    expect(badHeader.body.message).toMatch(/Last-Event-ID/);
  });
});

describe('GET /api/jobs/:id', () => {
  it('returns the job and its whole history from the log, in order', async () => {
    const r = await get(`/api/jobs/${ok.jobId}`);
    expect(r.status).toBe(200);
    expect(r.body.job).toMatchObject({ jobId: ok.jobId, status: statusOf(ok), vm, host: hostA });
    const verdicts = r.body.events.filter((e): e is Verdict => /^Image(Verified|Rejected)$/.test(e.event.type));
    expect(r.body.job.checks).toEqual(verdicts.at(-1)!.event.data.checks);
    const types = r.body.events.filter((e) => publishedEventIds.has(e.event.eventId)).map((e) => e.event.type);
    expect(types).toEqual(['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted', 'ImageVerified']);
    const seqs = r.body.events.map((e) => e.seq);
    expect([...seqs].sort((a: number, b: number) => a - b)).toEqual(seqs);
    expect(r.body.job).toMatchObject(JSON.parse(JSON.stringify(fold(r.body.events.map((e) => e.event)))));
  });

  it('given a save whose verdict is overdue, the job stays completed and says "verification overdue", as its timeline does', async () => {
    const late = saveJob(uniq('vm-late'), uniq('host-late'));
    const completed = late.completed() as EventOf<'SaveCompleted'>;
    const overdue = makeEvent(
      'VerificationOverdue',
      late.jobId,
      { imagePath: completed.data.imagePath, host: late.host, attempt: 1, waitedMs: 240_000, notice: 2 },
      { source: 'scheduler', eventId: `${late.jobId}.1.VerificationOverdue.2` },
    );
    const notice1 = makeEvent(
      'VerificationOverdue',
      late.jobId,
      { ...overdue.data, waitedMs: 120_000, notice: 1 },
      { source: 'scheduler', eventId: `${late.jobId}.1.VerificationOverdue.1` },
    );
    await projected(h, await publishAll(h.bus, [late.requested(), late.scheduled(), late.started(), completed, notice1, overdue]));
    const r = await get(`/api/jobs/${late.jobId}`);
    expect(r.body.job).toMatchObject({ status: 'completed', verificationOverdue: { notice: 2, waitedMs: 240_000 } });
    expect(overdueText(r.body.job)).toBe('verification overdue (no verdict after 4m 00s, raised: no verifier answered)');
    const last = r.body.events.at(-1)!.event;
    expect(describeEvent(last)).toMatch(/^verification overdue: no verdict 4m 00s after the save completed; raised/);
  });

  it('answers 404 for a job nobody has heard of', async () => {
    const r = await get(`/api/jobs/${saveJob(vm, hostA).jobId}`);
    expect(r.status).toBe(404);
  });
});

describe('GET /api/hosts and /api/images/latest/:vm', () => {
  it('shows the latest announcement of a host with its running and queued jobs', async () => {
    const announce = (freeBytes: number) =>
      publishValidated(
        h.bus,
        messages.hostAnnouncement,
        subjects.host(hostA),
        HostAnnouncement.parse({
          host: hostA,
          executorId: 'e1',
          at: new Date().toISOString(),
          startedAt: new Date().toISOString(),
          qemu: { version: '10.1.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
          imageDir: '/images',
          freeBytes,
          maxConcurrentJobs: 2,
          vms: [],
        }),
      );
    await announce(1);
    await announce(2); // the stream keeps the last one per host
    const r = await get('/api/hosts');
    expect(r.status).toBe(200);
    const a = r.body.hosts.find((x) => x.host === hostA);
    const count = (host: string, status: string) => all.filter((j) => truth.get(j.jobId)!.host === host && statusOf(j) === status).length;
    expect(a).toMatchObject({ running: count(hostA, 'running'), queued: count(hostA, 'scheduled'), limit: 2, announcement: { freeBytes: 2, qemu: { mappedRam: true } } });
    const b: Partial<HostRow> = r.body.hosts.find((x) => x.host === hostB) ?? { running: 0, queued: 0 };
    expect(b).toMatchObject({ running: count(hostB, 'running'), queued: count(hostB, 'scheduled') });
    expect(b.announcement).toBeUndefined();
    await h.bus.jsm.streams.purge('VMSAVE_HOSTS', { filter: subjects.host(hostA) });
  });

  it('returns the latest verified image of a VM, 404 when there is none', async () => {
    const r = await get(`/api/images/latest/${vm}`);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ vm, jobId: ok.jobId, host: hostA, format: 'sparse' });
    expect((await get(`/api/images/latest/${vm2}`)).status).toBe(404);
    expect((await get('/api/images/latest/-bad')).body.message).toMatch(/vm: VM name/);
  });
});

describe('access token', () => {
  it('when set, refuses every page, API and stream request without it and accepts a bearer header, ?token= or the cookie it sets', async () => {
    const token = uniq('secret-token-');
    const app = await createDashboard({ bus: h.bus, redis: h.redis, prefix: h.prefix, token, log: quiet, project: false });
    await app.ready();
    try {
      for (const url of ['/', '/index.html', '/app.js', '/api/jobs', `/api/jobs/${ok.jobId}`, '/api/hosts', '/api/stream', '/vendor/uplot.esm.js']) {
        const r = await app.inject({ url });
        expect(r.statusCode, url).toBe(401);
        expect(r.headers['www-authenticate']).toMatch(/^Bearer/);
      }
      expect((await app.inject({ url: '/api/jobs', headers: { authorization: 'Bearer wrong-token-000000' } })).statusCode).toBe(401);
      expect((await app.inject({ url: '/api/jobs?token=wrong' })).statusCode).toBe(401);
      expect((await app.inject({ url: `/api/jobs?vm=${vm}`, headers: { authorization: `Bearer ${token}` } })).json().total).toBe(3);
      const page = await app.inject({ url: `/?token=${token}` });
      expect(page.statusCode).toBe(200);
      expect(page.headers['content-type']).toMatch(/text\/html/);
      const cookie = String(page.headers['set-cookie']).split(';')[0]!;
      expect((await app.inject({ url: '/app.js', headers: { cookie } })).statusCode).toBe(200);
      expect((await app.inject({ url: '/healthz' })).statusCode).toBe(200);
    } finally {
      await app.close();
    }
  });
});
