import path from 'node:path';
import type { HostAnnouncement, Priority, RestoreRequest, SaveFormat, SaveRequest, VmSummary } from '@vmsave/contracts';
import { fmtBytes } from '@vmsave/jobs';

/** A broken admission rule, as it goes into SaveRejected / RestoreRejected. */
export interface Refusal {
  rule: string;
  field?: string;
  message: string;
}

export interface HostView {
  announcement: HostAnnouncement;
  /** Last time the host was heard from (announcement or heartbeat), ms since epoch. */
  lastSeenMs: number;
}

export interface SaveAdmission {
  host: string;
  vm: VmSummary;
  format: SaveFormat;
  ramBytes: number;
}

const MiB = 1024 * 1024;

/** Worst-case bytes a save of `ramBytes` needs free on the image directory. */
export function requiredFreeBytes(format: SaveFormat, ramBytes: number): number {
  // A paused guest writes each page once; legacy adds per-page headers (~0.2 %) and device state.
  return format === 'legacy' ? Math.ceil(ramBytes * 1.01) + 64 * MiB : ramBytes + 64 * MiB;
}

/**
 * An image path a client may ask for: relative to the image directory, or absolute inside it.
 * Returns the path relative to the image directory, or a refusal. Symlinks are the executor's
 * check (it can see the file system); this refuses what is wrong on its face.
 */
export function checkImagePath(p: string, imageDir: string, field = 'image'): { rel: string } | Refusal {
  if (/[\0\n\r]/.test(p)) return { rule: 'image-path', field, message: `${field}: must not contain NUL or line breaks` };
  let rel = p;
  if (path.isAbsolute(p)) {
    rel = path.relative(imageDir, path.normalize(p));
    if (rel.startsWith('..') || path.isAbsolute(rel)) return { rule: 'image-path', field, message: `${field}: ${p} is outside the host's image directory ${imageDir}` };
  }
  if (rel.split(/[\\/]/).includes('..')) return { rule: 'image-path', field, message: `${field}: ".." is not allowed` };
  rel = path.normalize(rel);
  if (rel === '.' || rel === '' || rel.endsWith('/')) return { rule: 'image-path', field, message: `${field}: must name a file` };
  return { rel };
}

export interface AdmitOptions {
  nowMs: number;
  /** A host not heard from for this long is offline. */
  hostOfflineMs: number;
  /** Jobs per host and limits: where a restore of a replicated image goes when its writer is offline (default: no load, no limit). */
  load?: HostLoad;
}

/** Admission of a save request: every rule, each refusal naming the field and the rule. */
export function admitSave(req: SaveRequest, hosts: Iterable<HostView>, opts: AdmitOptions): SaveAdmission | Refusal {
  let found: { h: HostView; vm: VmSummary } | undefined;
  for (const h of hosts) {
    const vm = h.announcement.vms.find((v) => v.name === req.vm);
    if (vm && (!found || opts.nowMs - h.lastSeenMs < opts.nowMs - found.h.lastSeenMs)) found = { h, vm };
  }
  if (!found) return { rule: 'vm-exists', field: 'vm', message: `vm: no announced host has a VM named "${req.vm}"` };
  const { h, vm } = found;
  const a = h.announcement;
  if (opts.nowMs - h.lastSeenMs > opts.hostOfflineMs) {
    return { rule: 'host-online', field: 'vm', message: `vm: host ${a.host} of "${req.vm}" has not been heard from for ${Math.round((opts.nowMs - h.lastSeenMs) / 1000)} s` };
  }
  if (vm.status === 'stopped') return { rule: 'vm-running', field: 'vm', message: `vm: "${req.vm}" has no QEMU running on ${a.host}; nothing to save` };

  const format = chooseFormat(req, a);
  if ('rule' in format) return format;
  if (req.image !== undefined) {
    const p = checkImagePath(req.image, a.imageDir);
    if ('rule' in p) return p;
  }
  const ramBytes = vm.memoryMiB * MiB;
  const need = requiredFreeBytes(format.format, ramBytes);
  if (a.freeBytes < need) {
    return {
      rule: 'free-space',
      field: 'vm',
      message: `host ${a.host} has ${fmtBytes(a.freeBytes)} free in ${a.imageDir}; a ${format.format} save of ${req.vm} (${vm.memoryMiB} MiB RAM) needs up to ${fmtBytes(need)}`,
    };
  }
  if (a.imageQuotaBytes !== undefined && (a.imageUsedBytes ?? 0) + need > a.imageQuotaBytes) {
    return {
      rule: 'quota',
      field: 'vm',
      message: `host ${a.host}'s image directory ${a.imageDir} has a quota of ${fmtBytes(a.imageQuotaBytes)} and uses ${fmtBytes(a.imageUsedBytes ?? 0)}; a ${format.format} save of ${req.vm} (${vm.memoryMiB} MiB RAM) needs up to ${fmtBytes(need)} (prune images: vmsave images prune)`,
    };
  }
  return { host: a.host, vm, format: format.format, ramBytes };
}

/** The format a save will use: `auto` is sparse where QEMU has mapped-ram, legacy otherwise. */
export function chooseFormat(req: Pick<SaveRequest, 'format' | 'channels' | 'directIo'>, a: Pick<HostAnnouncement, 'host' | 'qemu'>): { format: SaveFormat } | Refusal {
  const needsSparse = req.directIo || req.channels > 1;
  let format: SaveFormat;
  if (req.format === 'auto') format = a.qemu.mappedRam ? 'sparse' : 'legacy';
  else format = req.format;
  if (format === 'sparse' && !a.qemu.mappedRam)
    return { rule: 'format-supported', field: 'format', message: `format: host ${a.host}'s QEMU ${a.qemu.version} has no mapped-ram; sparse needs QEMU ≥ 9.0` };
  if (format === 'legacy' && needsSparse) {
    return req.directIo
      ? { rule: 'direct-io-needs-sparse', field: 'directIo', message: 'directIo: direct IO needs the sparse format (QEMU applies it only with mapped-ram)' }
      : { rule: 'channels-need-sparse', field: 'channels', message: 'channels: more than one channel needs the sparse format' };
  }
  if (req.directIo && !a.qemu.directIo)
    return { rule: 'direct-io-supported', field: 'directIo', message: `directIo: host ${a.host}'s QEMU ${a.qemu.version} has no direct-io; it needs QEMU ≥ 9.1` };
  return { format };
}

export interface RestoreAdmission {
  host: string;
  imageRel: string;
  vm?: string;
  sourceJobId?: string;
  /**
   * A replicated image restored on a host other than its writer, named by a path of the writer's
   * image directory (as `SaveCompleted.data.imagePath` gives it): its name inside the image
   * directory, which the work item carries instead (the executor fetches it under that name).
   */
  imageOnHost?: string;
}

/** Where an image lives, from the log: the host that wrote it and its save job. */
export interface KnownImage {
  host: string;
  imagePath: string;
  vm: string;
  jobId: string;
  verified: boolean;
  /** Copied into the bus's object store (`ImageReplicated`): any host can fetch and restore it. */
  replicated?: boolean;
  /** The image's format (a sparse image needs mapped-ram on the host that restores it). */
  format?: SaveFormat;
  /** Bytes the image takes on disk (allocated, else its length), when the save recorded them. */
  bytes?: number;
  /** Deleted from its host by retention (`ImageDeleted`): restorable only from its copy on the bus. */
  deleted?: { at: string; rule: string; host: string };
}

/** Load of the hosts, for placing a restore of a replicated image: jobs on or queued for a host, and its limit. */
export interface HostLoad {
  jobsOf: (host: string) => number;
  limitOf: (host: string) => number;
}

export function admitRestore(req: RestoreRequest, hosts: Map<string, HostView>, known: KnownImage[], opts: AdmitOptions): RestoreAdmission | Refusal {
  const online = (h: HostView | undefined): boolean => !!h && opts.nowMs - h.lastSeenMs <= opts.hostOfflineMs;
  const matches = (k: KnownImage, imageDir: string) => {
    const rel = checkImagePath(req.image, imageDir);
    return 'rel' in rel && (k.imagePath === req.image || path.relative(imageDir, k.imagePath) === rel.rel);
  };
  /** The image as its writer names it (its own image directory). */
  const written = (k: KnownImage) => {
    const h = hosts.get(k.host);
    return !!h && matches(k, h.announcement.imageDir);
  };
  let host: HostView | undefined;
  let image: KnownImage | undefined;
  if (req.host) {
    host = hosts.get(req.host);
    if (!host) return { rule: 'host-exists', field: 'host', message: `host: no executor has announced host "${req.host}"` };
    image = known.find((k) => k.host === req.host && matches(k, host!.announcement.imageDir));
    // Written elsewhere but replicated: the named host fetches it from the object store first.
    image ??= [...known].reverse().find((k) => k.host !== req.host && k.replicated && written(k));
  } else {
    image = [...known].reverse().find(written);
    host = image ? hosts.get(image.host) : undefined;
    if (image && !online(host)) {
      // The writer is away: any host that shares the image directory can restore it,
      const shared = [...hosts.values()].find((h) => online(h) && h.announcement.sharedImageDir);
      if (shared) host = shared;
      // and any host at all when the image was replicated.
      else if (image.replicated) {
        const placed = placeReplicatedRestore(image, hosts, opts);
        if ('rule' in placed) return placed;
        host = placed;
      } else {
        return {
          rule: 'host-online',
          field: 'host',
          message: `host: ${image.host}, which wrote "${req.image}", has not been heard from recently, and the image was not replicated (only a save with replicate: bus, or on a host with VMSAVE_REPLICATE=bus, can be restored on another host); name a host that holds a copy (host)`,
        };
      }
    }
    if (!host) return { rule: 'image-known', field: 'image', message: `image: no save in the log wrote "${req.image}"; name the host that holds it (host)` };
  }
  if (image?.deleted && !image.replicated) {
    const d = image.deleted;
    return {
      rule: 'image-deleted',
      field: 'image',
      message: `image: "${req.image}" was deleted from ${d.host} by its retention (${d.rule}) at ${d.at}, and no copy is on the bus (replicate: bus); restore another image of ${image.vm}`,
    };
  }
  if (!online(host)) return { rule: 'host-online', field: 'host', message: `host: ${host.announcement.host} has not been heard from recently` };
  const target = host.announcement.host;
  const p = checkImagePath(req.image, host.announcement.imageDir);
  if ('rule' in p) {
    const writer = image?.replicated && image.host !== target ? hosts.get(image.host) : undefined;
    const there = writer ? checkImagePath(req.image, writer.announcement.imageDir) : undefined;
    if (!there || 'rule' in there) return p;
    return { host: target, imageRel: there.rel, vm: image!.vm, sourceJobId: image!.jobId, imageOnHost: there.rel };
  }
  return { host: target, imageRel: p.rel, vm: image?.vm, sourceJobId: image?.jobId };
}

/**
 * Where a restore of a replicated image goes when its writer is offline: an online host that can
 * take it (room for the image in its image directory and quota, by the image's size or else its
 * VM's memory; mapped-ram for a sparse image; the VM's machine type; no QEMU running a VM of that
 * name), below its job limit before one at it, then the least loaded, then by name. Pure.
 */
export function placeReplicatedRestore(image: KnownImage, hosts: ReadonlyMap<string, HostView>, opts: AdmitOptions): HostView | Refusal {
  const writerVm = hosts.get(image.host)?.announcement.vms.find((v) => v.name === image.vm);
  const need = image.bytes ?? (writerVm ? writerVm.memoryMiB * MiB : 0);
  const reasons: string[] = [];
  const fits: HostView[] = [];
  for (const h of hosts.values()) {
    const a = h.announcement;
    if (a.host === image.host || opts.nowMs - h.lastSeenMs > opts.hostOfflineMs) continue;
    const why = unfitFor(a, image, need, writerVm?.machine);
    if (why) reasons.push(`${a.host}: ${why}`);
    else fits.push(h);
  }
  if (!fits.length) {
    return {
      rule: 'host-online',
      field: 'host',
      message: `host: ${image.host}, which wrote "${image.imagePath}", has not been heard from recently; the image is replicated but no online host can restore it${reasons.length ? ` (${reasons.join('; ')})` : ' (no other host is online)'}`,
    };
  }
  const jobsOf = opts.load?.jobsOf ?? (() => 0);
  const limitOf = opts.load?.limitOf ?? (() => Number.POSITIVE_INFINITY);
  const key = (h: HostView) => {
    const n = jobsOf(h.announcement.host);
    const limit = Math.max(1, limitOf(h.announcement.host));
    return { full: n >= limit ? 1 : 0, share: n / limit };
  };
  fits.sort((x, y) => {
    const kx = key(x);
    const ky = key(y);
    return kx.full - ky.full || kx.share - ky.share || x.announcement.host.localeCompare(y.announcement.host);
  });
  return fits[0]!;
}

/** Why a host cannot restore this image, or undefined when it can. */
function unfitFor(a: HostAnnouncement, image: KnownImage, need: number, machine: string | undefined): string | undefined {
  if (a.freeBytes < need) return `${fmtBytes(a.freeBytes)} free in ${a.imageDir}, the image needs ${fmtBytes(need)}`;
  if (a.imageQuotaBytes !== undefined && (a.imageUsedBytes ?? 0) + need > a.imageQuotaBytes)
    return `its image quota of ${fmtBytes(a.imageQuotaBytes)} has no room for ${fmtBytes(need)}`;
  if (image.format === 'sparse' && !a.qemu.mappedRam) return `QEMU ${a.qemu.version} has no mapped-ram (a sparse image)`;
  if (machine && a.qemu.machines.length && !a.qemu.machines.includes(machine)) return `QEMU ${a.qemu.version} has no machine type ${machine}`;
  const running = a.vms.find((v) => v.name === image.vm && v.status !== 'stopped');
  if (running) return `VM ${image.vm} already runs there (${running.status})`;
  return undefined;
}

/**
 * The lease key of a restore whose image the log does not know: its VM is named only in the
 * image's descriptor, which the executor reads on its host, so the scheduler leases the image on
 * that host instead. The `:` never occurs in a VM name, so the key never collides with one.
 */
export function imageLeaseKey(host: string, imageRel: string): string {
  return `image:${host}:${imageRel}`;
}

/** Exponential backoff with a cap, for retryable failures: attempt 2 waits `base`, then doubles. */
export function retryDelayMs(nextAttempt: number, baseMs: number, maxMs: number): number {
  return Math.min(maxMs, baseMs * 2 ** Math.max(0, nextAttempt - 2));
}

/** A job's default deadline: three times the expected transfer time at the host's throughput, plus a minute. */
export function defaultDeadlineMs(ramBytes: number, throughputBytesPerSec: number | undefined): number {
  const tp = throughputBytesPerSec && throughputBytesPerSec > 0 ? throughputBytesPerSec : 100 * MiB;
  return Math.ceil((ramBytes / tp) * 3 * 1000) + 60_000;
}

export interface QueuedJob {
  jobId: string;
  host: string;
  vm?: string;
  priority: Priority;
  requestedAtMs: number;
  /** Admission order (the state's fold order): breaks ties in `requestedAtMs`, so equal times keep arrival order. */
  seq?: number;
  notBeforeMs?: number;
}

/**
 * Which queued jobs to hand out now, in order: per host at most `limit - active` jobs;
 * `high` before `normal` before `low`, then first come first served; a `low` job waits while
 * any `high` or `normal` job is queued for its host; one job per VM at a time.
 */
export function pickNext(
  queue: readonly QueuedJob[],
  activePerHost: ReadonlyMap<string, number>,
  busyVms: ReadonlySet<string>,
  limitOf: (host: string) => number,
  nowMs: number,
): QueuedJob[] {
  const rank = { high: 0, normal: 1, low: 2 } as const;
  const ready = queue
    .filter((j) => (j.notBeforeMs ?? 0) <= nowMs)
    .sort((a, b) => rank[a.priority] - rank[b.priority] || a.requestedAtMs - b.requestedAtMs || (a.seq ?? 0) - (b.seq ?? 0));
  const higherQueued = new Set(queue.filter((j) => j.priority !== 'low').map((j) => j.host));
  const used = new Map(activePerHost);
  const vms = new Set(busyVms);
  const out: QueuedJob[] = [];
  for (const j of ready) {
    if (j.priority === 'low' && higherQueued.has(j.host)) continue;
    if ((used.get(j.host) ?? 0) >= limitOf(j.host)) continue;
    if (j.vm && vms.has(j.vm)) continue;
    out.push(j);
    used.set(j.host, (used.get(j.host) ?? 0) + 1);
    if (j.vm) vms.add(j.vm);
  }
  return out;
}
