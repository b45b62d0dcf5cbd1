/**
 * The seal in the verifier, against real NATS and a real sealed image (64 MiB pattern VM, sparse):
 * `ImageVerified` carries the image's seal summary and `content: 'state'`; a `SaveCompleted`
 * whose seal differs from the image's is rejected (`seal.summary`); and the content scrub finds a
 * RAM byte flipped in an image after its verdict and records `ImageRejected` with `scrub: true`
 * (check `seal.ram`), which moves the job from verified to rejected.
 */
import { closeSync, promises as fsp, openSync, readSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SaveRequest, jobIdFor, makeEvent, messages, streams, subjects, type EventOf, type QemuCapabilities, type SealSummary } from '@vmsave/contracts';
import { Bus, createLogger, eventsOfJob, publishEvent, publishValidated } from '@vmsave/bus';
import { fold } from '@vmsave/jobs';
import { createImage, finalizeImage, openStreamFds, closeStreamFds, readImage, sealImage } from '@vmsave/image/node';
import { detectAccel, launchVm, probeQemu, saveToFds } from '@vmsave/qemu';
import { PATTERN_ADDR, patternVm, testUrls, uniq, waitFor } from '@vmsave/testkit';
import { ServiceMetrics } from '@vmsave/metrics';
import { loadConfig, startVerifier, type VerifierService } from '../src/index.ts';
import { overdueDurable } from '../src/verifier.ts';

const log = createLogger('verifier-scrub-test', { level: process.env.VMSAVE_TEST_LOG ?? 'silent' });
const host = uniq('shost');

let dir: string;
let imageDir: string;
let caps: QemuCapabilities;
let bus: Bus;
let service: VerifierService;
let durable: string;

/** A paused 64 MiB pattern VM saved sparse and sealed into a finalized image; returns its seal summary. */
async function sealedImage(imagePath: string): Promise<SealSummary> {
  const def = await patternVm(dir, path.basename(imagePath, '.vmsave'), 64);
  const qemu = await launchVm(def, { qmpSocketPath: path.join(dir, `${path.basename(imagePath)}.qmp`), startPaused: true, accel: caps.accel });
  try {
    const { streamOffset } = await createImage(imagePath, {
      format: 'sparse',
      channels: 1,
      directIo: false,
      wasRunning: false,
      descriptor: {
        descriptorVersion: 1,
        vm: def,
        format: 'sparse',
        qemu: { version: caps.version, capabilities: { 'mapped-ram': true, multifd: true }, parameters: { 'multifd-channels': 1 } },
        host,
        jobId: 'fixture',
        createdAt: new Date().toISOString(),
      },
    });
    const fds = await openStreamFds(imagePath, { mode: 'save', directIo: false });
    const qmp = await qemu.connectQmp();
    try {
      await saveToFds(qmp, { fds, offset: streamOffset, format: 'sparse', channels: 1 });
    } finally {
      closeStreamFds(fds);
      await qmp.close();
    }
  } finally {
    await qemu.kill().catch(() => undefined);
  }
  const { summary } = await sealImage(imagePath);
  await finalizeImage(imagePath);
  return summary;
}

/** A save job's history up to SaveCompleted (carrying `seal`) for `imagePath`; returns its id. */
async function completedSave(imagePath: string, seal?: SealSummary): Promise<string> {
  const request = SaveRequest.parse({ requestId: uniq('r'), vm: 'scrub-fixture', format: 'sparse', channels: 1 });
  const jobId = jobIdFor('save', request.requestId);
  const base = { host, attempt: 1, fencingToken: 1 };
  const size = (await fsp.stat(imagePath)).size;
  for (const e of [
    makeEvent('SaveRequested', jobId, { request }, { source: 'scheduler' }),
    makeEvent('SaveScheduled', jobId, { ...base, deadlineAt: new Date(Date.now() + 600_000).toISOString() }, { source: 'scheduler' }),
    makeEvent('SaveStarted', jobId, { ...base, imagePath, format: 'sparse', channels: 1, directIo: false, wasRunning: false, ramBytes: 64 << 20 }, { source: 'executor' }),
    makeEvent(
      'SaveCompleted',
      jobId,
      { ...base, imagePath, format: 'sparse', bytes: size, blocks: 0, durationMs: 100, throughputBytesPerSec: size * 10, vmState: 'paused', qemu: {}, ...(seal ? { seal } : {}) },
      { source: 'executor' },
    ),
  ])
    await publishEvent(bus, e);
  return jobId;
}

type Verdict = EventOf<'ImageVerified'> | EventOf<'ImageRejected'>;
const verdicts = async (jobId: string): Promise<Verdict[]> =>
  (await eventsOfJob(bus, jobId)).map((l) => l.event).filter((e): e is Verdict => e.type === 'ImageVerified' || e.type === 'ImageRejected');

beforeAll(async () => {
  dir = await fsp.mkdtemp(path.join(tmpdir(), 'vmsave-scrub-'));
  imageDir = path.join(dir, 'images');
  await fsp.mkdir(imageDir);
  const [q, accel] = await Promise.all([probeQemu(), detectAccel()]);
  caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel };
  const { natsUrl } = await testUrls();
  durable = uniq('scrubber').replace(/[^A-Za-z0-9_-]/g, '-');
  bus = await Bus.connect({ servers: natsUrl, name: 'verifier-scrub-test' });
  await bus.ensureStreams();
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
  // Only this test's host, and a scrub pass every 300 ms at 1 GiB/s.
  const cfg = loadConfig({
    NATS_URL: natsUrl,
    VMSAVE_VERIFIER_NAME: durable,
    VMSAVE_VERIFY_HOSTS: host,
    VMSAVE_SCRUB_BYTES_PER_SEC: String(1 << 30),
    VMSAVE_SCRUB_INTERVAL_MS: '300',
  });
  service = await startVerifier(cfg, log, metrics);
});

afterAll(async () => {
  await service?.stop();
  await bus?.jsm.consumers.delete(streams.events.name, durable).catch(() => undefined);
  await bus?.jsm.consumers.delete(streams.events.name, overdueDurable(durable)).catch(() => undefined);
  await bus?.close();
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
});

const metrics = new ServiceMetrics('verifier');
const scrubBytes = async () => (await metrics.counter('scrubBytes').get()).values.reduce((n, v) => n + v.value, 0);

describe('the seal in the verifier', () => {
  it("ImageVerified carries the image's seal and content 'state'; then the scrub finds a flipped RAM byte and rejects the job", async () => {
    const imagePath = path.join(imageDir, 'scrubbed.vmsave');
    const seal = await sealedImage(imagePath);
    const jobId = await completedSave(imagePath, seal);
    const [verified] = await waitFor('the verdict', async () => ((await verdicts(jobId)).length ? verdicts(jobId) : undefined), 60_000, 100);
    expect(verified!.type, JSON.stringify(verified!.data.checks)).toBe('ImageVerified');
    expect(verified!.data).toMatchObject({ seal, content: 'state' });
    const byName = new Map(verified!.data.checks.map((c) => [c.name, c.status] as const));
    expect(byName.get('seal.state')).toBe('pass');
    expect(byName.get('seal.summary')).toBe('pass');

    // Damage after the verdict, as bit rot would: one RAM byte inside the pattern.
    const { descriptor } = await readImage(imagePath);
    const ram = [...descriptor.seal!.ram.ranges].sort((a, b) => b[1] - b[0] - (a[1] - a[0]))[0]!;
    const at = ram[0] + PATTERN_ADDR + 4242;
    const fd = openSync(imagePath, 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, at);
    b[0] = b[0]! ^ 0x01;
    writeSync(fd, b, 0, 1, at);
    closeSync(fd);

    const rejected = await waitFor('the scrub rejection', async () => (await verdicts(jobId)).find((v): v is EventOf<'ImageRejected'> => v.type === 'ImageRejected'), 60_000, 200);
    expect(rejected).toMatchObject({ source: 'verifier', data: { imagePath, host, scrub: true, content: 'full', seal } });
    const ramCheck = rejected.data.checks.find((c) => c.name === 'seal.ram');
    expect(ramCheck?.status).toBe('fail');
    const state = fold((await eventsOfJob(bus, jobId)).map((l) => l.event));
    expect(state.status).toBe('rejected');
    expect(state.rejection?.rule).toBe('scrub');
    // What the scrub read is counted into vmsave_scrub_bytes_total (hole chunks are not read).
    expect(await scrubBytes()).toBeGreaterThan(0);
    // Later passes record nothing more.
    const passes = service.verifier.scrubber!.passes;
    await waitFor('two more scrub passes', async () => (service.verifier.scrubber!.passes >= passes + 2 ? true : undefined), 30_000, 100);
    expect((await verdicts(jobId)).length).toBe(2);
  });

  it("a SaveCompleted whose seal differs from the image's is rejected with seal.summary", async () => {
    const imagePath = path.join(imageDir, 'resealed.vmsave');
    const seal = await sealedImage(imagePath);
    const jobId = await completedSave(imagePath, { ...seal, ramDigest: seal.ramDigest === '0' ? '1' : '0' });
    const [v] = await waitFor('the verdict', async () => ((await verdicts(jobId)).length ? verdicts(jobId) : undefined), 60_000, 100);
    expect(v!.type).toBe('ImageRejected');
    const c = v!.data.checks.find((x) => x.name === 'seal.summary');
    expect(c).toMatchObject({ status: 'fail', detail: expect.stringContaining('ramDigest') });
  });
});
