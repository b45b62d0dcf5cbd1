import { partitionOf } from '@vmsave/contracts';
import type { JobState } from '@vmsave/jobs';
import { isTerminal, ON_HOST_STATUSES } from '@vmsave/jobs';
import { TimeHeap } from './heap.ts';
import { checkImagePath, imageLeaseKey, pickNext, type HostView, type KnownImage, type QueuedJob } from './policy.ts';

/** Host and VM an admitted job was placed on (recomputed after a restart). */
export interface Placed {
  host: string;
  vm?: string;
  ramBytes: number;
  /** A restore's image as the work item names it, when not as its request does (`RestoreAdmission.imageOnHost`). */
  image?: string;
}

const RANK = { high: 0, normal: 1, low: 2 } as const;
const NO_VMS: ReadonlySet<string> = new Set();

const onHost = (s: JobState | undefined): boolean => !!s && s.status !== 'none' && ON_HOST_STATUSES.has(s.status);

/**
 * One priority's queue on one host, in admission order (`seq`: the order the jobs' first events
 * were folded, i.e. their place in the log; a retried job goes back to its place). Not by
 * `requestedAtMs`: equal at ms resolution in a burst, and a clock step would reorder a VM's jobs.
 * Entries leave lazily: an entry is
 * live while `SchedulerState.queued` maps its job to this very object; dead ones are skipped and
 * compacted away once they outnumber the live ones (amortised O(1) per job).
 */
class Fifo {
  items: QueuedJob[] = [];
  head = 0;
  live = 0;

  insert(q: QueuedJob): void {
    const a = this.items;
    // Nearly always an append; a retried (or re-placed) job goes back to its place.
    const seq = q.seq ?? 0;
    if (a.length === this.head || (a[a.length - 1]!.seq ?? 0) <= seq) a.push(q);
    else {
      let lo = this.head;
      let hi = a.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if ((a[mid]!.seq ?? 0) <= seq) lo = mid + 1;
        else hi = mid;
      }
      a.splice(lo, 0, q);
    }
    this.live++;
  }
}

/**
 * What the scheduler knows, folded from the event log, host announcements and heartbeats. Every
 * job state change goes through `put`, which also keeps the incremental indexes placement and the
 * watchdog read (per-host queues, per-host active jobs, busy VMs, the watchdog's time index), so
 * no part ever walks all open jobs. Changes that await I/O run through `serial`, one at a time;
 * the parts (admission, journal, placement, watchdog) share this one object and hold no state of
 * their own that another part reads.
 */
export class SchedulerState {
  readonly jobs = new Map<string, JobState>();
  /** Jobs not yet final (the log holds many more). */
  private readonly open = new Set<string>();
  readonly hosts: ReadonlyMap<string, HostView> = new Map<string, HostView>();
  readonly heartbeats = new Map<string, { atMs: number; jobs: Set<string> }>();
  /** Last time each active job was known alive (scheduled, or named in a heartbeat). */
  readonly seen = new Map<string, number>();
  private readonly placed = new Map<string, Placed>();
  /** Restores of an image no save in the log wrote (`RestoreRequested` without a VM): leased by image. */
  readonly imageOnly = new Set<string>();
  /**
   * Completed saves waiting for a verdict, in the order their bound runs out: inserted when a
   * `SaveCompleted` is folded, moved to the end when notice 1 is folded, removed on a verdict (or
   * once raised). Every bound is the same `VMSAVE_VERDICT_TIMEOUT_MS`, so insertion order is
   * due order and the watchdog reads only the head. `sinceMs`: when the current bound started.
   */
  readonly awaitingVerdict = new Map<string, { notice: 0 | 1; sinceMs: number; completedAtMs: number }>();
  /** Ids of events this scheduler appended: their echo from the log is skipped. */
  readonly own = new Set<string>();
  /* ---- what a snapshot needs to know (`snapshot.ts`): is the state an exact prefix of the log? ---- */
  /** Highest log sequence the follower has handled (applied, or skipped as our own echo). */
  logSeq = 0;
  /** Highest sequence of an event this scheduler appended (its publish ack). */
  ownMaxSeq = 0;
  /** Ids of our events being published and not yet folded. */
  readonly unfolded = new Set<string>();
  /** When this scheduler became the active one (a job's silence before that says nothing). */
  startedAtMs = Date.now();
  /** Events of other services read from the log but not yet applied: while any wait, the view is behind. */
  pendingLogEvents = 0;
  /** Delay of a job's first watchdog check after it went on a host (the watchdog sets it from its settings). */
  checkAfterMs = 5000;
  private chain: Promise<unknown> = Promise.resolve();

  /* ---- partitions (several active schedulers, `ownership.ts`) ---- */
  /**
   * Whether this scheduler acts on the jobs of a VM partition now. Every scheduler folds every
   * job; only the owned ones are queued, dispatched, watched, retried and have their leases
   * renewed and released. Default: all (one scheduler alone).
   */
  owns: (partition: number) => boolean = () => true;
  /**
   * Whether this scheduler holds a partition (taken, caught up, not confirmed lost or given
   * back), even while its lease lapsed locally and it does not act on it: the queues follow what
   * is held, so a lapse renewed in time keeps every job in its place. Default: all.
   */
  holds: (partition: number) => boolean = () => true;
  /** Each job's admission order (the order its first state was folded): the queues' order. */
  private readonly seqOf = new Map<string, number>();
  private nextSeq = 0;
  /** Each job's partition, fixed at its first state (a restore's VM may become known later). */
  private readonly partOf = new Map<string, number>();
  /** Failed jobs whose failure was retryable and that no `Retry` followed yet: a new owner retries them. */
  readonly retryPending = new Set<string>();
  /**
   * Leases of other schedulers' jobs that ended recently (in end order, kept for a lease TTL):
   * their owner releases them, but one that died first cannot, so a scheduler taking the
   * partition releases them (token-checked, so a lease taken since is untouched).
   */
  readonly endedElsewhere = new Map<string, { vm: string; owner: string; token: number; host?: string; atMs: number }>();

  /* ---- incremental indexes, kept by `put`, `setPlacement` and `setHost` only ---- */
  /** Each queued (requested and placed) job's entry in its host's queue. */
  private readonly queued = new Map<string, QueuedJob>();
  /** Per host, one FIFO per priority (high, normal, low). */
  private readonly queues = new Map<string, [Fifo, Fifo, Fifo]>();
  /** Requested jobs with no placement yet (after a restart, or their host was silent). */
  readonly unplaced = new Set<string>();
  /** Set when `unplaced` gained a job or a host changed: placement tries the unplaced again. */
  needsPlacing = false;
  /** Per host, the jobs on it (scheduled or running): what counts against its limit. */
  private readonly onHostByHost = new Map<string, Set<string>>();
  /** Each on-host job's host and the keys (VM, lease key) it keeps busy. */
  private readonly onHostJob = new Map<string, { host: string; keys: string[] }>();
  /** VMs and lease keys in use by an on-host job, with how many hold each. */
  private readonly busy = new Map<string, number>();
  /** Busy key → hosts whose queue has a job waiting for it: visited again when the key frees. */
  private readonly blockedOn = new Map<string, Set<string>>();
  /** Hosts where something changed (a slot freed, a job queued, a limit changed): the next pass visits only these. */
  readonly dirty = new Set<string>();
  /** Queued jobs in backoff, by `notBefore`: their host is visited when it passes. */
  private readonly backoff = new TimeHeap<string>();
  /** On-host jobs by their next watchdog check; an entry counts only while `watchAt` names its time. */
  private readonly watch = new TimeHeap<string>();
  private readonly watchAt = new Map<string, number>();
  /** VM name → hosts announcing it (admission looks only at those). */
  private readonly vmHosts = new Map<string, Set<string>>();
  /** Saves whose image exists (completed or verified), for restore admission. */
  private readonly images = new Map<string, KnownImage>();

  get placement(): ReadonlyMap<string, Placed> {
    return this.placed;
  }

  /** The one place a job's state changes; every index follows the transition. */
  put(jobId: string, s: JobState): void {
    const before = this.jobs.get(jobId);
    this.jobs.set(jobId, s);
    if (!this.partOf.has(jobId) && s.status !== 'none') {
      this.partOf.set(jobId, this.partitionKey(jobId, s));
      this.seqOf.set(jobId, ++this.nextSeq);
    }
    if (s.status === 'failed' && s.lastFailure?.retryable) this.retryPending.add(jobId);
    else this.retryPending.delete(jobId);
    if (s.status === 'none' || isTerminal(s) || s.status === 'completed') this.open.delete(jobId);
    else this.open.add(jobId);
    this.trackVerdict(jobId, s);
    this.trackImage(jobId, s);
    const wasQueued = before?.status === 'requested';
    const isQueued = s.status === 'requested';
    if (wasQueued && (!isQueued || before.notBefore !== s.notBefore)) this.dequeue(jobId);
    if (isQueued && (!wasQueued || before.notBefore !== s.notBefore)) this.enqueue(jobId, s);
    const wasOn = onHost(before);
    const isOn = onHost(s);
    if (wasOn && !isOn) this.leaveHost(jobId);
    else if (isOn && !wasOn) this.enterHost(jobId, s);
    else if (isOn && wasOn) this.addKeys(jobId, s);
  }

  /** A job's partition: its VM's (`partitionOf`); a restore whose VM the log does not know: its image's. */
  private partitionKey(jobId: string, s: JobState): number {
    if (s.kind === 'save') return partitionOf(s.saveRequest?.vm ?? s.vm ?? jobId);
    if (s.kind === 'restore') return partitionOf(this.imageOnly.has(jobId) ? (s.restoreRequest?.image ?? jobId) : (s.vm ?? s.restoreRequest?.image ?? jobId));
    return partitionOf(jobId);
  }

  /** The partition a job belongs to (undefined for a job the state does not know). */
  partitionOfJob(jobId: string): number | undefined {
    return this.partOf.get(jobId);
  }

  /** Whether this scheduler acts on a job now (its partition is owned). */
  ownsJob(jobId: string): boolean {
    const p = this.partOf.get(jobId);
    return p !== undefined && this.owns(p);
  }

  /** Whether a job's partition is held here (its job queued here), acted on now or not. */
  holdsJob(jobId: string): boolean {
    const p = this.partOf.get(jobId);
    return p !== undefined && this.holds(p);
  }

  /**
   * Partitions were taken: queue their requested jobs, check their on-host jobs soon, and return
   * their failed jobs that await a retry (the previous owner may have died before retrying).
   */
  adopt(partitions: ReadonlySet<number>, nowMs: number): string[] {
    for (const id of this.open) {
      if (!partitions.has(this.partOf.get(id) ?? -1)) continue;
      const s = this.jobs.get(id)!;
      if (s.status === 'requested' && !this.queued.has(id) && !this.unplaced.has(id)) this.enqueue(id, s);
      else if (onHost(s)) {
        // Its silence is judged from now: the previous owner's view of it is gone.
        if (!this.seen.has(id)) this.seen.set(id, nowMs);
        this.scheduleCheck(id, nowMs);
      }
    }
    return [...this.retryPending].filter((id) => partitions.has(this.partOf.get(id) ?? -1));
  }

  /** Partitions were given back (or lost): their jobs leave this scheduler's queues. */
  disown(partitions: ReadonlySet<number>): void {
    for (const id of [...this.queued.keys(), ...this.unplaced]) if (partitions.has(this.partOf.get(id) ?? -1)) this.dequeue(id);
  }

  private trackVerdict(jobId: string, s: JobState): void {
    const notice = s.verificationOverdue?.notice ?? 0;
    if (s.kind !== 'save' || s.status !== 'completed' || notice === 2) {
      this.awaitingVerdict.delete(jobId);
      return;
    }
    const cur = this.awaitingVerdict.get(jobId);
    if (cur?.notice === notice) return;
    // The state's last event is the one that started this bound (`SaveCompleted`, or notice 1).
    const sinceMs = Date.parse(s.updatedAt ?? '') || Date.now();
    this.awaitingVerdict.delete(jobId);
    this.awaitingVerdict.set(jobId, { notice, sinceMs, completedAtMs: cur?.completedAtMs ?? sinceMs });
  }

  private trackImage(jobId: string, s: JobState): void {
    if (s.kind === 'save' && (s.status === 'completed' || s.status === 'verified') && s.host && s.imagePath && s.vm) {
      const bytes = s.result?.blocks !== undefined ? s.result.blocks * 512 : s.result?.bytes;
      this.images.set(jobId, {
        host: s.host,
        imagePath: s.imagePath,
        vm: s.vm,
        jobId,
        verified: s.status === 'verified',
        replicated: !!s.replicated,
        ...(s.format ? { format: s.format } : {}),
        ...(bytes !== undefined ? { bytes } : {}),
        ...(s.imageDeleted ? { deleted: { at: s.imageDeleted.at, rule: s.imageDeleted.rule, host: s.imageDeleted.host } } : {}),
      });
    } else if (s.kind === 'save') this.images.delete(jobId);
  }

  /** Every image a save in the log wrote and that was not rejected, oldest first. */
  knownImages(): KnownImage[] {
    return [...this.images.values()];
  }

  /** Open jobs (requested, on a host): one walk, for start-up counts only. */
  *openJobs(): Iterable<JobState> {
    for (const id of this.open) yield this.jobs.get(id)!;
  }

  /* ---- hosts ---- */

  /** Record a host's latest announcement; says whether anything but its time changed. */
  setHost(view: HostView): boolean {
    const hosts = this.hosts as Map<string, HostView>;
    const prev = hosts.get(view.announcement.host);
    hosts.set(view.announcement.host, view);
    const name = view.announcement.host;
    // A host heard from again may take the jobs that waited for it.
    if (this.unplaced.size) this.needsPlacing = true;
    const changed = !prev || announcementKey(prev.announcement) !== announcementKey(view.announcement);
    if (!changed) return false;
    for (const vm of prev?.announcement.vms ?? []) this.vmHosts.get(vm.name)?.delete(name);
    for (const vm of view.announcement.vms) {
      let set = this.vmHosts.get(vm.name);
      if (!set) {
        set = new Set();
        this.vmHosts.set(vm.name, set);
      }
      set.add(name);
    }
    this.dirty.add(name);
    return true;
  }

  /** The hosts that announce a VM of this name (what save admission looks at). */
  hostsWithVm(vm: string): HostView[] {
    const out: HostView[] = [];
    for (const h of this.vmHosts.get(vm) ?? []) {
      const v = this.hosts.get(h);
      if (v) out.push(v);
    }
    return out;
  }

  /* ---- placement and queues ---- */

  /** Where a job goes; a queued job moves to that host's queue. */
  setPlacement(jobId: string, p: Placed): void {
    const prev = this.placed.get(jobId);
    this.placed.set(jobId, p);
    const s = this.jobs.get(jobId);
    if (s?.status !== 'requested') return;
    if (this.unplaced.has(jobId) || prev?.host !== p.host || this.queued.get(jobId)?.vm !== (this.leaseKeyOf(s) ?? p.vm)) {
      this.dequeue(jobId);
      this.enqueue(jobId, s);
    }
  }

  private enqueue(jobId: string, s: JobState): void {
    // Another scheduler's job: folded, never queued here.
    if (!this.holdsJob(jobId)) return;
    const p = this.placed.get(jobId);
    if (!p) {
      this.unplaced.add(jobId);
      this.needsPlacing = true;
      return;
    }
    const q: QueuedJob = {
      jobId,
      host: p.host,
      vm: this.leaseKeyOf(s) ?? p.vm,
      priority: s.saveRequest?.priority ?? s.restoreRequest?.priority ?? 'normal',
      requestedAtMs: Date.parse(s.requestedAt ?? '') || 0,
      seq: this.seqOf.get(jobId) ?? 0,
      notBeforeMs: s.notBefore ? Date.parse(s.notBefore) : undefined,
    };
    this.queued.set(jobId, q);
    let qs = this.queues.get(p.host);
    if (!qs) {
      qs = [new Fifo(), new Fifo(), new Fifo()];
      this.queues.set(p.host, qs);
    }
    qs[RANK[q.priority]].insert(q);
    if (q.notBeforeMs !== undefined) this.backoff.push(q.notBeforeMs, jobId);
    this.dirty.add(p.host);
  }

  private dequeue(jobId: string): void {
    this.unplaced.delete(jobId);
    const q = this.queued.get(jobId);
    if (!q) return;
    this.queued.delete(jobId);
    const f = this.queues.get(q.host)![RANK[q.priority]];
    f.live--;
    if (f.items.length - f.head - f.live > Math.max(32, f.live)) {
      f.items = f.items.slice(f.head).filter((e) => this.queued.get(e.jobId) === e);
      f.head = 0;
    }
    // A low job may wait only for this one.
    this.dirty.add(q.host);
  }

  /** The queued jobs of one host (to re-place them after its announcement changed). */
  queuedOn(host: string): QueuedJob[] {
    const out: QueuedJob[] = [];
    for (const f of this.queues.get(host) ?? []) for (let i = f.head; i < f.items.length; i++) if (this.queued.get(f.items[i]!.jobId) === f.items[i]) out.push(f.items[i]!);
    return out;
  }

  /**
   * The jobs that may start now, from the hosts where something changed (`dirty`): per host, the
   * heads of its queues up to its free slots, skipping jobs in backoff or whose VM is busy, and
   * `pickNext` (the one policy) decides among them. Costs O(visited hosts + picks + skipped),
   * independent of the backlog. Pure: no I/O, the clock is `nowMs`.
   */
  plan(nowMs: number, limitOf: (host: string) => number): QueuedJob[] {
    for (const { value: id } of this.backoff.popDue(nowMs)) {
      const q = this.queued.get(id);
      if (q) this.dirty.add(q.host);
    }
    const picks: QueuedJob[] = [];
    const taken = new Set<string>();
    /** Hosts with a head job of a held partition whose lease lapsed: visited again in the next pass. */
    const lapsed: string[] = [];
    for (const host of [...this.dirty]) {
      this.dirty.delete(host);
      const qs = this.queues.get(host);
      if (!qs) continue;
      const active = this.onHostByHost.get(host)?.size ?? 0;
      const free = limitOf(host) - active;
      if (free <= 0) continue;
      const higherQueued = qs[0].live + qs[1].live > 0;
      const candidates: QueuedJob[] = [];
      const keys = new Set<string>();
      for (let r = 0; r < 3 && candidates.length < free; r++) {
        if (r === 2 && higherQueued) break;
        const f = qs[r]!;
        while (f.head < f.items.length && this.queued.get(f.items[f.head]!.jobId) !== f.items[f.head]) f.head++;
        for (let i = f.head; i < f.items.length && candidates.length < free; i++) {
          const q = f.items[i]!;
          if (this.queued.get(q.jobId) !== q) continue;
          if ((q.notBeforeMs ?? 0) > nowMs) continue; // the backoff index visits the host again
          if (!this.ownsJob(q.jobId)) {
            // Held, not acted on now: it keeps its place (and its VM's later jobs wait behind it).
            if (q.vm) keys.add(q.vm);
            if (lapsed[lapsed.length - 1] !== host) lapsed.push(host);
            continue;
          }
          if (q.vm && (this.busy.has(q.vm) || taken.has(q.vm) || keys.has(q.vm))) {
            let b = this.blockedOn.get(q.vm);
            if (!b) {
              b = new Set();
              this.blockedOn.set(q.vm, b);
            }
            b.add(host);
            continue;
          }
          candidates.push(q);
          if (q.vm) keys.add(q.vm);
        }
      }
      for (const q of pickNext(candidates, new Map([[host, active]]), NO_VMS, limitOf, nowMs)) {
        picks.push(q);
        if (q.vm) taken.add(q.vm);
      }
    }
    for (const h of lapsed) this.dirty.add(h);
    return picks;
  }

  /** Visit these hosts again in the next pass (a dispatch that could not take its lease). */
  revisit(host: string): void {
    this.dirty.add(host);
  }

  /* ---- jobs on hosts ---- */

  private enterHost(jobId: string, s: JobState): void {
    const host = s.host ?? '';
    let set = this.onHostByHost.get(host);
    if (!set) {
      set = new Set();
      this.onHostByHost.set(host, set);
    }
    set.add(jobId);
    this.onHostJob.set(jobId, { host, keys: [] });
    this.addKeys(jobId, s);
    this.scheduleCheck(jobId, (Date.parse(s.updatedAt ?? '') || 0) + this.checkAfterMs);
  }

  /** Its VM (once known) and its lease key: a restore of an image the log does not know is leased by image. */
  private addKeys(jobId: string, s: JobState): void {
    const j = this.onHostJob.get(jobId)!;
    for (const k of [this.vmOf(s), this.leaseKeyOf(s)]) {
      if (!k || j.keys.includes(k)) continue;
      j.keys.push(k);
      this.busy.set(k, (this.busy.get(k) ?? 0) + 1);
    }
  }

  private leaveHost(jobId: string): void {
    const j = this.onHostJob.get(jobId);
    if (!j) return;
    this.onHostJob.delete(jobId);
    this.onHostByHost.get(j.host)?.delete(jobId);
    this.watchAt.delete(jobId);
    this.dirty.add(j.host);
    for (const k of j.keys) {
      const n = (this.busy.get(k) ?? 1) - 1;
      if (n > 0) {
        this.busy.set(k, n);
        continue;
      }
      this.busy.delete(k);
      for (const h of this.blockedOn.get(k) ?? []) this.dirty.add(h);
      this.blockedOn.delete(k);
    }
  }

  /** Check this on-host job again at `atMs` (replaces its earlier check). */
  scheduleCheck(jobId: string, atMs: number): void {
    if (!this.onHostJob.has(jobId)) return;
    this.watchAt.set(jobId, atMs);
    this.watch.push(atMs, jobId);
  }

  /** On-host jobs whose check is due: each once, its check consumed (the watchdog schedules the next). */
  dueChecks(nowMs: number): string[] {
    const out: string[] = [];
    for (const { at, value: id } of this.watch.popDue(nowMs)) {
      if (this.watchAt.get(id) !== at) continue;
      this.watchAt.delete(id);
      out.push(id);
    }
    return out;
  }

  /** Jobs each host runs now (scheduled or running). */
  activeByHost(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [h, set] of this.onHostByHost) if (set.size) out[h] = set.size;
    return out;
  }

  /** Jobs waiting in each host's queues (placed, not yet handed out); '' counts those with no host yet. */
  queueDepthByHost(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [h, qs] of this.queues) {
      const n = qs[0].live + qs[1].live + qs[2].live;
      if (n) out[h] = n;
    }
    if (this.unplaced.size) out[''] = this.unplaced.size;
    return out;
  }

  /** Jobs on a host now plus those queued for it: its load, for placing a restore of a replicated image. */
  loadOn(host: string): number {
    const qs = this.queues.get(host);
    return this.activeOn(host) + (qs ? qs[0].live + qs[1].live + qs[2].live : 0);
  }

  /** How many jobs are on a host now. */
  activeOn(host: string): number {
    return this.onHostByHost.get(host)?.size ?? 0;
  }

  /** Whether a VM or lease key is held by an on-host job. */
  isBusy(key: string): boolean {
    return this.busy.has(key);
  }

  /** The VM a job works on: from its events, else from where it was placed. */
  vmOf(s: JobState): string | undefined {
    return s.vm ?? this.placed.get(s.jobId!)?.vm;
  }

  /**
   * The key of the lease a job holds while it is on a host: its VM; for a restore of an image the
   * log does not know, the image on its host (`imageLeaseKey`), since its VM is known only once
   * the executor has read the image.
   */
  leaseKeyOf(s: JobState): string | undefined {
    const req = s.restoreRequest;
    if (!req || !this.imageOnly.has(s.jobId!)) return this.vmOf(s);
    const host = req.host ?? s.host ?? this.placed.get(s.jobId!)?.host;
    if (!host) return undefined;
    const imageDir = this.hosts.get(host)?.announcement.imageDir;
    const p = imageDir === undefined ? undefined : checkImagePath(req.image, imageDir);
    return imageLeaseKey(host, p && 'rel' in p ? p.rel : req.image);
  }

  /**
   * The log sequence the state is exactly the fold of, or undefined when it is not one now: an
   * own event is being published, an own event's echo is still ahead of the follower, or log
   * events wait to be applied.
   */
  quiescentAt(): number | undefined {
    if (this.unfolded.size || this.pendingLogEvents || this.logSeq < this.ownMaxSeq) return undefined;
    return this.logSeq;
  }

  /** Run state changes that await I/O one at a time. */
  serial<T>(fn: () => Promise<T> | T): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  /** Resolves once every change queued so far has run. */
  async settled(): Promise<void> {
    await this.chain.catch(() => undefined);
  }
}

/** An announcement without its time: what placement depends on. */
function announcementKey(a: HostView['announcement']): string {
  return JSON.stringify({ ...a, at: undefined });
}
