/**
 * The scheduler as `src/main.ts` wires it, as its own process, against a real NATS and Redis:
 * a fake executor's announcement, a save command with a reply inbox, the admission answer, the
 * events in the log and the work item on the host's subject.
 *
 * Run it against a NATS of its own (`NATS_URL`): a scheduler on a shared NATS takes commands
 * from every other test there.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { AdmissionReply as AdmissionReplySchema, HostAnnouncement, jobIdFor, makeEvent, messages, subjects, type AdmissionReply, type WorkItem } from '@vmsave/contracts';
import { awaitAnswer, Bus, eventsOfJob, publishEvent, publishValidated, subscribeValidated } from '@vmsave/bus';
import { connectRedis } from '@vmsave/store';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const host = uniq('hv').replace(/[^A-Za-z0-9_-]/g, '');
const vm = uniq('web').replace(/[^A-Za-z0-9_-]/g, '');
/** A host with no VMs and room for four jobs: restores of images the log does not know go there. */
const host2 = uniq('hv2').replace(/[^A-Za-z0-9_-]/g, '');
/** A host whose saves the test completes as its executor would: the verdict watchdog's cases. */
const host3 = uniq('hv3').replace(/[^A-Za-z0-9_-]/g, '');
const vmLate = uniq('late').replace(/[^A-Za-z0-9_-]/g, '');
const vmOnTime = uniq('ontime').replace(/[^A-Za-z0-9_-]/g, '');
/** The scheduler's `VMSAVE_VERDICT_TIMEOUT_MS` here. */
const VERDICT_MS = 1500;
const prefix = uniq('sched-wiring');
/** Any payload, published as it is (the scheduler's schema is what is under test). */
const raw = { name: 'raw command', subject: subjects.cmd.all, schema: z.unknown() };

let bus: Bus;
let child: ChildProcess;
let exited: Promise<number | null>;
/** The scheduler's pino lines, parsed. */
const lines: Array<Record<string, unknown>> = [];
let stderr = '';

const logged = (msg: string, jobId?: string) => lines.find((l) => l.msg === msg && (jobId === undefined || l.jobId === jobId));

beforeAll(async () => {
  const { natsUrl, redisUrl } = await testUrls();
  bus = await Bus.connect({ servers: natsUrl, name: 'scheduler-wiring-test' });
  await bus.ensureStreams();
  // An executor that started before the scheduler: its announcement is what the scheduler reads first.
  const now = new Date().toISOString();
  await publishValidated(
    bus,
    messages.hostAnnouncement,
    subjects.host(host),
    HostAnnouncement.parse({
      host,
      executorId: `executor@${host}`,
      at: now,
      startedAt: now,
      qemu: { version: '10.1.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
      imageDir: '/var/lib/vmsave',
      freeBytes: 64 * 1024 ** 3,
      maxConcurrentJobs: 2,
      vms: [{ name: vm, uuid: '6f1c1a0e-3b7e-4c55-9d4e-2b1f0c9a8e11', machine: 'q35', memoryMiB: 256, vcpus: 1, status: 'running' }],
    }),
  );
  await publishValidated(
    bus,
    messages.hostAnnouncement,
    subjects.host(host2),
    HostAnnouncement.parse({
      host: host2,
      executorId: `executor@${host2}`,
      at: now,
      startedAt: now,
      qemu: { version: '10.1.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
      imageDir: '/var/lib/vmsave',
      freeBytes: 64 * 1024 ** 3,
      maxConcurrentJobs: 4,
      vms: [],
    }),
  );

  await publishValidated(
    bus,
    messages.hostAnnouncement,
    subjects.host(host3),
    HostAnnouncement.parse({
      host: host3,
      executorId: `executor@${host3}`,
      at: now,
      startedAt: now,
      qemu: { version: '10.1.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
      imageDir: '/var/lib/vmsave',
      freeBytes: 64 * 1024 ** 3,
      maxConcurrentJobs: 4,
      vms: [vmLate, vmOnTime].map((name, i) => ({ name, uuid: `6f1c1a0e-3b7e-4c55-9d4e-2b1f0c9a8e2${i}`, machine: 'q35', memoryMiB: 128, vcpus: 1, status: 'running' as const })),
    }),
  );

  // Debug: the per-job lines of admission and dispatch ('save admitted', 'work handed to executor') are logged at debug.
  child = spawn(process.execPath, ['--conditions=development', '--import', 'tsx', path.join(PKG, 'src', 'main.ts')], {
    cwd: PKG,
    env: { ...process.env, NATS_URL: natsUrl, REDIS_URL: redisUrl, VMSAVE_REDIS_PREFIX: prefix, VMSAVE_LOG_LEVEL: 'debug', VMSAVE_VERDICT_TIMEOUT_MS: String(VERDICT_MS) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  exited = new Promise((resolve) => child.once('exit', resolve));
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not a log line
      }
    }
  });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  await waitFor(
    `the scheduler to run (stderr: ${stderr})`,
    () => logged('scheduler running') ?? (child.exitCode !== null ? Promise.reject(new Error(`scheduler exited ${child.exitCode}: ${stderr}`)) : undefined),
    60_000,
    100,
  );
});

afterAll(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    if (child.exitCode === null) child.kill('SIGKILL');
  }
  if (bus) {
    await bus.jsm.streams.purge('VMSAVE_HOSTS', { filter: subjects.host(host) }).catch(() => undefined);
    await bus.jsm.streams.purge('VMSAVE_HOSTS', { filter: subjects.host(host2) }).catch(() => undefined);
    await bus.jsm.streams.purge('VMSAVE_HOSTS', { filter: subjects.host(host3) }).catch(() => undefined);
    await bus.close();
  }
  const { redisUrl } = await testUrls();
  const redis = await connectRedis(redisUrl);
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length) await redis.del(...keys);
  redis.disconnect();
});

/** Publish a save command with a reply inbox and wait for the admission answer. */
async function save(request: { requestId: string; vm: string }): Promise<AdmissionReply | undefined> {
  const answer = awaitAnswer(bus, messages.admissionReply, { timeoutMs: 30_000 });
  await publishValidated(bus, messages.saveRequest, subjects.cmd.save, request, { replyTo: answer.inbox });
  return answer.value;
}

/** A save of `vmName` on host3 admitted, scheduled, then started and completed as its executor reports them. */
async function completedSave(vmName: string): Promise<{ jobId: string; imagePath: string; completedAtMs: number }> {
  const requestId = uniq(`wiring-${vmName}`);
  const reply = await save({ requestId, vm: vmName });
  expect(reply).toMatchObject({ outcome: 'accepted' });
  const jobId = (reply as { jobId: string }).jobId;
  const scheduled = await waitFor(
    `SaveScheduled of ${jobId}`,
    async () => (await eventsOfJob(bus, jobId)).map((l) => l.event).find((e) => e.type === 'SaveScheduled'),
    30_000,
    100,
  );
  const { fencingToken } = scheduled.data as { fencingToken: number };
  const imagePath = `/var/lib/vmsave/${vmName}-${jobId}-1.vmsave`;
  const source = { source: `executor@${host3}` };
  const base = { host: host3, attempt: 1, fencingToken, imagePath, format: 'sparse' as const };
  await publishEvent(bus, makeEvent('SaveStarted', jobId, { ...base, channels: 1, directIo: false, wasRunning: true, ramBytes: 128 * 2 ** 20 }, source));
  const completed = makeEvent('SaveCompleted', jobId, { ...base, bytes: 1, blocks: 1, durationMs: 10, throughputBytesPerSec: 1, vmState: 'running', qemu: {} }, source);
  await publishEvent(bus, completed);
  return { jobId, imagePath, completedAtMs: Date.parse(completed.at) };
}

describe('the verdict watchdog (no verifier runs here)', () => {
  it('given a completed save and no verdict, VerificationOverdue notice 1 after the bound (asking again), then notice 2 after another, and the job stays completed', async () => {
    const { jobId, imagePath, completedAtMs } = await completedSave(vmLate);
    const overdue = await waitFor(
      'two VerificationOverdue notices',
      async () => {
        const evs = (await eventsOfJob(bus, jobId)).map((l) => l.event).filter((e) => e.type === 'VerificationOverdue');
        return evs.length >= 2 ? evs : undefined;
      },
      30_000,
      100,
    );
    expect(overdue.map((e) => e.data)).toEqual([
      { imagePath, host: host3, attempt: 1, waitedMs: expect.any(Number), notice: 1 },
      { imagePath, host: host3, attempt: 1, waitedMs: expect.any(Number), notice: 2 },
    ]);
    expect(overdue.map((e) => e.eventId)).toEqual([`${jobId}.1.VerificationOverdue.1`, `${jobId}.1.VerificationOverdue.2`]);
    expect(overdue.every((e) => e.source === 'scheduler')).toBe(true);
    const [first, second] = overdue as [(typeof overdue)[0], (typeof overdue)[0]];
    expect(Date.parse(first.at) - completedAtMs).toBeGreaterThanOrEqual(VERDICT_MS);
    expect(Date.parse(second.at) - Date.parse(first.at)).toBeGreaterThanOrEqual(VERDICT_MS);
    expect((second.data as { waitedMs: number }).waitedMs).toBeGreaterThanOrEqual(2 * VERDICT_MS);
    // Raised once: no third notice, however long it waits.
    await new Promise((r) => setTimeout(r, VERDICT_MS + 1000));
    const types = (await eventsOfJob(bus, jobId)).map((l) => l.event.type);
    expect(types.filter((t) => t === 'VerificationOverdue')).toHaveLength(2);
    expect(types.at(-1)).toBe('VerificationOverdue');
    expect(logged('verdict overdue: raised, no verifier answered', jobId)).toBeDefined();
  });

  it('given a completed save whose verdict comes in time, no VerificationOverdue', async () => {
    const { jobId, imagePath } = await completedSave(vmOnTime);
    await publishEvent(
      bus,
      makeEvent('ImageVerified', jobId, { imagePath, host: host3, checks: [{ name: 'header.magic', status: 'pass', detail: 'ok' }] }, { source: 'verifier' }),
    );
    await new Promise((r) => setTimeout(r, 2 * VERDICT_MS + 1500));
    const types = (await eventsOfJob(bus, jobId)).map((l) => l.event.type);
    expect(types).toEqual(['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted', 'ImageVerified']);
  });
});

describe('the scheduler as main.ts wires it', () => {
  it('given an announced VM, a save is admitted, logged as requested then scheduled on its host, and handed out as work', async () => {
    const work: WorkItem[] = [];
    const ac = new AbortController();
    const sub = subscribeValidated(bus, messages.work, subjects.work(host), { signal: ac.signal });
    void (async () => {
      for await (const { value } of sub) work.push(value);
    })();

    const requestId = uniq('wiring');
    const jobId = jobIdFor('save', requestId);
    expect(await save({ requestId, vm })).toEqual({ outcome: 'accepted', requestId, jobId, duplicate: false });

    const types = await waitFor(
      'SaveScheduled in the log',
      async () => {
        const t = (await eventsOfJob(bus, jobId)).map((l) => l.event);
        return t.some((e) => e.type === 'SaveScheduled') ? t : undefined;
      },
      30_000,
      100,
    );
    expect(types.map((e) => e.type)).toEqual(['SaveRequested', 'SaveScheduled']);
    expect(types[1]).toMatchObject({ source: 'scheduler', data: { host, attempt: 1 } });

    const item = await waitFor('the work item', () => work.find((w) => w.jobId === jobId), 30_000, 50);
    expect(item).toMatchObject({ kind: 'save', jobId, host, attempt: 1, format: 'sparse', request: { vm } });
    ac.abort();

    // Job lines carry the job id (the dispatch line is written after the work item's ack: the item may arrive here first).
    expect(logged('save admitted', jobId)).toMatchObject({ host });
    expect(await waitFor('the dispatch log line', () => logged('work handed to executor', jobId), 10_000, 50)).toMatchObject({ host, attempt: 1 });

    // The same request again is the same job, answered as a duplicate.
    expect(await save({ requestId, vm })).toEqual({ outcome: 'accepted', requestId, jobId, duplicate: true });
  });

  it('given a VM no host announced, the save is rejected naming the rule and the field', async () => {
    const requestId = uniq('wiring-unknown');
    const answer = await save({ requestId, vm: 'no-such-vm' });
    expect(answer).toMatchObject({
      outcome: 'rejected',
      requestId,
      jobId: jobIdFor('save', requestId),
      rule: 'vm-exists',
      field: 'vm',
      message: expect.stringMatching(/^vm: .*no-such-vm/),
    });
    const events = await waitFor(
      'SaveRejected in the log',
      async () => {
        const t = (await eventsOfJob(bus, jobIdFor('save', requestId))).map((l) => l.event.type);
        return t.includes('SaveRejected') ? t : undefined;
      },
      30_000,
      100,
    );
    expect(events).toEqual(['SaveRequested', 'SaveRejected']);
  });

  it('answers only on a well-formed inbox: a command naming a work queue, the log, the dead letters or a wildcard is handled but not answered', async () => {
    // Everything published on this NATS while the commands are handled: no admission answer may
    // appear anywhere but on the good inbox.
    const answers: Array<{ subject: string; value: AdmissionReply }> = [];
    const all = bus.nc.subscribe('>');
    void (async () => {
      for await (const m of all) {
        let json: unknown;
        try {
          json = m.json();
        } catch {
          continue;
        }
        const a = AdmissionReplySchema.safeParse(json);
        if (a.success && typeof json === 'object' && json !== null && 'outcome' in json) answers.push({ subject: m.subject, value: a.data });
      }
    })();
    await bus.nc.flush();

    const bad = [
      subjects.work(host),
      subjects.evt(jobIdFor('save', 'x'), 'ImageVerified'),
      subjects.dlq('executor'),
      subjects.control(host),
      '>',
      '_INBOX.>',
      '_INBOX.*',
      '_INBOX.',
    ];
    const refused: string[] = [];
    for (const [i, to] of bad.entries()) {
      const requestId = uniq(`wiring-reply-${i}`);
      refused.push(requestId);
      // The work queue gets a real, admitted save; the others a VM nobody has (a rejection).
      await publishValidated(bus, raw, subjects.cmd.save, { requestId, vm: i === 0 ? vm : 'no-such-vm' }, { msgId: requestId, replyTo: to });
    }
    // A schema failure with a readable request id and a bad reply subject: rejected, not answered.
    const schemaBad = uniq('wiring-reply-schema');
    await publishValidated(bus, raw, subjects.cmd.save, { requestId: schemaBad, vm: 'not a vm name!' }, { msgId: schemaBad, replyTo: subjects.work(host) });

    // Commands are handled in order: once the good inbox has its answer, the bad ones were handled.
    const good = uniq('wiring-reply-good');
    const answer = awaitAnswer(bus, messages.admissionReply, { timeoutMs: 30_000 });
    await publishValidated(bus, messages.saveRequest, subjects.cmd.save, { requestId: good, vm: 'no-such-vm' }, { replyTo: answer.inbox });
    expect(await answer.value).toMatchObject({ outcome: 'rejected', requestId: good, rule: 'vm-exists' });
    await bus.nc.flush();
    await new Promise((r) => setTimeout(r, 300));
    all.unsubscribe();

    expect(answers.map((a) => a.subject)).toEqual([answer.inbox]);
    // Each bad one was still admitted or rejected as usual, and logged as refused.
    for (const [i, requestId] of refused.entries()) {
      const jobId = jobIdFor('save', requestId);
      const types = (await eventsOfJob(bus, jobId)).map((l) => l.event.type);
      expect(types.slice(0, 2)).toEqual(i === 0 ? ['SaveRequested'] : ['SaveRequested', 'SaveRejected']);
      expect(logged('reply subject refused', jobId)).toMatchObject({ replyTo: bad[i], requestId });
    }
    const schemaJob = jobIdFor('save', schemaBad);
    expect((await eventsOfJob(bus, schemaJob)).map((l) => l.event.type)).toEqual(['SaveRejected']);
    expect(logged('reply subject refused', schemaJob)).toMatchObject({ replyTo: subjects.work(host), requestId: schemaBad });
  });

  it('a payload that fails its schema but has a readable requestId is answered with that requestId and its job', async () => {
    const requestId = uniq('wiring-schema');
    const jobId = jobIdFor('save', requestId);
    const answer = awaitAnswer(bus, messages.admissionReply, { timeoutMs: 30_000 });
    await publishValidated(bus, raw, subjects.cmd.save, { requestId, vm, channels: 0 }, { msgId: requestId, replyTo: answer.inbox });
    expect(await answer.value).toEqual({ outcome: 'rejected', requestId, jobId, rule: 'schema', field: 'channels', message: expect.stringMatching(/channels/) });
    expect((await eventsOfJob(bus, jobId)).map((l) => l.event.type)).toEqual(['SaveRejected']);

    // Without a readable requestId the answer still comes, naming no request.
    const unreadable = awaitAnswer(bus, messages.admissionReply, { timeoutMs: 30_000 });
    await publishValidated(bus, raw, subjects.cmd.save, { requestId: 'not readable!', vm }, { replyTo: unreadable.inbox });
    const a2 = await unreadable.value;
    expect(a2).toMatchObject({ outcome: 'rejected', rule: 'schema' });
    expect(a2).not.toHaveProperty('requestId');
  });

  it('a restore of an image the log does not know, on a named host, runs under a lease of that image with a real fencing token', async () => {
    const redis = await connectRedis((await testUrls()).redisUrl);
    try {
      const image = `${uniq('lost')}.vmsave`;
      const first = uniq('wiring-restore-1');
      const second = uniq('wiring-restore-2');
      const j1 = jobIdFor('restore', first);
      const j2 = jobIdFor('restore', second);
      const restore = async (requestId: string, img: string) => {
        const answer = awaitAnswer(bus, messages.admissionReply, { timeoutMs: 30_000 });
        await publishValidated(bus, messages.restoreRequest, subjects.cmd.restore, { requestId, image: img, host: host2 }, { replyTo: answer.inbox });
        return answer.value;
      };
      expect(await restore(first, image)).toMatchObject({ outcome: 'accepted', jobId: j1 });
      const scheduled = await waitFor(
        'RestoreScheduled of the first restore',
        async () => (await eventsOfJob(bus, j1)).map((l) => l.event).find((e) => e.type === 'RestoreScheduled'),
        30_000,
        100,
      );
      const token = (scheduled.data as { fencingToken: number }).fencingToken;
      expect(token).toBeGreaterThan(0);
      const leaseKey = `${prefix}:lease:image:${host2}:${image}`;
      expect(await redis.hgetall(leaseKey)).toMatchObject({ owner: j1, token: String(token) });

      // The same image named by its absolute path is the same lease: the second waits.
      expect(await restore(second, `/var/lib/vmsave/${image}`)).toMatchObject({ outcome: 'accepted', jobId: j2 });
      // Admission asked for a placement pass; give it (and a few more) the time to run.
      await new Promise((r) => setTimeout(r, 2000));
      expect((await eventsOfJob(bus, j2)).map((l) => l.event.type)).toEqual(['RestoreRequested']);

      // The first ends (its executor reports a final failure): the lease is released and the second runs with a newer token.
      await publishEvent(
        bus,
        makeEvent(
          'RestoreFailed',
          j1,
          { attempt: 1, stage: 'restore', reason: 'no such image', code: 'image-missing', retryable: false, host: host2, fencingToken: token },
          { source: `executor@${host2}` },
        ),
      );
      const next = await waitFor(
        'RestoreScheduled of the second restore',
        async () => (await eventsOfJob(bus, j2)).map((l) => l.event).find((e) => e.type === 'RestoreScheduled'),
        30_000,
        100,
      );
      const token2 = (next.data as { fencingToken: number }).fencingToken;
      expect(token2).toBeGreaterThan(token);
      expect(await redis.hgetall(leaseKey)).toMatchObject({ owner: j2, token: String(token2) });
    } finally {
      redis.disconnect();
    }
  });
});
