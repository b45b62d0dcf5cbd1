/**
 * The verifier's decisions, pure: which `SaveCompleted` it verifies, whether an image path may be
 * read at all, which fingerprint it may vouch for, and what it records (through `@vmsave/jobs`
 * `decide`: any failed check makes `ImageRejected`, otherwise `ImageVerified`). The wiring that
 * reads the log, the file system and the image is in verifier.ts.
 */
import path from 'node:path';
import type { EventOf, ImageFingerprint, SealSummary, VerificationCheck } from '@vmsave/contracts';
import { decide, type Decision, type JobState } from '@vmsave/jobs';
import type { VerifyResult } from '@vmsave/image';

export const SOURCE = 'verifier';

/** Check names the verifier adds to the image's own checks (`CHECK_NAMES` of `@vmsave/image`). */
export const PRE_CHECKS = ['image.exists', 'image.location'] as const;

/**
 * `VMSAVE_VERIFY_HOSTS` (comma-separated host names, or `*`) as a predicate: whose images this
 * verifier reads. Images of other hosts are left to their own verifier.
 */
export function hostFilter(list: string): (host: string) => boolean {
  const hosts = list
    .split(',')
    .map((h) => h.trim())
    .filter(Boolean);
  return (h) => hosts.includes('*') || hosts.includes(h);
}

export type Plan = { verify: true } | { verify: false; reason: 'other-host' | 'not-waiting'; detail: string };

/**
 * Whether a `SaveCompleted` is this verifier's to verify now, given the job's folded history.
 * Redeliveries and replays are harmless: a job already verified (or rejected, failed, …) is skipped.
 */
export function planVerification(e: EventOf<'SaveCompleted'>, state: JobState, readable: (host: string) => boolean): Plan {
  if (!readable(e.data.host)) return { verify: false, reason: 'other-host', detail: `host ${e.data.host} is not in VMSAVE_VERIFY_HOSTS` };
  if (state.kind !== 'save' || state.status !== 'completed') {
    return { verify: false, reason: 'not-waiting', detail: `job is ${state.kind ?? 'unknown'} ${state.status}, not a completed save waiting for verification` };
  }
  return { verify: true };
}

/** What the wiring found out about an image path before reading it (realpaths resolved here). */
export interface PathFacts {
  /** The path in `SaveCompleted`. */
  imagePath: string;
  /** False when the file is not there or not readable. */
  readable: boolean;
  /** The file's real path (symlinks resolved), when it exists. */
  realPath?: string;
  /** True when the real path is a regular file (not a FIFO, device, directory). */
  regularFile?: boolean;
  /** Real paths of the image directories the host announced (known to this verifier). */
  imageDirs: readonly string[];
  host: string;
}

const inside = (dir: string, p: string): boolean => {
  const rel = path.relative(dir, p);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
};

/**
 * The checks that decide whether the image may be opened at all: it must exist, be a regular file,
 * and lie (symlinks resolved) inside an image directory its host announced — a `SaveCompleted`
 * naming any other file is refused without reading it. Returns the failed check, or undefined.
 */
export function preCheck(f: PathFacts): VerificationCheck | undefined {
  if (!f.readable) return { name: 'image.exists', status: 'fail', detail: `${f.imagePath} is not readable here (moved or deleted after the save?)` };
  if (!path.isAbsolute(f.imagePath) || /[\0\n\r]/.test(f.imagePath)) {
    return { name: 'image.location', status: 'fail', detail: `image path ${JSON.stringify(f.imagePath)} is not an absolute path; not read` };
  }
  if (f.imageDirs.length === 0) {
    return { name: 'image.location', status: 'fail', detail: `host ${f.host} has announced no image directory this verifier can see; ${f.imagePath} was not read` };
  }
  const real = f.realPath ?? f.imagePath;
  if (!f.imageDirs.some((d) => inside(d, real))) {
    const via = real !== f.imagePath ? ` (it resolves to ${real})` : '';
    return {
      name: 'image.location',
      status: 'fail',
      detail: `${f.imagePath}${via} is outside the image directory of host ${f.host} (${f.imageDirs.join(', ')}); not read`,
    };
  }
  if (f.regularFile === false) return { name: 'image.location', status: 'fail', detail: `${f.imagePath} is not a regular file; not read` };
  return undefined;
}

/** The image checks as the events carry them. */
export function checksOf(r: VerifyResult): VerificationCheck[] {
  return r.checks.map((c) => ({ name: c.name, status: c.status, detail: c.detail }));
}

/** Only a file that did not change while it was read may be trusted later by its fingerprint. */
export function trustedFingerprint(
  before: ImageFingerprint | undefined,
  after: ImageFingerprint | undefined,
  same: (a: ImageFingerprint, b: ImageFingerprint) => boolean,
): ImageFingerprint | undefined {
  return before && after && same(before, after) ? after : undefined;
}

/** `ImageVerified` when no check failed, `ImageRejected` otherwise, or the rule the job's state breaks. */
export function recordVerification(
  state: JobState,
  v: { imagePath: string; host: string; checks: VerificationCheck[]; fingerprint?: ImageFingerprint; content?: 'state' | 'full'; seal?: SealSummary },
  now?: Date,
): Decision {
  const cmd = {
    type: 'RecordVerification' as const,
    imagePath: v.imagePath,
    host: v.host,
    checks: v.checks,
    ...(v.fingerprint ? { fingerprint: v.fingerprint } : {}),
    ...(v.content ? { content: v.content } : {}),
    ...(v.seal ? { seal: v.seal } : {}),
  };
  return decide(cmd, state, now ? { source: SOURCE, now } : { source: SOURCE });
}

const summaryText = (s: SealSummary): string => `${s.algorithm}, ${s.chunks} chunk(s) of ${s.chunkBytes} B, state ${s.stateDigest}, RAM ${s.ramDigest}`;

/**
 * Check `seal.summary`: the seal the image holds against the one recorded when it was written
 * (`SaveCompleted.seal`) or last verified. None on either side and nothing to compare: no check.
 * A seal that changed or vanished means the descriptor was rewritten after the save: fail.
 */
export function sealSummaryCheck(recorded: SealSummary | undefined, found: SealSummary | undefined, recordedBy = 'SaveCompleted'): VerificationCheck | undefined {
  if (!recorded && !found) return undefined;
  if (!recorded) return { name: 'seal.summary', status: 'skip', detail: `${recordedBy} recorded no seal to compare with the image's (${summaryText(found!)})` };
  if (!found)
    return { name: 'seal.summary', status: 'fail', detail: `${recordedBy} recorded a seal (${summaryText(recorded)}) but the image has none: its descriptor was rewritten` };
  const differ = (['algorithm', 'chunkBytes', 'chunks', 'stateDigest', 'ramDigest'] as const).filter((k) => recorded[k] !== found[k]);
  if (differ.length === 0) return { name: 'seal.summary', status: 'pass', detail: `the image's seal is the one ${recordedBy} recorded (${summaryText(found)})` };
  return {
    name: 'seal.summary',
    status: 'fail',
    detail: `the image's seal differs from the one ${recordedBy} recorded in ${differ.map((k) => `${k} (${String(found[k])}, recorded ${String(recorded[k])})`).join(', ')}`,
  };
}

/** A verified image the scrub re-reads: the job that wrote it and where it is. */
export interface ScrubTarget {
  jobId: string;
  host: string;
  imagePath: string;
  /** The seal recorded with the verdict (`ImageVerified.seal`), if any. */
  seal?: SealSummary;
}

/** The images the content scrub reads: those of verified saves, of hosts this verifier reads. */
export function scrubTargets(jobs: Iterable<{ state: JobState; seal?: SealSummary }>, readable: (host: string) => boolean): ScrubTarget[] {
  const out: ScrubTarget[] = [];
  for (const { state: s, seal } of jobs) {
    // An image retention deleted (`ImageDeleted`) is gone: nothing to scrub.
    if (s.kind !== 'save' || s.status !== 'verified' || s.imageDeleted || !s.jobId || !s.host || !s.imagePath || !readable(s.host)) continue;
    out.push({ jobId: s.jobId, host: s.host, imagePath: s.imagePath, ...(seal ? { seal } : {}) });
  }
  return out;
}

/**
 * What a scrub of one verified image records: nothing when every check passed (or the image has
 * no seal to check), else `ImageRejected` with `scrub: true` and the checks (`seal.ram`,
 * `seal.state`, `seal.summary`, …), through `decide`: the job moves from verified to rejected.
 */
export function recordScrub(state: JobState, v: { imagePath: string; host: string; checks: VerificationCheck[]; seal?: SealSummary }, now?: Date): Decision {
  if (!v.checks.some((c) => c.status === 'fail')) return { ok: true, events: [] };
  const cmd = { type: 'RecordScrubDamage' as const, imagePath: v.imagePath, host: v.host, checks: v.checks, ...(v.seal ? { seal: v.seal } : {}) };
  return decide(cmd, state, now ? { source: SOURCE, now } : { source: SOURCE });
}
