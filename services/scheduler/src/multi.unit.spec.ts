/**
 * Property tests of several active schedulers over one log: 3 scheduler cores (each its own
 * `SchedulerState`, folding the shared in-memory log with a random lag), partition ownership with
 * expiry (takes, give-backs, kills, restarts, a dead one's partitions taken by survivors after
 * the partition TTL, lapses: a lease not valid locally while still held, then renewed in time or
 * lost), and the VM lease + host slot of `Leases.acquireWithSlot` as an in-memory
 * model with expiry. Commands arrive on random partitions and are admitted by the partition's
 * owner; executors start, complete and fail work; executors crash; time passes (heartbeats,
 * lease renewals, the watchdog). Checked against the log folded independently: never more jobs
 * on a host than its limit, never two jobs of one VM at once, exactly one answer per delivered
 * command and one `SaveRequested` per request, every job final eventually.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HostAnnouncement, jobIdFor, PARTITIONS, partitionOf, SaveRequest, type JobEvent } from '@vmsave/contracts';
import { decide, decideRetry, evolve, initialState, isFinal, ON_HOST_STATUSES, type JobCommand, type JobState } from '@vmsave/jobs';
import { answerFor, decideSave } from './admission.ts';
import { admitSave } from './policy.ts';
import { SchedulerState } from './state.ts';

const HOSTS = ['h0', 'h1'];
const LIMITS = [1, 2];
/** VMs spread over several partitions (and both hosts). */
const VMS = Array.from({ length: 8 }, (_, i) => `vm.${i}`);
const hostOfVm = (i: number) => HOSTS[i % HOSTS.length]!;
const INSTANCES = 3;
const HB_TIMEOUT = 15_000;
const LEASE_TTL = 30_000;
const PART_TTL = 5_000;
const T0 = Date.parse('2026-06-01T00:00:00Z');
const source = { source: 'scheduler' };

type Action =
  | { t: 'cmd'; r: number; vm: number }
  | { t: 'redeliver'; k: number }
  | { t: 'deliver'; i: number }
  | { t: 'fold'; i: number; n: number }
  | { t: 'pump'; i: number }
  | { t: 'start'; k: number }
  | { t: 'complete'; k: number }
  | { t: 'fail'; k: number; retryable: boolean }
  | { t: 'crash'; k: number }
  | { t: 'take'; i: number; p: number }
  | { t: 'giveBack'; i: number; p: number }
  | { t: 'kill'; i: number }
  | { t: 'restart'; i: number }
  | { t: 'lapse'; p: number }
  | { t: 'resume'; p: number }
  | { t: 'advance'; ms: number };

const I = INSTANCES - 1;
const action: fc.Arbitrary<Action> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ t: fc.constant('cmd' as const), r: fc.nat(20), vm: fc.nat(VMS.length - 1) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('redeliver' as const), k: fc.nat(50) }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('deliver' as const), i: fc.nat(I) }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('fold' as const), i: fc.nat(I), n: fc.integer({ min: 1, max: 6 }) }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('pump' as const), i: fc.nat(I) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('start' as const), k: fc.nat(20) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('complete' as const), k: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('fail' as const), k: fc.nat(20), retryable: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('crash' as const), k: fc.nat(20) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('take' as const), i: fc.nat(I), p: fc.nat(PARTITIONS - 1) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('giveBack' as const), i: fc.nat(I), p: fc.nat(PARTITIONS - 1) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('kill' as const), i: fc.nat(I) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('restart' as const), i: fc.nat(I) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('lapse' as const), p: fc.nat(PARTITIONS - 1) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('resume' as const), p: fc.nat(PARTITIONS - 1) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('advance' as const), ms: fc.integer({ min: 100, max: 4_000 }) }) },
);

const onHost = (s: JobState | undefined) => !!s && s.status !== 'none' && ON_HOST_STATUSES.has(s.status);

interface Instance {
  state: SchedulerState;
  /** How far into the shared log it has folded. */
  pos: number;
  alive: boolean;
  /** Our own events (folded when appended; skipped when the log gives them back). */
  own: Set<string>;
}

/** The VM lease + host slot of `Leases.acquireWithSlot`, in memory, with expiry. */
class LeaseModel {
  private tokens = 0;
  readonly vm = new Map<string, { owner: string; token: number; until: number; host: string }>();
  readonly slots = new Map<string, Map<string, number>>();

  private sweep(now: number): void {
    for (const [k, l] of this.vm) if (l.until <= now) this.vm.delete(k);
    for (const s of this.slots.values()) for (const [k, until] of s) if (until <= now) s.delete(k);
  }

  acquire(now: number, vm: string, owner: string, host: string, limit: number): number | 'held' | 'full' {
    this.sweep(now);
    if (this.vm.has(vm)) return 'held';
    const s = this.slots.get(host) ?? new Map<string, number>();
    this.slots.set(host, s);
    if (!s.has(vm) && s.size >= limit) return 'full';
    const token = ++this.tokens;
    this.vm.set(vm, { owner, token, until: now + LEASE_TTL, host });
    s.set(vm, now + LEASE_TTL);
    return token;
  }

  renew(now: number, vm: string, owner: string, token: number): void {
    this.sweep(now);
    const l = this.vm.get(vm);
    if (l?.owner !== owner || l.token !== token) return;
    l.until = now + LEASE_TTL;
    this.slots.get(l.host)?.set(vm, now + LEASE_TTL);
  }

  release(vm: string, owner: string, token: number): void {
    const l = this.vm.get(vm);
    if (l?.owner !== owner || l.token !== token) return;
    this.vm.delete(vm);
    this.slots.get(l.host)?.delete(vm);
  }
}

class World {
  now = T0;
  readonly log: JobEvent[] = [];
  readonly truth = new Map<string, JobState>();
  readonly inst: Instance[] = [];
  /**
   * Partition → its owner (instance index) and until when its lease holds (renewed while the owner
   * lives and its lease has not lapsed). `lapsed`: the owner's renewals do not get through (not
   * valid by its local clock): it still holds the partition (its jobs stay queued) but does not act.
   */
  readonly part: Array<{ owner: number; until: number; lapsed?: boolean } | undefined> = Array.from({ length: PARTITIONS }, () => undefined);
  readonly leases = new LeaseModel();
  /** Commands waiting in each partition's consumer (a work queue: delivered to the owner, acked after the answer). */
  readonly queue: SaveRequest[][] = Array.from({ length: PARTITIONS }, () => []);
  readonly deliveries: SaveRequest[] = [];
  readonly answers: number[] = [];
  readonly violations: string[] = [];
  /** Attempts whose executor died. */
  private readonly dead = new Set<string>();

  constructor() {
    for (let i = 0; i < INSTANCES; i++) this.inst.push(this.fresh());
    // One scheduler alone owns all: then the others join (the balance comes through takes).
    for (let p = 0; p < PARTITIONS; p++) this.take(0, p);
  }

  private announcement(i: number) {
    const at = new Date(this.now).toISOString();
    return HostAnnouncement.parse({
      host: HOSTS[i],
      executorId: `executor@${HOSTS[i]}`,
      at,
      startedAt: new Date(T0).toISOString(),
      qemu: { version: '10.1.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
      imageDir: '/images',
      freeBytes: 2 ** 50,
      maxConcurrentJobs: LIMITS[i],
      vms: VMS.flatMap((name, j) => (hostOfVm(j) === HOSTS[i] ? [{ name, uuid: `u-${j}`, machine: 'q35', memoryMiB: 64, vcpus: 1, status: 'running' as const }] : [])),
    });
  }

  private limitOf = (host: string) => LIMITS[HOSTS.indexOf(host)] ?? 1;
  private opts = () => ({ nowMs: this.now, hostOfflineMs: Number.MAX_SAFE_INTEGER });

  /** A scheduler starting: a fresh state folded from the whole log; it owns nothing yet. */
  private fresh(): Instance {
    const state = new SchedulerState();
    state.startedAtMs = this.now;
    state.checkAfterMs = 5000;
    const me: Instance = { state, pos: this.log.length, alive: true, own: new Set() };
    state.owns = (p) => this.ownerOf(p) === this.inst.indexOf(me);
    state.holds = (p) => this.holderOf(p) === this.inst.indexOf(me);
    for (let i = 0; i < HOSTS.length; i++) state.setHost({ announcement: this.announcement(i), lastSeenMs: this.now });
    for (const e of this.log) state.put(e.jobId, evolve(state.jobs.get(e.jobId) ?? initialState(), e));
    return me;
  }

  /** The live, unexpired owner of a partition (a dead one's lease may not have expired yet: nobody acts then). */
  ownerOf(p: number): number | undefined {
    const o = this.part[p];
    return o && !o.lapsed && o.until > this.now && this.inst[o.owner]?.alive ? o.owner : undefined;
  }

  /** The live instance holding a partition (acting on it or not): until its loss is confirmed or someone else takes it. */
  holderOf(p: number): number | undefined {
    const o = this.part[p];
    return o && this.inst[o.owner]?.alive ? o.owner : undefined;
  }

  private append(e: JobEvent, by?: Instance): void {
    this.log.push(e);
    this.truth.set(e.jobId, evolve(this.truth.get(e.jobId) ?? initialState(), e));
    if (by) {
      by.own.add(e.eventId);
      by.state.put(e.jobId, evolve(by.state.jobs.get(e.jobId) ?? initialState(), e));
    }
    if (e.type === 'SaveScheduled') {
      const t = this.truth.get(e.jobId)!;
      const onThatHost = [...this.truth.values()].filter((s) => onHost(s) && s.host === t.host).length;
      if (onThatHost > this.limitOf(t.host!)) this.violations.push(`${e.jobId} scheduled on ${t.host} with ${onThatHost} jobs there (limit ${this.limitOf(t.host!)})`);
      const sameVm = [...this.truth.values()].filter((s) => onHost(s) && s.vm === t.vm);
      if (sameVm.length > 1) this.violations.push(`${e.jobId} scheduled while ${sameVm.map((s) => s.jobId).join(', ')} of VM ${t.vm} are on a host`);
    }
  }

  private emit(me: Instance, jobId: string, cmd: JobCommand): JobEvent[] {
    const s = me.state.jobs.get(jobId)!;
    const meta = { ...source, now: new Date(this.now) };
    const d = cmd.type === 'Retry' ? decideRetry(cmd, s, meta) : decide(cmd, s, meta);
    if (!d.ok) return [];
    for (const e of d.events) this.append(e, me);
    return d.events;
  }

  /** Journal.apply's reaction to an attempt's end: only the owner releases the lease and retries; others remember the lease (`endedElsewhere`). */
  private react(me: Instance, before: JobState, s: JobState): void {
    const ended = onHost(before) && !onHost(s);
    if (!ended) return;
    const key = me.state.leaseKeyOf(before);
    me.state.seen.delete(before.jobId!);
    if (!me.state.ownsJob(before.jobId!)) {
      if (key && before.fencingToken !== undefined) me.state.endedElsewhere.set(before.jobId!, { vm: key, owner: before.jobId!, token: before.fencingToken, atMs: this.now });
      return;
    }
    if (key && before.fencingToken !== undefined) this.leases.release(key, before.jobId!, before.fencingToken);
    if (s.status === 'failed') this.emit(me, before.jobId!, { type: 'Retry', delayMs: 1000, maxAttempts: 3 });
  }

  /** Fold up to `n` more events of the log (own ones skipped), reacting as the journal does. */
  fold(me: Instance, n = Number.POSITIVE_INFINITY): void {
    for (let k = 0; k < n && me.pos < this.log.length; k++) {
      const e = this.log[me.pos++]!;
      if (me.own.delete(e.eventId)) continue;
      const before = me.state.jobs.get(e.jobId) ?? initialState();
      const s = evolve(before, e);
      me.state.put(e.jobId, s);
      this.react(me, before, s);
    }
  }

  /** Take a free partition: catch up the log, then adopt its jobs (queue, watch, retry, release ended leases). */
  take(i: number, p: number): void {
    const me = this.inst[i]!;
    if (!me.alive || (this.part[p]?.until ?? 0) > this.now) return;
    // A live previous holder (its lease lapsed and expired) learns of the loss: its jobs leave its queues.
    const prev = this.holderOf(p);
    if (prev !== undefined) this.inst[prev]!.state.disown(new Set([p]));
    this.fold(me);
    this.part[p] = { owner: i, until: this.now + PART_TTL };
    this.adoptIn(me, p);
  }

  /** As main.ts's `adoptPartitions` on a take or a resumed lapse: queue, watch, retry, release ended leases. */
  private adoptIn(me: Instance, p: number): void {
    const gained = new Set([p]);
    const retries = me.state.adopt(gained, this.now);
    for (const [id, l] of me.state.endedElsewhere) {
      if (me.state.partitionOfJob(id) !== p) continue;
      me.state.endedElsewhere.delete(id);
      this.leases.release(l.vm, l.owner, l.token);
    }
    for (const id of retries) this.emit(me, id, { type: 'Retry', delayMs: 1000, maxAttempts: 3 });
  }

  /** The owner's renewals stop getting through: not valid locally any more, still held. */
  lapse(p: number): void {
    const o = this.part[p];
    if (o && this.ownerOf(p) !== undefined) o.lapsed = true;
  }

  /** A late renewal of a lapsed lease: succeeds if it never expired (acting again, nothing moved), else the loss is confirmed. */
  resume(p: number): void {
    const o = this.part[p];
    const holder = this.holderOf(p);
    if (!o?.lapsed || holder === undefined) return;
    if (o.until > this.now) {
      o.lapsed = false;
      o.until = this.now + PART_TTL;
      this.adoptIn(this.inst[holder]!, p);
      return;
    }
    this.part[p] = undefined;
    this.inst[holder]!.state.disown(gained(p));
  }

  giveBack(i: number, p: number): void {
    if (this.holderOf(p) !== i) return;
    this.part[p] = undefined;
    this.inst[i]!.state.disown(gained(p));
  }

  kill(i: number): void {
    // Its partitions stay held until their leases expire (PART_TTL): nobody acts on them meanwhile.
    this.inst[i]!.alive = false;
  }

  restart(i: number): void {
    if (this.inst[i]!.alive) return;
    // A restarted scheduler is a new one (its own name in the leases): the dead one's leases run
    // out as theirs (owner -1), so the new one takes them only through `take`, after catching up.
    for (const o of this.part) if (o?.owner === i) o.owner = -1;
    this.inst[i] = this.fresh();
  }

  cmd(req: SaveRequest): void {
    this.queue[partitionOf(req.vm)]!.push(req);
  }

  /** The owner of a partition with waiting commands admits the first (as admission does), answers, acks. */
  deliver(i: number): void {
    const me = this.inst[i]!;
    if (!me.alive) return;
    const p = this.queue.findIndex((q, pp) => q.length > 0 && this.ownerOf(pp) === i);
    if (p < 0) return;
    const req = this.queue[p]!.shift()!;
    this.deliveries.push(req);
    const jobId = jobIdFor('save', req.requestId);
    let duplicate = true;
    if ((me.state.jobs.get(jobId)?.status ?? 'none') === 'none') {
      duplicate = false;
      const { events, admission } = decideSave(me.state, jobId, req, this.opts(), new Date(this.now));
      if (!('rule' in admission)) me.state.setPlacement(jobId, { host: admission.host, vm: req.vm, ramBytes: admission.ramBytes });
      for (const e of events) this.append(e, me);
    }
    const answer = answerFor(me.state, jobId, duplicate);
    if (answer.jobId !== jobId) this.violations.push(`answer for ${answer.jobId} to a command for ${jobId}`);
    this.answers[this.deliveries.length - 1] = (this.answers[this.deliveries.length - 1] ?? 0) + 1;
  }

  /** A placement pass on one instance; each pick is dispatched under the VM lease + host slot. */
  pump(i: number): void {
    const me = this.inst[i]!;
    if (!me.alive) return;
    const { state } = me;
    if (state.needsPlacing) {
      state.needsPlacing = false;
      for (const id of [...state.unplaced]) {
        const s = state.jobs.get(id)!;
        const adm = admitSave(s.saveRequest!, state.hostsWithVm(s.saveRequest!.vm), this.opts());
        if ('rule' in adm) this.emit(me, id, { type: 'Reject', ...adm });
        else state.setPlacement(id, { host: adm.host, vm: s.vm, ramBytes: adm.ramBytes });
      }
    }
    for (const q of state.plan(this.now, this.limitOf)) {
      if (!state.ownsJob(q.jobId)) this.violations.push(`${q.jobId} planned by instance ${i}, which does not own its partition`);
      if (!q.vm) continue;
      const token = this.leases.acquire(this.now, q.vm, q.jobId, q.host, this.limitOf(q.host));
      if (typeof token !== 'number') {
        state.revisit(q.host);
        continue;
      }
      if (this.emit(me, q.jobId, { type: 'Schedule', host: q.host, fencingToken: token, deadlineAt: new Date(this.now + 3_600_000).toISOString() }).length)
        state.seen.set(q.jobId, this.now);
      else this.leases.release(q.vm, q.jobId, token);
    }
  }

  private executing(...statuses: string[]): JobState[] {
    return [...this.truth.values()].filter((s) => statuses.includes(s.status) && !this.dead.has(`${s.jobId}.${s.attempt}`));
  }

  private byExecutor(s: JobState, cmd: JobCommand): void {
    const d = decide(cmd, s, { source: 'executor', now: new Date(this.now) });
    if (d.ok) for (const e of d.events) this.append(e);
  }

  private base(s: JobState) {
    return { host: s.host!, attempt: s.attempt, fencingToken: s.fencingToken!, imagePath: `/images/${s.jobId}-${s.attempt}.vmsave`, format: 'sparse' as const };
  }

  start(s: JobState): void {
    this.byExecutor(s, { type: 'StartSave', data: { ...this.base(s), channels: 1, directIo: false, wasRunning: true, ramBytes: 64 * 2 ** 20 } });
  }

  complete(s: JobState): void {
    this.byExecutor(s, { type: 'CompleteSave', data: { ...this.base(s), bytes: 1, blocks: 1, durationMs: 5, throughputBytesPerSec: 1, vmState: 'running', qemu: {} } });
  }

  fail(s: JobState, retryable: boolean): void {
    this.byExecutor(s, {
      type: 'FailSave',
      data: { attempt: s.attempt, stage: 'migrate', code: 'test', reason: 'test', retryable, host: s.host, fencingToken: s.fencingToken, vmResumed: true },
    });
  }

  /**
   * Time passes: live owners renew their partitions; expired partitions go to the live instance
   * with the fewest (as the ownership rounds do within about a TTL); live executors heartbeat, and
   * each owner renews its running jobs' leases and runs its watchdog (a silent job is lost).
   */
  advance(ms: number): void {
    this.now += ms;
    for (const o of this.part) if (o && !o.lapsed && this.inst[o.owner]?.alive) o.until = this.now + PART_TTL;
    for (let p = 0; p < PARTITIONS; p++) {
      if (this.part[p] && this.part[p]!.until > this.now) continue;
      const live = this.inst.map((x, i) => [x, i] as const).filter(([x]) => x.alive);
      if (!live.length) continue;
      const count = (i: number) => this.part.filter((o) => o?.owner === i && o.until > this.now).length;
      const [, i] = live.sort((a, b) => count(a[1]) - count(b[1]))[0]!;
      this.take(i, p);
    }
    const alive = this.executing('scheduled', 'running');
    for (const me of this.inst) {
      if (!me.alive) continue;
      const { state } = me;
      for (const s of alive) {
        if (state.seen.has(s.jobId!)) state.seen.set(s.jobId!, this.now);
        if (state.ownsJob(s.jobId!) && state.jobs.get(s.jobId!)?.fencingToken === s.fencingToken) this.leases.renew(this.now, state.leaseKeyOf(s)!, s.jobId!, s.fencingToken!);
      }
      for (const id of state.dueChecks(this.now)) {
        const s = state.jobs.get(id)!;
        if (!onHost(s) || !state.ownsJob(id)) continue;
        if (!state.seen.has(id)) state.seen.set(id, Math.max(state.startedAtMs, Date.parse(s.updatedAt ?? '') || 0));
        const seen = state.seen.get(id)!;
        // The watchdog asks the log first (its view may lag): fold up, then judge.
        this.fold(me);
        const now = state.jobs.get(id)!;
        if (!onHost(now)) continue;
        if (this.now - seen > HB_TIMEOUT) {
          const data = {
            attempt: now.attempt,
            stage: 'lost' as const,
            code: 'executor-lost',
            reason: 'lost',
            retryable: true,
            host: now.host,
            fencingToken: now.fencingToken,
            vmResumed: false,
          };
          const before = now;
          if (this.emit(me, id, { type: 'FailSave', data }).length) this.react(me, before, state.jobs.get(id)!);
        } else state.scheduleCheck(id, Math.min(seen + HB_TIMEOUT + 1, this.now + 5000));
      }
    }
  }

  run(a: Action): void {
    const pick = (list: JobState[], k: number) => (list.length ? list[k % list.length] : undefined);
    switch (a.t) {
      case 'cmd':
        this.cmd(SaveRequest.parse({ requestId: `r-${a.r}`, vm: VMS[a.vm]! }));
        return;
      case 'redeliver':
        if (this.deliveries.length) this.cmd(this.deliveries[a.k % this.deliveries.length]!);
        return;
      case 'deliver':
        this.deliver(a.i);
        return;
      case 'fold':
        if (this.inst[a.i]!.alive) this.fold(this.inst[a.i]!, a.n);
        return;
      case 'pump':
        this.pump(a.i);
        return;
      case 'start': {
        const s = pick(this.executing('scheduled'), a.k);
        if (s) this.start(s);
        return;
      }
      case 'complete': {
        const s = pick(this.executing('running'), a.k);
        if (s) this.complete(s);
        return;
      }
      case 'fail': {
        const s = pick(this.executing('scheduled', 'running'), a.k);
        if (s) this.fail(s, a.retryable);
        return;
      }
      case 'crash': {
        const s = pick(this.executing('scheduled', 'running'), a.k);
        if (s) this.dead.add(`${s.jobId}.${s.attempt}`);
        return;
      }
      case 'take':
        this.take(a.i, a.p);
        return;
      case 'giveBack':
        this.giveBack(a.i, a.p);
        return;
      case 'kill':
        this.kill(a.i);
        return;
      case 'restart':
        this.restart(a.i);
        return;
      case 'lapse':
        this.lapse(a.p);
        return;
      case 'resume':
        this.resume(a.p);
        return;
      case 'advance':
        this.advance(a.ms);
        return;
    }
  }

  /** A live, caught-up instance's indexes say what the log says: all on-host jobs (a hint of every scheduler's), queued = its own partitions' requested jobs. */
  checkIndexes(): void {
    for (const me of this.inst) {
      if (!me.alive || me.pos < this.log.length || me.own.size) continue;
      const active: Record<string, number> = {};
      let queued = 0;
      for (const s of this.truth.values()) {
        if (onHost(s)) active[s.host!] = (active[s.host!] ?? 0) + 1;
        if (s.status === 'requested' && me.state.holdsJob(s.jobId!)) queued++;
      }
      expect(me.state.activeByHost()).toEqual(active);
      expect(Object.values(me.state.queueDepthByHost()).reduce((a, b) => a + b, 0)).toBe(queued);
    }
  }

  /** Restart the dead, let partitions be taken, fold, deliver, pump, and let executors finish, until nothing is open (bounded). */
  drain(): void {
    for (let i = 0; i < INSTANCES; i++) this.restart(i);
    for (let round = 0; round < 300; round++) {
      // Lapsed leases: renewed in time, or (expired) their loss confirmed and the partition taken again.
      for (let p = 0; p < PARTITIONS; p++) this.resume(p);
      this.advance(PART_TTL + 1);
      for (let i = 0; i < INSTANCES; i++) {
        this.fold(this.inst[i]!);
        while (this.queue.some((q, p) => q.length && this.ownerOf(p) === i)) this.deliver(i);
        this.pump(i);
      }
      for (const s of this.executing('scheduled')) this.start(s);
      for (const s of this.executing('running')) this.complete(s);
      const open = [...this.truth.values()].filter((s) => !isFinal(s) && s.status !== 'completed');
      if (!open.length && this.queue.every((q) => !q.length)) return;
    }
  }
}

const gained = (p: number): ReadonlySet<number> => new Set([p]);

describe('several active schedulers over one log (fast-check)', () => {
  it('never more than the limit per host, never two jobs of one VM at once, one answer per delivered command, one job per request, every job final eventually', () => {
    fc.assert(
      fc.property(fc.array(action, { minLength: 1, maxLength: 100 }), (actions) => {
        const w = new World();
        for (const a of actions) {
          w.run(a);
          w.checkIndexes();
        }
        w.drain();
        for (const me of w.inst) w.fold(me);
        w.checkIndexes();
        expect(w.violations).toEqual([]);
        // Per VM, first attempts are scheduled in admission order (a lapse or a takeover keeps every job in its place).
        const requestedAt = new Map<string, number>();
        const lastScheduled = new Map<string, number>();
        const outOfOrder: string[] = [];
        for (const [k, e] of w.log.entries()) {
          if (e.type === 'SaveRequested') requestedAt.set(e.jobId, k);
          if (e.type !== 'SaveScheduled' || w.truth.get(e.jobId)?.kind !== 'save' || e.data.attempt !== 1) continue;
          const vm = w.truth.get(e.jobId)!.vm!;
          const r = requestedAt.get(e.jobId)!;
          if ((lastScheduled.get(vm) ?? -1) > r) outOfOrder.push(`${e.jobId} of ${vm} scheduled after a later request's job`);
          lastScheduled.set(vm, Math.max(lastScheduled.get(vm) ?? -1, r));
        }
        expect(outOfOrder).toEqual([]);
        expect(w.answers.length).toBe(w.deliveries.length);
        expect(w.answers.every((n) => n === 1)).toBe(true);
        const requested = new Map<string, number>();
        for (const e of w.log) if (e.type === 'SaveRequested') requested.set(e.jobId, (requested.get(e.jobId) ?? 0) + 1);
        expect([...requested.values()].every((n) => n === 1)).toBe(true);
        expect(new Set(w.deliveries.map((d) => jobIdFor('save', d.requestId)))).toEqual(new Set(requested.keys()));
        const open = [...w.truth.values()].filter((s) => !isFinal(s) && s.status !== 'completed');
        expect(open.map((s) => `${s.jobId} ${s.status}`)).toEqual([]);
      }),
      { numRuns: 200 },
    );
  }, 120_000);
});
