import { access } from 'node:fs/promises';
import { JobEvent, streams, subjects, type HostAnnouncement, type ImageFingerprint, type VerificationCheck } from '@vmsave/contracts';
import { ack, eventsOfJob, publishEvent, readHosts, runConsumer, type Bus, type Logger, type Outcome } from '@vmsave/bus';
import { decide, fold } from '@vmsave/jobs';
import { fingerprintImage, sameFingerprint, verifyImage } from '@vmsave/image';
import type { VerifierConfig } from './config.ts';

const SOURCE = 'verifier';

/**
 * Verifies every image a save completed: on `SaveCompleted` it runs the image checks and
 * appends `ImageVerified` or `ImageRejected` with every check. Redelivery is harmless: the
 * job's history is folded first and a job already verified is skipped.
 */
export class Verifier {
  private readonly ac = new AbortController();
  private task?: Promise<void>;
  private readonly hosts = new Map<string, HostAnnouncement>();
  private readonly readable: (host: string) => boolean;

  constructor(private readonly bus: Bus, private readonly cfg: VerifierConfig, private readonly log: Logger) {
    const list = cfg.VMSAVE_VERIFY_HOSTS.split(',').map((h) => h.trim()).filter(Boolean);
    this.readable = (h) => list.includes('*') || list.includes(h);
  }

  async start(): Promise<void> {
    const signal = this.ac.signal;
    void (async () => {
      for await (const a of readHosts(this.bus, { follow: true, signal, onResume: (err, attempt) => this.log.warn({ err: (err as Error)?.message, attempt }, 'host announcements: read reopened') })) this.hosts.set(a.host, a);
    })().catch((err) => this.log.warn({ err }, 'host announcements stopped'));
    this.task = runConsumer(this.bus, {
      stream: streams.events.name,
      durable: this.cfg.VMSAVE_VERIFIER_NAME,
      filterSubject: subjects.evtOfType('SaveCompleted'),
      schema: JobEvent,
      service: SOURCE,
      concurrency: this.cfg.VMSAVE_VERIFY_CONCURRENCY,
      ackWaitMs: 60_000,
      log: this.log,
      signal,
      handler: (e, ctx) => this.onCompleted(e, () => ctx.working()),
    });
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.task?.catch(() => undefined);
  }

  async onCompleted(e: JobEvent, working: () => void): Promise<Outcome> {
    if (e.type !== 'SaveCompleted') return ack();
    const log = this.log.child({ jobId: e.jobId });
    const { host, imagePath } = e.data;
    if (!this.readable(host)) return ack();
    const state = fold((await eventsOfJob(this.bus, e.jobId)).map((l) => l.event));
    if (state.status !== 'completed') {
      log.info({ status: state.status }, 'job is not waiting for verification; skipping');
      return ack();
    }
    let checks: VerificationCheck[];
    let fingerprint: ImageFingerprint | undefined;
    const exists = await access(imagePath).then(() => true, () => false);
    if (!exists) {
      checks = [{ name: 'image.exists', status: 'fail', detail: `${imagePath} is not readable here (moved or deleted after the save?)` }];
    } else {
      const keepAlive = setInterval(working, 5000);
      try {
        const hostCaps = this.hosts.get(host)?.qemu;
        const before = await fingerprintImage(imagePath).catch(() => undefined);
        const r = await verifyImage(imagePath, { hostCaps });
        checks = r.checks.map((c) => ({ name: c.name, status: c.status, detail: c.detail }));
        // Only a file that did not change while it was read may be trusted later by its fingerprint.
        const after = await fingerprintImage(imagePath).catch(() => undefined);
        if (before && after && sameFingerprint(before, after)) fingerprint = after;
      } finally {
        clearInterval(keepAlive);
      }
    }
    const d = decide({ type: 'RecordVerification', imagePath, host, checks, fingerprint }, state, { source: SOURCE });
    if (!d.ok) {
      log.warn({ rule: d.rule }, d.message);
      return ack();
    }
    for (const ev of d.events) await publishEvent(this.bus, { ...ev, eventId: `${e.jobId}.${ev.type}` });
    const failed = checks.filter((c) => c.status === 'fail');
    if (failed.length) log.warn({ imagePath, failed: failed.map((c) => c.name) }, 'image rejected');
    else log.info({ imagePath, warnings: checks.filter((c) => c.status === 'warn').map((c) => c.name) }, 'image verified');
    return ack();
  }
}
