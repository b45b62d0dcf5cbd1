/**
 * Several active schedulers (issue 13, "Must show"): three scheduler processes share the work of
 * one deployment (16 VM partitions held by Redis leases), with the verifier and two real
 * executors (two host names, one job at a time each) on a private NATS, and 12 small real VMs,
 * each in a partition of its own, spread over both hosts. A burst of saves (three per VM, some
 * requests repeated, two on the bare old subject `vmsave.cmd.save` as an old client sends them) is
 * published; when a third of it is admitted, one scheduler is SIGKILLed (chosen once the division
 * has settled: the one also serving the bare subjects if it owns any of the VMs, else the one
 * owning most of them). Then, from the whole event log: every distinct request admitted exactly once and
 * every client answered; no attempt scheduled or started twice; no VM with two jobs at once; the
 * per-host limit never exceeded; every job final, none failed after it completed; and the two
 * survivors own all 16 partitions between them and admitted the dead one's VMs after the kill.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { awaitAnswer, publishValidated, readHosts, readLog } from '@vmsave/bus';
import { jobIdFor, messages, PARTITIONS, partitionOf, subjects, type AdmissionReply, type EventOf, type JobEvent, type SaveRequestInput } from '@vmsave/contracts';
import { isFinal, type JobState } from '@vmsave/jobs';
import { makePattern, MiB, patternVm, uniq, waitFor } from '@vmsave/testkit';
import { attemptWindows, byJob, groupBy, maxOverlap, NatsCluster, recordFault, repeated, Stack, type AttemptWindow, type ServiceName } from '../src/index.ts';

const SCHEDULERS = 3;
const VMS = 12;
const SAVES_PER_VM = 3;
/** Jobs at once per host: the scheduler's default and each executor's announced limit. */
const LIMIT = 1;
/** Short partition leases, so the survivors take the dead one's share over within seconds. */
const PARTITION_TTL_MS = 3000;
/** Requests in flight at once while the burst is published. */
const WINDOW = 4;
const ADMISSION_TIMEOUT_MS = 60_000;

let dir: string;
let nats: NatsCluster;
let stack: Stack;
const tag = uniq('')
  .replace(/[^A-Za-z0-9]/g, '')
  .slice(-6);

/** VM names with pairwise distinct partitions, alternating between hosts a and b. */
function vmNames(): Array<{ vm: string; host: 'a' | 'b' }> {
  const seen = new Set<number>();
  const out: Array<{ vm: string; host: 'a' | 'b' }> = [];
  for (let i = 0; out.length < VMS; i++) {
    const vm = `ms${i}-${tag}`;
    if (seen.has(partitionOf(vm))) continue;
    seen.add(partitionOf(vm));
    out.push({ vm, host: out.length % 2 === 0 ? 'a' : 'b' });
  }
  return out;
}
const vms = vmNames();
const hostOfVm = new Map(vms.map((v) => [v.vm, v.host]));

type Via = 'client' | 'bare' | 'client-repeat' | 'bare-repeat';
interface Planned {
  via: Via;
  vm: string;
  /** Request id; for a repeat, chosen when it is sent (a request the killed scheduler admitted, once it is known). */
  requestId: string;
}
interface Answered extends Planned {
  answer: AdmissionReply | undefined;
  /** JetStream dropped the publish as a repeat of the same request id (`Nats-Msg-Id`). */
  droppedByStream?: boolean;
  at: number;
}

/**
 * The burst: three rounds over every VM; one request on the bare subject in the first and one in
 * the last round; in the last round also a request id of the first round repeated by the client
 * (JetStream drops it: answered from the log) and one repeated on the bare subject under another
 * message id (it reaches a scheduler, which must find the job it already has).
 */
function plan(): Planned[] {
  const out: Planned[] = [];
  for (let r = 0; r < SAVES_PER_VM; r++) {
    const round: Planned[] = vms.map(({ vm }) => ({ via: 'client', vm, requestId: `${tag}-${vm}-${r}` }));
    if (r === 0) round.splice(4, 0, { via: 'bare', vm: vms[2]!.vm, requestId: `${tag}-${vms[2]!.vm}-bare0` });
    if (r === SAVES_PER_VM - 1) {
      round.splice(1, 0, { via: 'client-repeat', vm: '', requestId: '' });
      round.splice(5, 0, { via: 'bare', vm: vms[7]!.vm, requestId: `${tag}-${vms[7]!.vm}-bare1` });
      round.splice(8, 0, { via: 'bare-repeat', vm: '', requestId: '' });
    }
    out.push(...round);
  }
  return out;
}

const saveOf = (p: Planned): SaveRequestInput => ({ requestId: p.requestId, vm: p.vm, format: 'legacy', after: 'running', live: false });

/** Publish on the bare subject as an old client does, and wait for the scheduler's answer. */
async function publishBare(p: Planned, msgId: string): Promise<{ answer: AdmissionReply | undefined; duplicate: boolean }> {
  const a = awaitAnswer(stack.bus, messages.admissionReply, { timeoutMs: ADMISSION_TIMEOUT_MS });
  try {
    const { ack } = await publishValidated(stack.bus, messages.saveRequest, subjects.cmd.save, saveOf(p), { msgId, replyTo: a.inbox });
    if (ack.duplicate) throw new Error(`the bare request ${p.requestId} (msg id ${msgId}) was dropped by JetStream as a duplicate`);
  } catch (err) {
    a.cancel();
    throw err;
  }
  return { answer: await a.value, duplicate: false };
}

/** The latest partitions each scheduler logged, by name (absent: none logged yet). */
async function owned(names: readonly ServiceName[]): Promise<Map<ServiceName, { time: number; partitions: number[] }>> {
  const m = new Map<ServiceName, { time: number; partitions: number[] }>();
  for (const n of names) {
    const all = await stack.partitionsOwned(n);
    if (all.length) m.set(n, all.at(-1)!);
  }
  return m;
}

const union = (sets: Iterable<{ partitions: number[] }>) => new Set([...sets].flatMap((s) => s.partitions));

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-schedulers-'));
  nats = await NatsCluster.start(dir, 1);
  stack = await Stack.start({
    hosts: ['a', 'b'],
    natsUrl: nats.url,
    schedulers: SCHEDULERS,
    env: {
      VMSAVE_HOST_LIMIT: String(LIMIT),
      VMSAVE_MAX_CONCURRENT: String(LIMIT),
      VMSAVE_PARTITION_TTL_MS: String(PARTITION_TTL_MS),
      VMSAVE_LOG_LEVEL: 'info',
    },
  });
  await Promise.all(vms.map(async ({ vm, host }, i) => stack.startVm(host, await patternVm(stack.dir, vm, 64, makePattern(1 * MiB, i + 1)))));
  await stack.waitForHost(
    'a',
    vms.filter((v) => v.host === 'a').map((v) => v.vm),
    90_000,
  );
  await stack.waitForHost(
    'b',
    vms.filter((v) => v.host === 'b').map((v) => v.vm),
    90_000,
  );
  // The schedulers have divided the partitions among themselves before the burst: each owns some, each partition has one owner.
  await waitFor(
    'the schedulers to divide the partitions between them',
    async () => {
      const now = [...(await owned(stack.schedulers)).values()];
      return (
        now.length === SCHEDULERS && now.every((o) => o.partitions.length > 0) && now.reduce((n, o) => n + o.partitions.length, 0) === PARTITIONS && union(now).size === PARTITIONS
      );
    },
    60_000,
    250,
  );
}, 300_000);

afterAll(async () => {
  await stack?.stop();
  await nats?.stop();
  if (dir) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
}, 120_000);

describe(`${SCHEDULERS} active schedulers, one SIGKILLed in the middle of a burst`, () => {
  const answered: Answered[] = [];
  const finals = new Map<string, JobState>();
  let victim: ServiceName | undefined;
  let victimVms: string[] = [];
  let killAt = 0;
  let victimServedBare = false;
  const events: JobEvent[] = [];
  let jobs = new Map<string, JobEvent[]>();
  let windows: AttemptWindow[] = [];
  const distinct = () => [...new Set(answered.filter((a) => a.via === 'client' || a.via === 'bare').map((a) => a.requestId))];

  it('the burst: every request is answered while one of the schedulers is SIGKILLed; every job ends', async () => {
    const burst = plan();
    const originals = burst.filter((p) => p.via === 'client' || p.via === 'bare').length;
    const killAfter = Math.ceil(originals / 3);
    const answers = new Map<string, Promise<Answered>>();
    let admitted = 0;
    let killing: Promise<void> | undefined;

    // The victim is chosen before the burst (the division is settled), so the kill itself waits for nothing.
    {
      const now = await owned(stack.schedulers);
      const vmsOf = (n: ServiceName) => vms.filter((v) => now.get(n)?.partitions.includes(partitionOf(v.vm))).length;
      // Rather the one that serves the bare subjects too (if its log says so), so their takeover is tested as well.
      const global = new Set<ServiceName>();
      for (const n of stack.schedulers) if (/"msg":"took the global scheduler lease/.test(await stack.log(n))) global.add(n);
      const score = (n: ServiceName) => (vmsOf(n) > 0 && global.has(n) ? 100 : 0) + vmsOf(n);
      victim = [...stack.schedulers].sort((x, y) => score(y) - score(x))[0]!;
      victimServedBare = global.has(victim);
      expect(vmsOf(victim), `no scheduler owns a partition of the test's VMs: ${JSON.stringify([...now])}`).toBeGreaterThan(0);
      victimVms = vms.filter((v) => now.get(victim!)!.partitions.includes(partitionOf(v.vm))).map((v) => v.vm);
    }
    const kill = () => {
      killAt = Date.now();
      return stack.kill(victim!, 'SIGKILL');
    };

    const send = async (p: Planned): Promise<Answered> => {
      if (p.via === 'client-repeat' || p.via === 'bare-repeat') {
        // A request of the first round, of one of the killed scheduler's VMs: its job was admitted before the kill.
        const pickFrom = victimVms.length ? victimVms : vms.map((v) => v.vm);
        const vm = pickFrom[p.via === 'client-repeat' ? 0 : pickFrom.length - 1]!;
        p = { ...p, vm, requestId: `${tag}-${vm}-0` };
        await answers.get(p.requestId);
      }
      if (p.via === 'bare' || p.via === 'bare-repeat') {
        const r = await publishBare(p, p.via === 'bare' ? p.requestId : `${p.requestId}:again`);
        return { ...p, answer: r.answer, at: Date.now() };
      }
      const s = await stack.client.save(saveOf(p), { admissionTimeoutMs: ADMISSION_TIMEOUT_MS });
      expect(s.jobId).toBe(jobIdFor('save', p.requestId));
      return { ...p, answer: s.admission, droppedByStream: s.duplicate, at: Date.now() };
    };

    // Diagnostic: a test VM announced without a running QEMU (the admission rule `vm-running` refuses its saves).
    const watch = new AbortController();
    const announcedStopped: string[] = [];
    const watching = (async () => {
      for await (const a of readHosts(stack.bus, { follow: true, signal: watch.signal })) {
        for (const v of a.vms) if (hostOfVm.has(v.name) && v.status === 'stopped') announcedStopped.push(`${v.name} on ${a.host} at ${a.at}`);
      }
    })().catch(() => undefined);

    const inFlight = new Set<Promise<unknown>>();
    for (const p of burst) {
      while (inFlight.size >= WINDOW) await Promise.race(inFlight);
      if (!killing && admitted >= killAfter) {
        killing = kill();
        // Awaited after the burst; until then a failure must not be an unhandled rejection.
        killing.catch(() => undefined);
      }
      const a = send(p).then((r) => {
        answered.push(r);
        if ((r.via === 'client' || r.via === 'bare') && r.answer?.outcome === 'accepted') admitted++;
        return r;
      });
      if (p.via === 'client' || p.via === 'bare') answers.set(p.requestId, a);
      const tracked = a.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
    }
    await Promise.all(inFlight);
    watch.abort();
    await watching;
    if (announcedStopped.length) console.log(`announced with no QEMU running while it ran: ${announcedStopped.join('; ')}`);
    await killing;
    expect(killAt, 'the kill happened').toBeGreaterThan(0);
    expect(stack.procs.get(victim!)!.signalCode).toBe('SIGKILL');
    console.log(`killed ${victim}${victimServedBare ? ' (it served the bare subjects)' : ''} after ${killAfter} of ${originals} admissions; its VMs: ${victimVms.join(', ')}`);

    // Every client got an answer, and it accepted the request (a repeat: as the same job).
    const unanswered = answered.filter((a) => !a.answer);
    expect(
      unanswered.map((a) => `${a.via} ${a.requestId}`),
      'requests with no answer',
    ).toEqual([]);
    expect(answered.filter((a) => a.answer?.outcome !== 'accepted').map((a) => `${a.via} ${a.requestId}: ${JSON.stringify(a.answer)}`)).toEqual([]);
    for (const a of answered) expect(a.answer).toMatchObject({ requestId: a.requestId, jobId: jobIdFor('save', a.requestId) });
    const repeats = answered.filter((a) => a.via.endsWith('-repeat'));
    expect(repeats.map((a) => a.via).sort()).toEqual(['bare-repeat', 'client-repeat']);
    for (const a of repeats) expect(a.answer, `${a.via} ${a.requestId}`).toMatchObject({ outcome: 'accepted', duplicate: true });
    expect(repeats.find((a) => a.via === 'client-repeat')?.droppedByStream).toBe(true);
    expect(distinct()).toHaveLength(originals);

    // Every job ends.
    await Promise.all(
      distinct().map(async (rid) => {
        const jobId = jobIdFor('save', rid);
        finals.set(jobId, await stack.client.waitForJob(jobId, { until: isFinal, timeoutMs: 180_000 }));
      }),
    );
    for await (const { event } of readLog(stack.bus)) events.push(event);
    jobs = byJob(events);
    windows = [...jobs.values()].flatMap((h) => attemptWindows(h));
    const failed = [...finals].filter(([, s]) => s.status !== 'verified');
    for (const [jobId, s] of failed)
      console.log(`job ${jobId} ended ${s.status}: ${s.lastFailure ? `${s.lastFailure.code} at ${s.lastFailure.stage}: ${s.lastFailure.reason}` : JSON.stringify(s.rejection)}`);
    console.log(`${finals.size} jobs: ${[...groupBy([...finals.values()], (s) => s.status)].map(([k, v]) => `${v.length} ${k}`).join(', ')}; ${events.length} events`);
  }, 300_000);

  it('every distinct request admitted exactly once: one SaveRequested per request id, no rejection, no job not asked for', () => {
    const expected = new Set(distinct().map((rid) => jobIdFor('save', rid)));
    expect(expected.size).toBe(VMS * SAVES_PER_VM + 2);
    expect(new Set(jobs.keys())).toEqual(expected);
    for (const rid of distinct()) {
      const h = jobs.get(jobIdFor('save', rid)) ?? [];
      const requested = h.filter((e): e is EventOf<'SaveRequested'> => e.type === 'SaveRequested');
      expect(
        requested.map((e) => e.data.request.requestId),
        rid,
      ).toEqual([rid]);
      expect(
        h.filter((e) => e.type === 'SaveRejected'),
        rid,
      ).toEqual([]);
    }
    // Every event once (a redelivered command or a resumed job does not append the same event again).
    expect(repeated(events.map((e) => e.eventId))).toEqual([]);
  });

  it('nothing run twice: no attempt scheduled or started twice, one SaveCompleted at most per job, no overlapping attempts of a job', () => {
    for (const [jobId, h] of jobs) {
      expect(repeated(h.filter((e) => e.type === 'SaveScheduled').map((e) => (e as EventOf<'SaveScheduled'>).data.attempt)), `${jobId} attempts scheduled twice`).toEqual([]);
      expect(repeated(h.filter((e) => e.type === 'SaveStarted').map((e) => (e as EventOf<'SaveStarted'>).data.attempt)), `${jobId} attempts started twice`).toEqual([]);
      expect(h.filter((e) => e.type === 'SaveCompleted').length, `${jobId} completions`).toBeLessThanOrEqual(1);
      const own = windows.filter((w) => w.jobId === jobId).map((w) => ({ from: w.scheduledAt, to: w.endedAt, label: `${jobId}#${w.attempt}` }));
      expect(maxOverlap(own).max, `${jobId} overlapping attempts`).toBeLessThanOrEqual(1);
    }
  });

  it('no VM has two jobs at once (scheduled → closed, and started → closed), each on its own host', () => {
    for (const [vm, ws] of groupBy(windows, (w) => w.vm)) {
      const scheduled = maxOverlap(ws.map((w) => ({ from: w.scheduledAt, to: w.endedAt, label: `${w.jobId}#${w.attempt}@${w.host}` })));
      expect(scheduled.max, `${vm}: ${scheduled.labels.join(', ')} at ${scheduled.at}`).toBe(1);
      const started = maxOverlap(ws.filter((w) => w.startedAt !== undefined).map((w) => ({ from: w.startedAt!, to: w.endedAt, label: `${w.jobId}#${w.attempt}` })));
      expect(started.max, `${vm}: ${started.labels.join(', ')} at ${started.at}`).toBe(1);
      expect(new Set(ws.map((w) => w.host)), vm).toEqual(new Set([stack.host(hostOfVm.get(vm)!)]));
    }
  });

  it(`the per-host limit (${LIMIT}) is never exceeded across the schedulers`, () => {
    // Not vacuous: every job ran at least one attempt, on both hosts.
    expect(windows.length).toBeGreaterThanOrEqual(finals.size);
    const byHost = groupBy(windows, (w) => w.host);
    expect([...byHost.keys()].sort()).toEqual([...stack.hosts].sort());
    for (const [host, ws] of byHost) {
      const o = maxOverlap(ws.map((w) => ({ from: w.scheduledAt, to: w.endedAt, label: `${w.jobId}#${w.attempt}(${w.vm})` })));
      expect(o.max, `${host}: ${o.labels.join(', ')} at ${o.at}`).toBeLessThanOrEqual(LIMIT);
    }
  });

  it('every job final; no SaveFailed in a job that has a SaveCompleted', () => {
    expect(finals.size).toBe(distinct().length);
    for (const [jobId, s] of finals) {
      expect(isFinal(s), `${jobId} ${s.status}`).toBe(true);
      expect(['verified', 'failed'], `${jobId} ${s.status}`).toContain(s.status);
      if (s.status === 'failed') expect(s.lastFailure?.reason, jobId).toBeTruthy();
    }
    for (const [jobId, h] of jobs) {
      if (h.some((e) => e.type === 'SaveCompleted'))
        expect(
          h.filter((e) => e.type === 'SaveFailed').map((e) => JSON.stringify(e.data)),
          jobId,
        ).toEqual([]);
    }
  });

  it("the survivors own all 16 partitions after the kill, and admitted the dead one's VMs", async () => {
    const survivors = stack.schedulers.filter((n) => n !== victim);
    const after = await waitFor(
      'the survivors to own every partition',
      async () => {
        const now = await owned(survivors);
        return union(now.values()).size === PARTITIONS && [...now.values()].some((o) => o.time > killAt) ? now : undefined;
      },
      30_000,
      250,
    );
    // Between them, each partition once.
    expect([...after.values()].reduce((n, o) => n + o.partitions.length, 0)).toBe(PARTITIONS);
    const took = new Map(victimVms.map((vm) => [vm, [...after].find(([, o]) => o.partitions.includes(partitionOf(vm)))?.[0]]));
    console.log(
      `after the kill: ${[...after].map(([n, o]) => `${n} owns ${o.partitions.join(',')}`).join('; ')}; the dead one's VMs went to ${[...took].map(([vm, n]) => `${vm}→${n}`).join(', ')}`,
    );
    for (const [vm, n] of took) expect(n, vm).toBeDefined();
    // Requests for the dead one's VMs sent after the kill were admitted (by a survivor).
    for (const vm of victimVms) {
      const late = answered.filter((a) => a.vm === vm && (a.via === 'client' || a.via === 'bare') && a.at > killAt);
      expect(
        late.length,
        `${vm}: answers at ${JSON.stringify(answered.filter((x) => x.vm === vm).map((x) => [x.via, x.requestId, x.at - killAt]))} (ms after the kill)`,
      ).toBeGreaterThan(0);
      for (const a of late) expect(jobs.get(jobIdFor('save', a.requestId))?.filter((e) => e.type === 'SaveRequested')).toHaveLength(1);
    }
    // In the middle: jobs of the dead one's VMs were admitted and not yet final when it died, and they ended after.
    const openAtKill = [...jobs].filter(([, h]) => {
      const first = h[0]!;
      const vm = first.type === 'SaveRequested' ? first.data.request.vm : '';
      return victimVms.includes(vm) && Date.parse(first.at) < killAt && h.some((e) => Date.parse(e.at) > killAt && (e.type === 'ImageVerified' || e.type === 'SaveFailed'));
    });
    console.log(`${openAtKill.length} jobs of the dead scheduler's VMs were open when it died; all ended: ${openAtKill.map(([id]) => finals.get(id)?.status).join(', ')}`);
    expect(openAtKill.length).toBeGreaterThan(0);
    expect(stack.procs.get(victim!)!.exitCode === null && stack.procs.get(victim!)!.signalCode === 'SIGKILL').toBe(true);
    for (const n of survivors) expect(stack.procs.get(n)!.exitCode, n).toBeNull();
    await recordFault({
      fault: 'one of three schedulers SIGKILLed',
      injection: `${SCHEDULERS} active schedulers, 2 executors (limit ${LIMIT}), ${VMS} VMs of 64 MiB; SIGKILL of one scheduler (the one serving the bare subjects if it owns any of the VMs) once a third of a ${distinct().length}-request burst was admitted`,
      checked:
        'every request admitted once and answered (repeats as the same job); no attempt run twice; no VM two jobs at once; host limit held; every job final; survivors own all 16 partitions',
      result: 'pass',
      detail: `${[...groupBy([...finals.values()], (s) => s.status)].map(([k, v]) => `${v.length} ${k}`).join(', ')}; ${victimVms.length} VMs and ${openAtKill.length} open jobs taken over${victimServedBare ? ', with the bare subjects' : ''}`,
    });
  }, 60_000);
});
