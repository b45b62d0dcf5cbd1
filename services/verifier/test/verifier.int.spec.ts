/**
 * The verifier as main.ts wires it (`startVerifier`), against real NATS (NATS_URL, else the
 * testkit's URLs) and a real image saved by QEMU (64 MiB, sparse): for each job a
 * SaveRequested → SaveScheduled → SaveStarted → SaveCompleted history goes into the event log, and
 * the verifier must answer with ImageVerified (good image, with its fingerprint) or ImageRejected
 * naming the failed check (damaged copy; a path it must refuse without reading it).
 */
import { execFileSync } from 'node:child_process';
import { closeSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SaveRequest, jobIdFor, makeEvent, messages, streams, subjects, type EventOf, type QemuCapabilities } from '@vmsave/contracts';
import { Bus, createLogger, eventsOfJob, publishEvent, publishValidated } from '@vmsave/bus';
import { CHECK_NAMES, createImage, fingerprintImage, finalizeImage, openStreamFds } from '@vmsave/image/node';
import { detectAccel, launchVm, probeQemu, saveToFds } from '@vmsave/qemu';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import { loadConfig, startVerifier, type VerifierService } from '../src/index.ts';
import { overdueDurable, Verifier } from '../src/verifier.ts';

const log = createLogger('verifier-test', { level: process.env.VMSAVE_TEST_LOG ?? 'silent' });
const host = uniq('vhost');
const vm = { name: 'verifier-fixture', uuid: '0b7e4f3a-2c1d-4e5f-8a9b-1c2d3e4f5a6b', machine: 'q35', memoryMiB: 64, vcpus: 1, args: [] as string[] };

let dir: string;
let imageDir: string;
let outsideDir: string;
let good: string;
let caps: QemuCapabilities;
let bus: Bus;
let service: VerifierService;
let durable: string;

/** A paused 64 MiB VM saved sparse (mapped-ram, 1 channel) into a finalized vmsave image. */
async function saveImage(imagePath: string): Promise<void> {
  const qemu = await launchVm(vm, { qmpSocketPath: path.join(dir, 'fixture.qmp'), startPaused: true, accel: caps.accel });
  try {
    const qmp = await qemu.connectQmp();
    try {
      const { streamOffset } = await createImage(imagePath, {
        format: 'sparse',
        channels: 1,
        directIo: false,
        wasRunning: false,
        descriptor: {
          descriptorVersion: 1,
          vm,
          format: 'sparse',
          qemu: { version: caps.version, capabilities: { 'mapped-ram': true, multifd: true }, parameters: { 'multifd-channels': 1 } },
          host,
          jobId: 'fixture',
          createdAt: new Date().toISOString(),
        },
      });
      const fds = await openStreamFds(imagePath, { mode: 'save', directIo: false });
      try {
        await saveToFds(qmp, { fds, offset: streamOffset, format: 'sparse', channels: 1 });
      } finally {
        closeSync(fds.buffered);
      }
      await finalizeImage(imagePath);
    } finally {
      await qmp.close();
    }
  } finally {
    await qemu.kill().catch(() => undefined);
  }
}

async function announce(): Promise<void> {
  const now = new Date().toISOString();
  await publishValidated(bus, messages.hostAnnouncement, subjects.host(host), {
    host,
    executorId: uniq('exec'),
    at: now,
    startedAt: now,
    qemu: caps,
    imageDir,
    freeBytes: 1 << 30,
    vms: [],
  });
}

/** Write a save job's history up to SaveCompleted for `imagePath`, and return its id. */
async function completedSave(imagePath: string, jobHost = host): Promise<string> {
  const request = SaveRequest.parse({ requestId: uniq('r'), vm: vm.name, format: 'sparse', channels: 1 });
  const jobId = jobIdFor('save', request.requestId);
  const base = { host: jobHost, attempt: 1, fencingToken: 1 };
  // Each event as the role that may publish it (the log reader refuses any other source).
  const source = { source: 'executor' };
  const size = await fsp.stat(imagePath).then(
    (s) => s.size,
    () => 0,
  );
  for (const e of [
    makeEvent('SaveRequested', jobId, { request }, { source: 'scheduler' }),
    makeEvent('SaveScheduled', jobId, { ...base, deadlineAt: new Date(Date.now() + 600_000).toISOString() }, { source: 'scheduler' }),
    makeEvent('SaveStarted', jobId, { ...base, imagePath, format: 'sparse', channels: 1, directIo: false, wasRunning: false, ramBytes: vm.memoryMiB * 1024 * 1024 }, source),
    makeEvent(
      'SaveCompleted',
      jobId,
      { ...base, imagePath, format: 'sparse', bytes: size, blocks: 0, durationMs: 100, throughputBytesPerSec: size * 10, vmState: 'paused', qemu: {} },
      source,
    ),
  ])
    await publishEvent(bus, e);
  return jobId;
}

type Verdict = EventOf<'ImageVerified'> | EventOf<'ImageRejected'>;
async function verdictOf(jobId: string): Promise<Verdict> {
  return waitFor(
    `the verdict on job ${jobId}`,
    async () => {
      const events = (await eventsOfJob(bus, jobId)).map((l) => l.event);
      return events.find((e): e is Verdict => e.type === 'ImageVerified' || e.type === 'ImageRejected');
    },
    60_000,
    100,
  );
}
const failedNames = (v: Verdict) => v.data.checks.filter((c) => c.status === 'fail').map((c) => c.name);

beforeAll(async () => {
  dir = await fsp.mkdtemp(path.join(tmpdir(), 'vmsave-verifier-'));
  imageDir = path.join(dir, 'images');
  outsideDir = path.join(dir, 'elsewhere');
  await fsp.mkdir(imageDir);
  await fsp.mkdir(outsideDir);
  const [q, accel] = await Promise.all([probeQemu(), detectAccel()]);
  caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel };
  good = path.join(imageDir, 'good.vmsave');
  await saveImage(good);

  const { natsUrl } = await testUrls();
  durable = uniq('verifier').replace(/[^A-Za-z0-9_-]/g, '-');
  // Only this test's host: on a shared NATS the verifier must not touch other jobs.
  const cfg = loadConfig({ NATS_URL: natsUrl, VMSAVE_VERIFIER_NAME: durable, VMSAVE_VERIFY_HOSTS: host });
  bus = await Bus.connect({ servers: natsUrl, name: 'verifier-test' });
  await bus.ensureStreams();
  await announce();
  service = await startVerifier(cfg, log);
});

afterAll(async () => {
  await service?.stop();
  await bus?.jsm.consumers.delete(streams.events.name, durable).catch(() => undefined);
  await bus?.jsm.consumers.delete(streams.events.name, overdueDurable(durable)).catch(() => undefined);
  await bus?.close();
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
});

describe('verifier service', () => {
  it('records ImageVerified with every check and the fingerprint of a good image', async () => {
    const jobId = await completedSave(good);
    const v = await verdictOf(jobId);
    expect(v.type, JSON.stringify(v.data.checks)).toBe('ImageVerified');
    expect(v).toMatchObject({ jobId, source: 'verifier', data: { imagePath: good, host } });
    expect(v.data.checks.map((c) => c.name).sort()).toEqual([...CHECK_NAMES].sort());
    expect(failedNames(v)).toEqual([]);
    expect(v.data.checks.find((c) => c.name === 'format.restorable-here')?.status).toBe('pass');
    expect(v.data.fingerprint).toEqual(await fingerprintImage(good));
  });

  it('records ImageRejected naming the failed check for a damaged copy', async () => {
    const damaged = path.join(imageDir, 'damaged.vmsave');
    execFileSync('cp', ['--sparse=always', good, damaged]);
    const { size } = await fsp.stat(damaged);
    await fsp.truncate(damaged, size - 100); // the VM description at the end is cut off
    const v = await verdictOf(await completedSave(damaged));
    expect(v.type).toBe('ImageRejected');
    expect(failedNames(v)).toContain('stream.complete');
    expect(v.data.checks.find((c) => c.name === 'header.magic')?.status).toBe('pass');
  });

  it('refuses, without reading it, an image outside the announced image directory', async () => {
    const outside = path.join(outsideDir, 'good.vmsave');
    execFileSync('cp', ['--sparse=always', good, outside]); // a perfectly good image, in the wrong place
    const v = await verdictOf(await completedSave(outside));
    expect(v.type).toBe('ImageRejected');
    expect(v.data.checks).toHaveLength(1);
    expect(v.data.checks[0]).toMatchObject({ name: 'image.location', status: 'fail' });
    expect(v.data.checks[0]!.detail).toContain(`outside the image directory of host ${host}`);
    expect(v.data.fingerprint).toBeUndefined();
  });

  it('refuses a symbolic link inside the directory that points outside it', async () => {
    const link = path.join(imageDir, 'link.vmsave');
    await fsp.symlink(path.join(outsideDir, 'good.vmsave'), link);
    const v = await verdictOf(await completedSave(link));
    expect(v.type).toBe('ImageRejected');
    expect(v.data.checks).toEqual([expect.objectContaining({ name: 'image.location', status: 'fail', detail: expect.stringContaining('resolves to') })]);
  });

  it('refuses a FIFO inside the directory instead of hanging on it', async () => {
    const fifo = path.join(imageDir, 'fifo.vmsave');
    execFileSync('mkfifo', [fifo]);
    const v = await verdictOf(await completedSave(fifo));
    expect(v.type).toBe('ImageRejected');
    expect(v.data.checks).toEqual([expect.objectContaining({ name: 'image.location', detail: expect.stringContaining('not a regular file') })]);
  });

  it('rejects a missing image with image.exists', async () => {
    const v = await verdictOf(await completedSave(path.join(imageDir, 'gone.vmsave')));
    expect(v.type).toBe('ImageRejected');
    expect(failedNames(v)).toEqual(['image.exists']);
  });
});

describe('re-verification asked by the verdict watchdog', () => {
  it('given a completed save its SaveCompleted never reached, VerificationOverdue notice 1 verifies it; notice 2 does not', async () => {
    // Another host's save: the running service (this test's host only) leaves its SaveCompleted
    // alone, as a verifier whose durable was disabled would. A verifier for that host is asked again.
    const other = uniq('vhost2');
    const now = new Date().toISOString();
    await publishValidated(bus, messages.hostAnnouncement, subjects.host(other), {
      host: other,
      executorId: uniq('exec'),
      at: now,
      startedAt: now,
      qemu: caps,
      imageDir,
      freeBytes: 1 << 30,
      vms: [],
    });
    const jobId = await completedSave(good, other);
    await new Promise((r) => setTimeout(r, 1000));
    expect((await eventsOfJob(bus, jobId)).map((l) => l.event.type)).not.toContain('ImageVerified');
    const asker = new Verifier(bus, loadConfig({ VMSAVE_VERIFIER_NAME: uniq('unused').replace(/[^A-Za-z0-9_-]/g, '-'), VMSAVE_VERIFY_HOSTS: other }), log);
    const overdue = (notice: 1 | 2) =>
      makeEvent(
        'VerificationOverdue',
        jobId,
        { imagePath: good, host: other, attempt: 1, waitedMs: 120_000, notice },
        { source: 'scheduler', eventId: `${jobId}.1.VerificationOverdue.${notice}` },
      );
    // Notice 2 only raises: nothing is verified for it.
    await asker.onCompleted(overdue(2), () => undefined);
    expect((await eventsOfJob(bus, jobId)).map((l) => l.event.type)).toEqual(['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted']);
    await asker.onCompleted(overdue(1), () => undefined);
    const v = await verdictOf(jobId);
    expect(v.type, JSON.stringify(v.data.checks)).toBe('ImageVerified');
    expect(v).toMatchObject({ jobId, source: 'verifier', data: { imagePath: good, host: other } });
    await bus.jsm.streams.purge('VMSAVE_HOSTS', { filter: subjects.host(other) }).catch(() => undefined);
  });
});
