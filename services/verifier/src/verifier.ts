import { realpath } from 'node:fs/promises';
import { JobEvent, streams, subjects, type HostAnnouncement, type ImageFingerprint, type SealSummary, type VerificationCheck } from '@vmsave/contracts';
import { ack, eventsOfJob, publishEvent, readHosts, runConsumer, type Bus, type Logger, type Outcome } from '@vmsave/bus';
import { fold } from '@vmsave/jobs';
import { fingerprintImage, readImage, sameFingerprint, sealSummary, verifyImage } from '@vmsave/image/node';
import type { VerifierConfig } from './config.ts';
import { checksOf, hostFilter, planVerification, preCheck, recordVerification, sealSummaryCheck, trustedFingerprint } from './decisions.ts';
import { pathFacts } from './path-facts.ts';
import { Scrubber } from './scrub.ts';

/**
 * Ack wait of the verifier's durable: how long a `SaveCompleted` whose verifier crashed waits
 * before another verifier gets it. Kept short; a verification in progress calls `working()`
 * every {@link KEEP_ALIVE_MS}, so a long one is never redelivered meanwhile. `runConsumer` updates
 * an existing durable to it.
 */
export const VERIFY_ACK_WAIT_MS = 5_000;
const KEEP_ALIVE_MS = 1_000;
/** The durable that takes the scheduler's re-verification requests (`VerificationOverdue` notice 1). */
export const overdueDurable = (name: string): string => `${name}-overdue`;

/**
 * Verifies every image a save completed: on `SaveCompleted` it runs the image checks (a sealed
 * image's device state against its seal among them, and its seal against `SaveCompleted.seal`:
 * `seal.summary`) and appends `ImageVerified` or `ImageRejected` with every check and the seal
 * summary. With `VMSAVE_SCRUB_BYTES_PER_SEC` > 0 it also runs the content scrub (scrub.ts). Redelivery is harmless: the
 * job's history is folded first and a job already verified is skipped. It reads only regular
 * files inside an image directory their host announced (decisions.ts `preCheck`).
 */
export class Verifier {
  private readonly ac = new AbortController();
  private task?: Promise<void>;
  private readonly hosts = new Map<string, HostAnnouncement>();
  /** Every image directory each host announced since this verifier started (a restarted executor may move it). */
  private readonly imageDirs = new Map<string, Set<string>>();
  private readonly readable: (host: string) => boolean;
  /** The content scrub, when `VMSAVE_SCRUB_BYTES_PER_SEC` > 0. */
  scrubber?: Scrubber;

  constructor(
    private readonly bus: Bus,
    private readonly cfg: VerifierConfig,
    private readonly log: Logger,
    private readonly hooks: { onScrubBytes?: (bytes: number) => void } = {},
  ) {
    this.readable = hostFilter(cfg.VMSAVE_VERIFY_HOSTS);
  }

  async start(): Promise<void> {
    const signal = this.ac.signal;
    void (async () => {
      for await (const a of readHosts(this.bus, {
        follow: true,
        signal,
        onResume: (err, attempt) => this.log.warn({ err: (err as Error)?.message, attempt }, 'host announcements: read reopened'),
      }))
        this.noteHost(a);
    })().catch((err) => this.log.warn({ err }, 'host announcements stopped'));
    // Redelivery is harmless (the history is folded first); a message that waits in the client's
    // buffer behind a long verification is redelivered every ack wait, so allow many. The whole
    // handler, not only the image read, keeps the delivery: the ack wait is short.
    const verdictsOn = (durable: string, type: 'SaveCompleted' | 'VerificationOverdue', concurrency?: number) =>
      runConsumer(this.bus, {
        stream: streams.events.name,
        durable,
        filterSubject: subjects.evtOfType(type),
        schema: JobEvent,
        service: 'verifier',
        ...(concurrency !== undefined ? { concurrency } : {}),
        ackWaitMs: VERIFY_ACK_WAIT_MS,
        maxDeliver: 1000,
        log: this.log,
        signal,
        handler: async (e, ctx) => {
          const keepAlive = setInterval(() => ctx.working(), KEEP_ALIVE_MS);
          try {
            return await this.onCompleted(e, () => ctx.working());
          } finally {
            clearInterval(keepAlive);
          }
        },
      });
    const verdicts = verdictsOn(this.cfg.VMSAVE_VERIFIER_NAME, 'SaveCompleted', this.cfg.VMSAVE_VERIFY_CONCURRENCY);
    // The scheduler's verdict watchdog asks again with `VerificationOverdue` notice 1 (a
    // `SaveCompleted` dead-lettered, or its durable disabled): handled like that `SaveCompleted`,
    // from a durable of its own (NATS 2.9 filters a consumer on one subject).
    const overdue = verdictsOn(overdueDurable(this.cfg.VMSAVE_VERIFIER_NAME), 'VerificationOverdue');
    // The content scrub re-reads verified images against their seals (off with 0 bytes/s).
    if (this.cfg.VMSAVE_SCRUB_BYTES_PER_SEC > 0) {
      this.scrubber = new Scrubber({
        bus: this.bus,
        log: this.log,
        bytesPerSec: this.cfg.VMSAVE_SCRUB_BYTES_PER_SEC,
        intervalMs: this.cfg.VMSAVE_SCRUB_INTERVAL_MS,
        readable: this.readable,
        imageDirsOf: (h) => this.imageDirsOf(h),
        signal,
        onBytesRead: this.hooks.onScrubBytes,
      });
    }
    const scrub = this.scrubber?.run() ?? Promise.resolve();
    this.task = Promise.all([verdicts, overdue, scrub]).then(() => undefined);
  }

  async stop(): Promise<void> {
    this.ac.abort();
    await this.task?.catch(() => undefined);
  }

  private noteHost(a: HostAnnouncement): void {
    this.hosts.set(a.host, a);
    let dirs = this.imageDirs.get(a.host);
    if (!dirs) {
      dirs = new Set();
      this.imageDirs.set(a.host, dirs);
    }
    dirs.add(a.imageDir);
  }

  /** The real paths of the host's announced image directories; reads the hosts stream once if the host is not known yet. */
  private async imageDirsOf(host: string): Promise<string[]> {
    if (!this.imageDirs.has(host)) for await (const a of readHosts(this.bus, { signal: this.ac.signal })) this.noteHost(a);
    const real = await Promise.all([...(this.imageDirs.get(host) ?? [])].map((d) => realpath(d).catch(() => undefined)));
    return real.filter((d): d is string => d !== undefined);
  }

  async onCompleted(e: JobEvent, working: () => void): Promise<Outcome> {
    if (e.type === 'VerificationOverdue') {
      // Notice 1 asks for the verification again: of the `SaveCompleted` of that attempt.
      if (e.data.notice !== 1 || !this.readable(e.data.host)) return ack();
      const completed = (await eventsOfJob(this.bus, e.jobId)).map((l) => l.event).find((c) => c.type === 'SaveCompleted' && c.data.attempt === e.data.attempt);
      if (!completed) return ack();
      this.log.warn({ jobId: e.jobId, waitedMs: e.data.waitedMs }, 'verification asked again: the verdict is overdue');
      return this.onCompleted(completed, working);
    }
    if (e.type !== 'SaveCompleted') return ack();
    const log = this.log.child({ jobId: e.jobId });
    const { host, imagePath } = e.data;
    if (!this.readable(host)) return ack();
    const state = fold((await eventsOfJob(this.bus, e.jobId)).map((l) => l.event));
    const plan = planVerification(e, state, this.readable);
    if (!plan.verify) {
      log.info({ status: state.status, reason: plan.reason }, `${plan.detail}; skipping`);
      return ack();
    }
    let checks: VerificationCheck[];
    let fingerprint: ImageFingerprint | undefined;
    let seal: SealSummary | undefined;
    const facts = await pathFacts(imagePath, host, (h) => this.imageDirsOf(h));
    const { realPath } = facts;
    const refused = preCheck(facts);
    if (refused) {
      checks = [refused];
    } else {
      const keepAlive = setInterval(working, KEEP_ALIVE_MS);
      try {
        // The checked real path, not the name: a symlink swapped in after preCheck is not followed.
        const file = realPath ?? imagePath;
        const hostCaps = this.hosts.get(host)?.qemu;
        const before = await fingerprintImage(file).catch(() => undefined);
        // Sealed images: `seal.state` (the device state against its digest) is among the checks.
        checks = checksOf(await verifyImage(file, { hostCaps }));
        seal = await sealOf(file);
        const summary = sealSummaryCheck(e.data.seal, seal);
        if (summary) checks.push(summary);
        const after = await fingerprintImage(file).catch(() => undefined);
        fingerprint = trustedFingerprint(before, after, sameFingerprint);
      } finally {
        clearInterval(keepAlive);
      }
    }
    const d = recordVerification(state, { imagePath, host, checks, ...(fingerprint ? { fingerprint } : {}), ...(seal ? { seal, content: 'state' as const } : {}) });
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

/** The seal summary in the image's descriptor, if it has one (an unreadable image has none: its checks say why). */
async function sealOf(file: string): Promise<SealSummary | undefined> {
  const info = await readImage(file).catch(() => undefined);
  const seal = info?.descriptor.seal;
  return seal ? sealSummary(seal) : undefined;
}
