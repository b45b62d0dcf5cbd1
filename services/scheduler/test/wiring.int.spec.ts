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
import { HostAnnouncement, jobIdFor, messages, subjects, type AdmissionReply, type WorkItem } from '@vmsave/contracts';
import { awaitAnswer, Bus, eventsOfJob, publishValidated, subscribeValidated } from '@vmsave/bus';
import { connectRedis } from '@vmsave/store';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const host = uniq('hv').replace(/[^A-Za-z0-9_-]/g, '');
const vm = uniq('web').replace(/[^A-Za-z0-9_-]/g, '');
const prefix = uniq('sched-wiring');

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

  child = spawn(process.execPath, ['--conditions=development', '--import', 'tsx', path.join(PKG, 'src', 'main.ts')], {
    cwd: PKG,
    env: { ...process.env, NATS_URL: natsUrl, REDIS_URL: redisUrl, VMSAVE_REDIS_PREFIX: prefix, VMSAVE_LOG_LEVEL: 'info' },
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

    // Job lines carry the job id.
    expect(logged('save admitted', jobId)).toMatchObject({ host });
    expect(logged('work handed to executor', jobId)).toMatchObject({ host, attempt: 1 });

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
});
