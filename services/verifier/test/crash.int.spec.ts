/**
 * A verifier that crashes mid-verification (its connection gone, the `SaveCompleted` never
 * acked) hands the job to the next verifier within seconds: the durable's ack wait is short
 * (and an existing durable with the old 60 s is updated), while a running verification keeps
 * its delivery with `working()`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nanos } from '@nats-io/nats-core';
import { AckPolicy, DeliverPolicy } from '@nats-io/jetstream';
import { SaveRequest, jobIdFor, makeEvent, messages, streams, subjects, type JobEvent } from '@vmsave/contracts';
import { Bus, createLogger, eventsOfJob, publishEvent, publishValidated, type Outcome } from '@vmsave/bus';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import { VERIFY_ACK_WAIT_MS, Verifier, loadConfig, startVerifier, type VerifierConfig, type VerifierService } from '../src/index.ts';

const log = createLogger('verifier-crash-test', { level: process.env.VMSAVE_TEST_LOG ?? 'silent' });
const host = uniq('vcrash').replace(/[^A-Za-z0-9_-]/g, '-');
const durable = uniq('verifier-crash').replace(/[^A-Za-z0-9_-]/g, '-');
let natsUrl: string;
let bus: Bus;
let cfg: VerifierConfig;
let crashed: Bus | undefined;
let second: VerifierService | undefined;

/** A verifier that starts verifying `jobId` and never finishes (until its process "dies"). */
class StuckVerifier extends Verifier {
  constructor(
    b: Bus,
    private readonly jobId: string,
    private readonly onStuck: () => void,
  ) {
    super(b, cfg, log);
  }
  override async onCompleted(e: JobEvent, working: () => void): Promise<Outcome> {
    if (e.jobId !== this.jobId) return super.onCompleted(e, working);
    this.onStuck();
    return new Promise<Outcome>(() => undefined);
  }
}

beforeAll(async () => {
  ({ natsUrl } = await testUrls());
  cfg = loadConfig({ NATS_URL: natsUrl, VMSAVE_VERIFIER_NAME: durable, VMSAVE_VERIFY_HOSTS: host, VMSAVE_VERIFY_CONCURRENCY: '1' });
  bus = await Bus.connect({ servers: natsUrl, name: 'verifier-crash-test' });
  await bus.ensureStreams();
  const now = new Date().toISOString();
  await publishValidated(bus, messages.hostAnnouncement, subjects.host(host), {
    host,
    executorId: uniq('exec'),
    at: now,
    startedAt: now,
    qemu: { version: '10.0.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
    imageDir: '/nonexistent-vmsave-images',
    freeBytes: 1 << 30,
    vms: [],
  });
  // The durable as an older verifier created it: a 60 s ack wait.
  await bus.jsm.consumers.add(streams.events.name, {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.New,
    ack_wait: nanos(60_000),
    max_deliver: 20,
    filter_subject: subjects.evtOfType('SaveCompleted'),
  });
});

afterAll(async () => {
  await second?.stop();
  await crashed?.close().catch(() => undefined);
  await bus?.jsm.consumers.delete(streams.events.name, durable).catch(() => undefined);
  await bus?.close();
});

describe('verifier crash', () => {
  it('a restarted verifier gives the verdict of an unacked SaveCompleted within seconds', async () => {
    const request = SaveRequest.parse({ requestId: uniq('r'), vm: 'vm1', format: 'sparse', channels: 1 });
    const jobId = jobIdFor('save', request.requestId);
    let stuck = false;
    crashed = await Bus.connect({ servers: natsUrl, name: 'verifier-crashing' });
    await new StuckVerifier(crashed, jobId, () => {
      stuck = true;
    }).start();
    const info = await waitFor('the durable updated to the short ack wait', async () => {
      const i = await bus.jsm.consumers.info(streams.events.name, durable);
      return i.config.ack_wait === nanos(VERIFY_ACK_WAIT_MS) ? i : undefined;
    });
    expect(info.config.ack_wait).toBe(nanos(VERIFY_ACK_WAIT_MS));

    const base = { host, attempt: 1, fencingToken: 1 };
    const imagePath = '/nonexistent-vmsave-images/x.vmsave';
    const source = { source: 'executor' };
    const history: JobEvent[] = [
      makeEvent('SaveRequested', jobId, { request }, { source: 'scheduler' }),
      makeEvent('SaveScheduled', jobId, { ...base, deadlineAt: new Date(Date.now() + 600_000).toISOString() }, { source: 'scheduler' }),
      makeEvent('SaveStarted', jobId, { ...base, imagePath, format: 'sparse', channels: 1, directIo: false, wasRunning: false, ramBytes: 64 << 20 }, source),
      makeEvent(
        'SaveCompleted',
        jobId,
        { ...base, imagePath, format: 'sparse', bytes: 1, blocks: 0, durationMs: 100, throughputBytesPerSec: 10, vmState: 'paused', qemu: {} },
        source,
      ),
    ];
    for (const e of history) await publishEvent(bus, e);
    await waitFor('the first verifier in the middle of the verification', () => stuck);
    // The crash: the connection goes, the message is never acked.
    await crashed.close();
    const crashedAt = Date.now();
    second = await startVerifier(cfg, log);
    const verdict = await waitFor(
      'the verdict from the second verifier',
      async () => (await eventsOfJob(bus, jobId)).map((l) => l.event).find((e) => e.type === 'ImageVerified' || e.type === 'ImageRejected'),
      30_000,
      100,
    );
    expect(Date.now() - crashedAt).toBeLessThan(VERIFY_ACK_WAIT_MS + 5_000);
    expect(verdict).toMatchObject({ type: 'ImageRejected', source: 'verifier' });
  }, 60_000);

  it('a verification longer than the ack wait keeps its delivery (working), so it is not redelivered meanwhile', async () => {
    const slowDurable = `${durable}-slow`;
    const slowCfg = { ...cfg, VMSAVE_VERIFIER_NAME: slowDurable };
    const request = SaveRequest.parse({ requestId: uniq('r'), vm: 'vm1', format: 'sparse', channels: 1 });
    const jobId = jobIdFor('save', request.requestId);
    const deliveries: number[] = [];
    class SlowVerifier extends Verifier {
      override async onCompleted(e: JobEvent, working: () => void): Promise<Outcome> {
        if (e.jobId === jobId) {
          deliveries.push(Date.now());
          await new Promise((r) => setTimeout(r, VERIFY_ACK_WAIT_MS * 2.5));
        }
        return super.onCompleted(e, working);
      }
    }
    await bus.jsm.consumers.add(streams.events.name, {
      durable_name: slowDurable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      ack_wait: nanos(VERIFY_ACK_WAIT_MS),
      filter_subject: subjects.evtOfType('SaveCompleted'),
    });
    const slowBus = await Bus.connect({ servers: natsUrl, name: 'verifier-slow' });
    const slow = new SlowVerifier(slowBus, slowCfg, log);
    try {
      await slow.start();
      const base = { host, attempt: 1, fencingToken: 1 };
      const imagePath = '/nonexistent-vmsave-images/y.vmsave';
      const source = { source: 'executor' };
      await publishEvent(bus, makeEvent('SaveRequested', jobId, { request }, { source: 'scheduler' }));
      await publishEvent(bus, makeEvent('SaveScheduled', jobId, { ...base, deadlineAt: new Date(Date.now() + 600_000).toISOString() }, { source: 'scheduler' }));
      await publishEvent(
        bus,
        makeEvent('SaveStarted', jobId, { ...base, imagePath, format: 'sparse', channels: 1, directIo: false, wasRunning: false, ramBytes: 64 << 20 }, source),
      );
      await publishEvent(
        bus,
        makeEvent(
          'SaveCompleted',
          jobId,
          { ...base, imagePath, format: 'sparse', bytes: 1, blocks: 0, durationMs: 100, throughputBytesPerSec: 10, vmState: 'paused', qemu: {} },
          source,
        ),
      );
      await waitFor('the slow verdict', async () => (await eventsOfJob(bus, jobId)).some((l) => l.event.type === 'ImageRejected'), 30_000, 100);
      await new Promise((r) => setTimeout(r, 500));
      expect(deliveries).toHaveLength(1);
      expect((await bus.jsm.consumers.info(streams.events.name, slowDurable)).num_redelivered).toBe(0);
    } finally {
      await slow.stop();
      await slowBus.close();
      await bus.jsm.consumers.delete(streams.events.name, slowDurable).catch(() => undefined);
    }
  }, 60_000);
});
