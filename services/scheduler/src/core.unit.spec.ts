/**
 * Property tests of the scheduler's pure core — the incremental state (`SchedulerState.put`,
 * `plan`, the watchdog's time index), admission (`decideSave`, `answerFor`), `pickNext`, and the
 * jobs package's `decide`/`evolve` — over random interleavings of commands (new and redelivered),
 * executor events, host announcements, crashes, timer fires and scheduler restarts. The world
 * around the core (the log, the leases, the executors) is a plain in-memory model.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HostAnnouncement, jobIdFor, SaveRequest, type JobEvent } from '@vmsave/contracts';
import { decide, decideRetry, evolve, initialState, isFinal, ON_HOST_STATUSES, type JobCommand, type JobState } from '@vmsave/jobs';
import { answerFor, decideSave } from './admission.ts';
import { admitSave } from './policy.ts';
import { SchedulerState } from './state.ts';

const HOSTS = ['h0', 'h1', 'h2'];
const VMS = ['v0', 'v1', 'v2', 'v3', 'v4', 'v5'];
const hostOfVm = (i: number) => HOSTS[i % HOSTS.length]!;
const HB_TIMEOUT = 15_000;
const T0 = Date.parse('2026-06-01T00:00:00Z');
const source = { source: 'scheduler' };

type Action =
  | { t: 'cmd'; r: number; vm: number; prio: 'high' | 'normal' | 'low' }
  | { t: 'redeliver'; k: number }
  | { t: 'pump' }
  | { t: 'start'; k: number }
  | { t: 'complete'; k: number }
  | { t: 'fail'; k: number; retryable: boolean }
  | { t: 'cancel'; k: number }
  | { t: 'crash'; host: number }
  | { t: 'announce'; host: number; limit: number }
  | { t: 'advance'; ms: number }
  | { t: 'restart' };

const action: fc.Arbitrary<Action> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({ t: fc.constant('cmd' as const), r: fc.nat(15), vm: fc.nat(VMS.length), prio: fc.constantFrom('high' as const, 'normal' as const, 'low' as const) }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('redeliver' as const), k: fc.nat(50) }) },
  { weight: 4, arbitrary: fc.constant({ t: 'pump' as const }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('start' as const), k: fc.nat(20) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('complete' as const), k: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('fail' as const), k: fc.nat(20), retryable: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('cancel' as const), k: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('crash' as const), host: fc.nat(HOSTS.length - 1) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('announce' as const), host: fc.nat(HOSTS.length - 1), limit: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('advance' as const), ms: fc.integer({ min: 100, max: 20_000 }) }) },
  { weight: 1, arbitrary: fc.constant({ t: 'restart' as const }) },
);

const onHost = (s: JobState | undefined) => !!s && s.status !== 'none' && ON_HOST_STATUSES.has(s.status);

/** The log, the leases, the executors and the clock around one scheduler core. */
class World {
  now = T0;
  readonly log: JobEvent[] = [];
  /** Every job folded straight from the log: the truth the scheduler's indexes are checked against. */
  readonly truth = new Map<string, JobState>();
  state!: SchedulerState;
  readonly limits = HOSTS.map((_, i) => 1 + (i % 2));
  private readonly leases = new Map<string, { owner: string; token: number }>();
  private tokens = 0;
  /** Attempts whose executor died (`jobId.attempt`): they never report again. */
  private readonly dead = new Set<string>();
  /** Commands delivered so far (a redelivery is another delivery of one of them). */
  readonly deliveries: SaveRequest[] = [];
  readonly answers: number[] = [];
  readonly violations: string[] = [];

  constructor() {
    this.restart();
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
      maxConcurrentJobs: this.limits[i],
      vms: VMS.flatMap((name, j) => (hostOfVm(j) === HOSTS[i] ? [{ name, uuid: `u-${j}`, machine: 'q35', memoryMiB: 64, vcpus: 1, status: 'running' as const }] : [])),
    });
  }

  private limitOf = (host: string) => this.state.hosts.get(host)?.announcement.maxConcurrentJobs ?? 2;
  private opts = () => ({ nowMs: this.now, hostOfflineMs: Number.MAX_SAFE_INTEGER });

  /** A scheduler (re)starting: a fresh state folded from the whole log, hosts from their announcements. */
  restart(): void {
    this.state = new SchedulerState();
    this.state.startedAtMs = this.now;
    this.state.checkAfterMs = 5000;
    for (let i = 0; i < HOSTS.length; i++) this.state.setHost({ announcement: this.announcement(i), lastSeenMs: this.now });
    for (const e of this.log) this.state.put(e.jobId, evolve(this.state.jobs.get(e.jobId) ?? initialState(), e));
  }

  private append(e: JobEvent): void {
    this.log.push(e);
    this.truth.set(e.jobId, evolve(this.truth.get(e.jobId) ?? initialState(), e));
    this.state.put(e.jobId, evolve(this.state.jobs.get(e.jobId) ?? initialState(), e));
  }

  private emit(jobId: string, cmd: JobCommand): boolean {
    const s = this.state.jobs.get(jobId)!;
    const meta = { ...source, now: new Date(this.now) };
    const d = cmd.type === 'Retry' ? decideRetry(cmd, s, meta) : decide(cmd, s, meta);
    if (!d.ok) return false;
    for (const e of d.events) this.append(e);
    return d.events.length > 0;
  }

  deliver(req: SaveRequest): void {
    this.deliveries.push(req);
    const jobId = jobIdFor('save', req.requestId);
    let duplicate = true;
    if ((this.state.jobs.get(jobId)?.status ?? 'none') === 'none') {
      duplicate = false;
      const { events, admission } = decideSave(this.state, jobId, req, this.opts(), new Date(this.now));
      if (!('rule' in admission)) this.state.setPlacement(jobId, { host: admission.host, vm: req.vm, ramBytes: admission.ramBytes });
      for (const e of events) this.append(e);
    }
    const answer = answerFor(this.state, jobId, duplicate);
    const truth = this.truth.get(jobId)!;
    if (answer.jobId !== jobId || (answer.outcome === 'rejected') !== (truth.rejection !== undefined && truth.status === 'rejected' && truth.attempt === 0)) {
      this.violations.push(`answer ${JSON.stringify(answer)} does not match the log's ${truth.status}`);
    }
    this.answers[this.deliveries.length - 1] = (this.answers[this.deliveries.length - 1] ?? 0) + 1;
  }

  /** A placement pass: the unplaced are placed (as after a restart), then what `plan` picks is scheduled under a lease. */
  pump(): void {
    const { state } = this;
    if (state.needsPlacing) {
      state.needsPlacing = false;
      for (const id of [...state.unplaced]) {
        const s = state.jobs.get(id)!;
        const adm = admitSave(s.saveRequest!, state.hostsWithVm(s.saveRequest!.vm), this.opts());
        if ('rule' in adm) this.emit(id, { type: 'Reject', ...adm });
        else state.setPlacement(id, { host: adm.host, vm: s.vm, ramBytes: adm.ramBytes });
      }
    }
    const picks = state.plan(this.now, this.limitOf);
    // What the plan hands out, judged against the log (the leases below are a second line the plan must not need).
    for (const [i, q] of picks.entries()) {
      const limit = this.limitOf(q.host);
      const onThatHost = [...this.truth.values()].filter((s) => onHost(s) && s.host === q.host).length + picks.slice(0, i).filter((p) => p.host === q.host).length;
      if (onThatHost >= limit) this.violations.push(`${q.jobId} picked for ${q.host} with ${onThatHost} of ${limit} slots taken`);
      const sameVm = [...this.truth.values()].find((s) => onHost(s) && s.vm === q.vm) ?? picks.slice(0, i).find((p) => p.vm === q.vm);
      if (sameVm) this.violations.push(`${q.jobId} picked while ${sameVm.jobId} of VM ${q.vm} is busy`);
      if (this.truth.get(q.jobId)?.status !== 'requested') this.violations.push(`${q.jobId} picked while ${this.truth.get(q.jobId)?.status}`);
    }
    for (const q of picks) {
      if (!q.vm || this.leases.has(q.vm)) continue;
      const token = ++this.tokens;
      this.leases.set(q.vm, { owner: q.jobId, token });
      if (this.emit(q.jobId, { type: 'Schedule', host: q.host, fencingToken: token, deadlineAt: new Date(this.now + 3_600_000).toISOString() })) {
        state.seen.set(q.jobId, this.now);
      } else this.leases.delete(q.vm);
    }
  }

  private inStatus(...statuses: string[]): JobState[] {
    return [...this.truth.values()].filter((s) => statuses.includes(s.status) && !this.dead.has(`${s.jobId}.${s.attempt}`));
  }

  /** The job left its host: its lease goes; a retryable failure is retried after a backoff. */
  private ended(before: JobState): void {
    const l = this.leases.get(before.vm!);
    if (l?.owner === before.jobId) this.leases.delete(before.vm!);
    this.state.seen.delete(before.jobId!);
    const s = this.state.jobs.get(before.jobId!)!;
    if (s.status === 'failed') this.emit(before.jobId!, { type: 'Retry', delayMs: 1000, maxAttempts: 3 });
  }

  private base(s: JobState) {
    return { host: s.host!, attempt: s.attempt, fencingToken: s.fencingToken!, imagePath: `/images/${s.jobId}-${s.attempt}.vmsave`, format: 'sparse' as const };
  }

  start(s: JobState): void {
    if (s.cancelRequested) {
      this.confirmCancel(s);
      return;
    }
    this.emit(s.jobId!, { type: 'StartSave', data: { ...this.base(s), channels: 1, directIo: false, wasRunning: true, ramBytes: 64 * 2 ** 20 } });
  }

  complete(s: JobState): void {
    if (s.cancelRequested) {
      this.confirmCancel(s);
      return;
    }
    if (this.emit(s.jobId!, { type: 'CompleteSave', data: { ...this.base(s), bytes: 1, blocks: 1, durationMs: 5, throughputBytesPerSec: 1, vmState: 'running', qemu: {} } }))
      this.ended(s);
  }

  fail(s: JobState, retryable: boolean): void {
    const data = { attempt: s.attempt, stage: 'migrate' as const, code: 'test', reason: 'test', retryable, host: s.host, fencingToken: s.fencingToken, vmResumed: true };
    if (this.emit(s.jobId!, { type: 'FailSave', data })) this.ended(s);
  }

  private confirmCancel(s: JobState): void {
    if (this.emit(s.jobId!, { type: 'ConfirmCancelled', reason: 'asked' })) this.ended(s);
  }

  cancel(s: JobState): void {
    this.emit(s.jobId!, { type: 'Cancel', reason: 'asked' });
  }

  crash(host: string): void {
    for (const s of this.inStatus('scheduled', 'running')) if (s.host === host) this.dead.add(`${s.jobId}.${s.attempt}`);
  }

  announce(i: number, limit: number): void {
    this.limits[i] = limit;
    this.state.setHost({ announcement: this.announcement(i), lastSeenMs: this.now });
  }

  /** Time passes: live executors heartbeat, then the watchdog's due checks fire (a silent job is lost). */
  advance(ms: number): void {
    this.now += ms;
    const { state } = this;
    for (const s of this.inStatus('scheduled', 'running')) if (state.seen.has(s.jobId!)) state.seen.set(s.jobId!, this.now);
    for (const id of state.dueChecks(this.now)) {
      const s = state.jobs.get(id)!;
      if (!onHost(s)) continue;
      if (!state.seen.has(id)) state.seen.set(id, Math.max(state.startedAtMs, Date.parse(s.updatedAt ?? '') || 0));
      const seen = state.seen.get(id)!;
      if (this.now - seen > HB_TIMEOUT) this.fail(s, true);
      else state.scheduleCheck(id, Math.min(seen + HB_TIMEOUT + 1, this.now + 5000));
    }
  }

  run(a: Action): void {
    const pick = (list: JobState[], k: number) => (list.length ? list[k % list.length] : undefined);
    switch (a.t) {
      case 'cmd':
        this.deliver(SaveRequest.parse({ requestId: `r-${a.r}`, vm: VMS[a.vm] ?? 'nowhere', priority: a.prio }));
        return;
      case 'redeliver':
        if (this.deliveries.length) this.deliver(this.deliveries[a.k % this.deliveries.length]!);
        return;
      case 'pump':
        this.pump();
        return;
      case 'start': {
        const s = pick(this.inStatus('scheduled'), a.k);
        if (s) this.start(s);
        return;
      }
      case 'complete': {
        const s = pick(this.inStatus('running'), a.k);
        if (s) this.complete(s);
        return;
      }
      case 'fail': {
        const s = pick(this.inStatus('scheduled', 'running'), a.k);
        if (s) this.fail(s, a.retryable);
        return;
      }
      case 'cancel': {
        const s = pick(this.inStatus('requested', 'scheduled', 'running'), a.k);
        if (s) this.cancel(s);
        return;
      }
      case 'crash':
        this.crash(HOSTS[a.host]!);
        return;
      case 'announce':
        this.announce(a.host, a.limit);
        return;
      case 'advance':
        this.advance(a.ms);
        return;
      case 'restart':
        this.restart();
        return;
    }
  }

  /** The scheduler's incremental indexes say what the log says. */
  checkIndexes(): void {
    const active: Record<string, number> = {};
    let queued = 0;
    for (const s of this.truth.values()) {
      if (onHost(s)) active[s.host!] = (active[s.host!] ?? 0) + 1;
      if (s.status === 'requested') queued++;
    }
    expect(this.state.activeByHost()).toEqual(active);
    expect(Object.values(this.state.queueDepthByHost()).reduce((a, b) => a + b, 0)).toBe(queued);
  }

  /** Executors finish whatever they hold and time moves on, until nothing is open (bounded). */
  drain(): void {
    for (let i = 0; i < 200; i++) {
      this.pump();
      for (const s of this.inStatus('scheduled')) this.start(s);
      for (const s of this.inStatus('running')) this.complete(s);
      if ([...this.truth.values()].every((s) => isFinal(s) || s.status === 'completed')) return;
      this.advance(5000);
    }
  }
}

describe('the scheduler core under random interleavings (fast-check)', () => {
  it('never more than the limit per host, never two jobs of one VM at once, one answer per delivered command, one job per request, every job final eventually', () => {
    fc.assert(
      fc.property(fc.array(action, { minLength: 1, maxLength: 80 }), (actions) => {
        const w = new World();
        for (const a of actions) {
          w.run(a);
          w.checkIndexes();
        }
        w.drain();
        w.checkIndexes();
        expect(w.violations).toEqual([]);
        // Exactly one answer per delivery, and each request id is one job with one SaveRequested.
        expect(w.answers.length).toBe(w.deliveries.length);
        expect(w.answers.every((n) => n === 1)).toBe(true);
        const requested = new Map<string, number>();
        for (const e of w.log) if (e.type === 'SaveRequested') requested.set(e.jobId, (requested.get(e.jobId) ?? 0) + 1);
        expect([...requested.values()].every((n) => n === 1)).toBe(true);
        expect(new Set(w.deliveries.map((d) => jobIdFor('save', d.requestId)))).toEqual(new Set(requested.keys()));
        // Every job ends: final, or a completed save (its verdict is the verifier's).
        const open = [...w.truth.values()].filter((s) => !isFinal(s) && s.status !== 'completed');
        expect(open.map((s) => `${s.jobId} ${s.status}`)).toEqual([]);
      }),
      { numRuns: 200 },
    );
    // About 2 s on an idle machine; generous for a loaded one.
  }, 120_000);
});
