import { setTimeout as sleep } from 'node:timers/promises';
import type { SealSummary, VerificationCheck } from '@vmsave/contracts';
import { eventsOfJob, publishEvent, readLog, type Bus, type Logger } from '@vmsave/bus';
import { evolve, fold, initialState, type JobState } from '@vmsave/jobs';
import { checkSeal } from '@vmsave/image/node';
import { preCheck, recordScrub, scrubTargets, sealSummaryCheck, type ScrubTarget } from './decisions.ts';
import { pathFacts } from './path-facts.ts';

export interface ScrubberOptions {
  bus: Bus;
  log: Logger;
  /** Read rate cap in bytes/s (`VMSAVE_SCRUB_BYTES_PER_SEC`, > 0). */
  bytesPerSec: number;
  /** Pause between passes (`VMSAVE_SCRUB_INTERVAL_MS`). */
  intervalMs: number;
  /** Whose images this verifier reads (`VMSAVE_VERIFY_HOSTS`). */
  readable: (host: string) => boolean;
  /** Real paths of the image directories a host announced. */
  imageDirsOf: (host: string) => Promise<string[]>;
  signal: AbortSignal;
  /** Log a progress line per image at most this often (default 10 s). */
  progressEveryMs?: number;
  /** Bytes each image's check read (the service counts them into `vmsave_scrub_bytes_total`). */
  onBytesRead?: (bytes: number) => void;
}

/** What one pass did. */
export interface ScrubPass {
  scrubbed: number;
  damaged: string[];
  skipped: number;
  bytesRead: number;
}

/**
 * The content scrub: over and over, every verified image of this verifier's hosts is read whole
 * against its seal (`checkSeal` scope `full`, at a capped rate), to find damage that appeared
 * after the verdict (bit rot, a bad copy, a stray write). A damaged image's job gets
 * `ImageRejected` with `scrub: true` and moves from verified to rejected (decisions.ts
 * `recordScrub`). The jobs come from folding the event log, read on from where the last pass
 * stopped; an image gone or moved out of its host's image directory is skipped, not rejected.
 */
export class Scrubber {
  private readonly jobs = new Map<string, JobState>();
  /** The seal each verdict recorded (`ImageVerified.seal`). */
  private readonly verifiedSeals = new Map<string, SealSummary>();
  private lastSeq = 0;
  passes = 0;

  constructor(private readonly o: ScrubberOptions) {}

  /** Passes until the signal aborts; never throws (a failed pass is logged, the next one follows). */
  async run(): Promise<void> {
    const { signal, log } = this.o;
    log.info({ bytesPerSec: this.o.bytesPerSec, intervalMs: this.o.intervalMs }, 'content scrub running');
    while (!signal.aborted) {
      try {
        const p = await this.pass();
        if (p.scrubbed || p.damaged.length) log.info({ ...p, pass: this.passes }, 'content scrub pass done');
      } catch (err) {
        if (signal.aborted) break;
        log.warn({ err: (err as Error)?.message }, 'content scrub pass failed; the next pass retries');
      }
      await sleep(this.o.intervalMs, undefined, { signal }).catch(() => undefined);
    }
  }

  /** One pass over the verified images the log knows now. */
  async pass(): Promise<ScrubPass> {
    await this.catchUp();
    const targets = scrubTargets(
      [...this.jobs.values()].map((state) => ({ state, seal: this.verifiedSeals.get(state.jobId!) })),
      this.o.readable,
    );
    const out: ScrubPass = { scrubbed: 0, damaged: [], skipped: 0, bytesRead: 0 };
    for (const t of targets) {
      if (this.o.signal.aborted) break;
      const r = await this.scrubOne(t);
      if (r === 'skipped') out.skipped++;
      else {
        this.o.onBytesRead?.(r.bytesRead);
        out.scrubbed++;
        out.bytesRead += r.bytesRead;
        if (r.damaged) out.damaged.push(t.jobId);
      }
    }
    this.passes++;
    return out;
  }

  /** Fold the events appended since the last pass. */
  private async catchUp(): Promise<void> {
    for await (const { seq, event } of readLog(this.o.bus, { fromSeq: this.lastSeq + 1, signal: this.o.signal })) {
      this.lastSeq = seq;
      this.jobs.set(event.jobId, evolve(this.jobs.get(event.jobId) ?? initialState(), event));
      if (event.type === 'ImageVerified' && event.data.seal) this.verifiedSeals.set(event.jobId, event.data.seal);
    }
  }

  private async scrubOne(t: ScrubTarget): Promise<'skipped' | { bytesRead: number; damaged: boolean }> {
    const log = this.o.log.child({ jobId: t.jobId });
    const facts = await pathFacts(t.imagePath, t.host, this.o.imageDirsOf);
    const refused = preCheck(facts);
    if (refused) {
      log.info({ imagePath: t.imagePath, check: refused.name }, `content scrub skips the image: ${refused.detail}`);
      return 'skipped';
    }
    const every = this.o.progressEveryMs ?? 10_000;
    let lastLine = Date.now();
    log.info({ imagePath: t.imagePath, bytesPerSec: this.o.bytesPerSec }, 'content scrub of the image started');
    // The checked real path, not the name: a symlink swapped in after preCheck is not followed.
    const sc = await checkSeal(facts.realPath ?? t.imagePath, {
      scope: 'full',
      maxBytesPerSec: this.o.bytesPerSec,
      signal: this.o.signal,
      onProgress: (done, total) => {
        const now = Date.now();
        if (now - lastLine < every) return;
        lastLine = now;
        log.info({ imagePath: t.imagePath, done, total, percent: total > 0 ? Math.round((done / total) * 100) : 100 }, 'content scrub progress');
      },
    });
    if (!sc.sealed && !t.seal) {
      log.info({ imagePath: t.imagePath }, 'content scrub: the image has no seal; nothing to check');
      return { bytesRead: sc.bytesRead, damaged: false };
    }
    const checks: VerificationCheck[] = sc.checks.map((c) => ({ name: c.name, status: c.status, detail: c.detail }));
    const summary = sealSummaryCheck(t.seal, sc.summary, 'ImageVerified');
    if (summary && summary.status === 'fail') checks.push(summary);
    const failed = checks.filter((c) => c.status === 'fail');
    if (failed.length === 0) {
      log.info({ imagePath: t.imagePath, bytesRead: sc.bytesRead, durationMs: Math.round(sc.durationMs) }, 'content scrub: the image matches its seal');
      return { bytesRead: sc.bytesRead, damaged: false };
    }
    // Decided against the job's history as it is now, not as the pass found it.
    const state = fold((await eventsOfJob(this.o.bus, t.jobId)).map((l) => l.event));
    const d = recordScrub(state, { imagePath: t.imagePath, host: t.host, checks, ...(sc.summary ? { seal: sc.summary } : {}) });
    if (!d.ok) {
      log.warn({ rule: d.rule, imagePath: t.imagePath }, `content scrub found damage but records nothing: ${d.message}`);
      return { bytesRead: sc.bytesRead, damaged: true };
    }
    for (const ev of d.events) await publishEvent(this.o.bus, ev);
    log.warn(
      { imagePath: t.imagePath, failed: failed.map((c) => c.name), mismatches: sc.mismatches.slice(0, 8) },
      `content scrub: the image is damaged since its verification: ${failed.map((c) => `${c.name}: ${c.detail}`).join('; ')}`,
    );
    return { bytesRead: sc.bytesRead, damaged: true };
  }
}
