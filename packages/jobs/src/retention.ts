/**
 * Image retention: which images the log knows may be deleted, and by which rule. Pure: the
 * caller folds the log, says which VMs run now, and applies the plan (the executor, on its own
 * host's images).
 *
 * A policy keeps the newest `keepLast` verified images of each VM and every image younger than
 * `keepYoungerThanMs`; an image kept by neither is deleted. With both set, an image is deleted
 * only when both let it go (rule `keep-last`); with one, by that one. Rejected images and kept
 * partial images never count as a VM's last images. Two protections override every rule: an
 * image a queued or running restore needs is kept, and a VM that is not running keeps its newest
 * verified image (so never loses its only one).
 */
import type { JobState } from './state.ts';

export type RetentionRuleName = 'keep-last' | 'max-age';

export interface RetentionRule {
  keepLast?: number;
  keepYoungerThanMs?: number;
}

/** The default rule, and overrides per VM (first) and per host (second); an override replaces the whole rule. */
export interface RetentionPolicy extends RetentionRule {
  perVm?: Record<string, RetentionRule>;
  perHost?: Record<string, RetentionRule>;
}

export interface KnownImage {
  jobId: string;
  vm: string;
  host: string;
  imagePath: string;
  status: 'verified' | 'rejected' | 'failed-partial';
  /** When the image became what it is (its verdict, or its failure). */
  at: string;
  bytes?: number;
}

export interface Protections {
  /** VMs running now (their live state is the newest copy). */
  runningVms?: Iterable<string>;
  /** Images a queued or running job needs: `imageKey(host, path)`, or a path alone (any host). */
  neededImages?: Iterable<string>;
}

export type PlannedImage = KnownImage & ({ action: 'delete'; rule: RetentionRuleName; reason: string } | { action: 'keep'; reason: string });

export interface RetentionPlan {
  delete: Extract<PlannedImage, { action: 'delete' }>[];
  keep: Extract<PlannedImage, { action: 'keep' }>[];
}

export const imageKey = (host: string, imagePath: string): string => `${host}\0${imagePath}`;

const baseName = (p: string): string => p.slice(p.lastIndexOf('/') + 1);

/** The rule that applies to an image: its VM's override, else its host's, else the default. */
export function ruleFor(policy: RetentionPolicy, vm: string, host: string): RetentionRule {
  return policy.perVm?.[vm] ?? policy.perHost?.[host] ?? { keepLast: policy.keepLast, keepYoungerThanMs: policy.keepYoungerThanMs };
}

/** A VM's own retention, as its definition gives it (`VmDefinition.retention`). */
export interface VmRetentionSpec {
  name: string;
  retention?: { keepLast?: number; maxAgeMs?: number };
}

/**
 * The policy with each VM's own retention as its per-VM rule (a VM's definition wins over a
 * per-VM rule already there, and so over its host's and the default). VMs without one keep
 * whatever applied before.
 */
export function withVmRules(policy: RetentionPolicy, vms: Iterable<VmRetentionSpec>): RetentionPolicy {
  const perVm: Record<string, RetentionRule> = { ...policy.perVm };
  let any = false;
  for (const v of vms) {
    if (!v.retention || (v.retention.keepLast === undefined && v.retention.maxAgeMs === undefined)) continue;
    perVm[v.name] = {
      ...(v.retention.keepLast !== undefined ? { keepLast: v.retention.keepLast } : {}),
      ...(v.retention.maxAgeMs !== undefined ? { keepYoungerThanMs: v.retention.maxAgeMs } : {}),
    };
    any = true;
  }
  return any ? { ...policy, perVm } : policy;
}

/** The images on disk as the folded jobs say: final saves whose image was not deleted. */
export function imagesOf(jobs: Iterable<JobState>): KnownImage[] {
  const out: KnownImage[] = [];
  for (const s of jobs) {
    if (s.kind !== 'save' || !s.jobId || !s.vm || !s.host || s.imageDeleted) continue;
    const at = s.updatedAt ?? s.requestedAt ?? '';
    if ((s.status === 'verified' || s.status === 'rejected') && s.imagePath)
      out.push({ jobId: s.jobId, vm: s.vm, host: s.host, imagePath: s.imagePath, status: s.status, at, bytes: s.result?.bytes });
    else if (s.status === 'failed' && s.imageKept) out.push({ jobId: s.jobId, vm: s.vm, host: s.host, imagePath: s.imageKept, status: 'failed-partial', at });
  }
  return out;
}

/**
 * The images queued or running restores need (`imageKey(host, path)` when the host is known,
 * and the path alone, so a restore naming the image relatively protects it on any host).
 */
export function neededImagesOf(jobs: Iterable<JobState>): string[] {
  const out: string[] = [];
  for (const s of jobs) {
    if (s.kind !== 'restore' || !s.imagePath) continue;
    if (s.status !== 'requested' && s.status !== 'scheduled' && s.status !== 'running') continue;
    out.push(s.imagePath);
    const host = s.restoreRequest?.host ?? s.host;
    if (host) out.push(imageKey(host, s.imagePath));
  }
  return out;
}

/** Decide, for every known image, delete (with the rule) or keep (with why). */
export function planRetention(images: readonly KnownImage[], policy: RetentionPolicy, protections: Protections = {}, now: Date = new Date()): RetentionPlan {
  const running = new Set(protections.runningVms ?? []);
  const needed = new Set<string>();
  const neededNames = new Set<string>();
  for (const n of protections.neededImages ?? []) {
    needed.add(n);
    // A relative or differently rooted path still protects the file of that name.
    neededNames.add(baseName(n.includes('\0') ? n.slice(n.indexOf('\0') + 1) : n));
  }
  const isNeeded = (i: KnownImage) => needed.has(i.imagePath) || needed.has(imageKey(i.host, i.imagePath)) || neededNames.has(baseName(i.imagePath));

  const byVm = new Map<string, KnownImage[]>();
  for (const i of images) byVm.set(i.vm, [...(byVm.get(i.vm) ?? []), i]);
  const newestFirst = (a: KnownImage, b: KnownImage) => Date.parse(b.at) - Date.parse(a.at) || b.jobId.localeCompare(a.jobId);

  const plan: RetentionPlan = { delete: [], keep: [] };
  for (const [vm, list] of byVm) {
    const verified = list.filter((i) => i.status === 'verified').sort(newestFirst);
    const rank = new Map(verified.map((i, n) => [i.jobId, n]));
    for (const i of [...list].sort(newestFirst)) {
      const keep = (reason: string) => plan.keep.push({ ...i, action: 'keep', reason });
      if (isNeeded(i)) {
        keep('a queued or running restore needs it');
        continue;
      }
      if (i.status === 'verified' && rank.get(i.jobId) === 0 && !running.has(vm)) {
        keep(`newest verified image of ${vm}, which is not running`);
        continue;
      }
      const r = ruleFor(policy, vm, i.host);
      if (r.keepLast === undefined && r.keepYoungerThanMs === undefined) {
        keep('no retention rule applies');
        continue;
      }
      // Rejected and partial images are behind every verified one newer than them.
      const position = i.status === 'verified' ? rank.get(i.jobId)! : verified.filter((v) => newestFirst(v, i) < 0).length;
      const ageMs = now.getTime() - Date.parse(i.at);
      const keptByLast = r.keepLast !== undefined && position < r.keepLast;
      const keptByAge = r.keepYoungerThanMs !== undefined && ageMs < r.keepYoungerThanMs;
      if (keptByLast)
        keep(
          i.status === 'verified' ? `among the newest ${r.keepLast} verified images of ${vm}` : `${i.status} image with fewer than ${r.keepLast} newer verified images of ${vm}`,
        );
      else if (keptByAge) keep(`younger than ${r.keepYoungerThanMs} ms`);
      else if (r.keepLast !== undefined)
        plan.delete.push({ ...i, action: 'delete', rule: 'keep-last', reason: `${position} newer verified image(s) of ${vm}; keep-last ${r.keepLast}` });
      else plan.delete.push({ ...i, action: 'delete', rule: 'max-age', reason: `${Math.round(ageMs / 1000)} s old; max-age ${Math.round(r.keepYoungerThanMs! / 1000)} s` });
    }
  }
  return plan;
}

/** Parse a duration: `90s`, `30m`, `12h`, `7d`, `2w`, `500ms`, or milliseconds as a bare number; undefined if it is none. */
export function parseDurationMs(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?$/.exec(text.trim());
  if (!m) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[(m[2] ?? 'ms') as 'ms'];
  return Math.round(Number(m[1]) * unit);
}
