import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { drainIdFor, DrainRequest, JobEvent, type DrainRequestInput } from '@vmsave/contracts';
import { childOf, decideDrain, foldDrain, foldView, isDrainFinal, isVmDone, type DrainAction, type DrainCommand, type DrainEvent, type DrainState } from './drain.ts';
import { describeState } from './describe.ts';
import { fold, initialState, isFinal, type JobState } from './state.ts';

const meta = { source: 'scheduler', now: new Date('2026-12-04T01:00:00Z') };
const drainId = drainIdFor('drain-1');
const req = (over: Partial<DrainRequestInput> = {}) => DrainRequest.parse({ requestId: 'drain-1', host: 'host-a', ...over });

/** A child job's state as the jobs' fold would have it. */
const child = (jobId: string, kind: 'save' | 'restore', status: JobState['status'], over: Partial<JobState> = {}): JobState => ({
  ...initialState(),
  kind,
  jobId,
  status,
  attempt: 1,
  version: 3,
  ...(kind === 'save' ? { imagePath: `/srv/a/images/img-${jobId}.vmsave` } : {}),
  // A verified save's image on the bus, as a drain to another host waits for (see 'waits for the copy').
  ...(kind === 'save' && status === 'verified' ? { replicated: { bucket: 'VMSAVE_IMAGES', object: jobId, host: 'host-a', bytesMoved: 1, at: '2026-12-04T01:00:00Z' } } : {}),
  ...over,
});

/** Runs commands against the fold of all events so far, like the orchestrator. */
class Drain {
  log: DrainEvent[] = [];
  actions: DrainAction[] = [];
  get s(): DrainState {
    return foldDrain(this.log);
  }
  run(cmd: DrainCommand) {
    const d = decideDrain(cmd, this.s, meta);
    if (!d.ok) throw new Error(d.message);
    this.log.push(...d.events);
    this.actions.push(...d.actions);
    return d;
  }
}

describe('decideDrain', () => {
  it('asks one save per VM with the drain id, and events that pass the contracts', () => {
    const d = new Drain();
    const r = d.run({ type: 'Start', drainId, request: req({ priority: 'high', format: 'sparse' }), vms: ['a', 'b', 'a'] });
    expect(r.actions.map((a) => [a.type, a.vm])).toEqual([
      ['save', 'a'],
      ['save', 'b'],
    ]);
    const save = r.actions[0]!;
    expect(save.type === 'save' && save.request).toMatchObject({ vm: 'a', after: 'quit', priority: 'high', format: 'sparse', drainId });
    expect(save.jobId).toBe(childOf(drainId, 'save', 'a').jobId);
    for (const e of d.log) expect(JobEvent.parse(e)).toEqual(e);
    expect(d.s.vms.map((v) => v.phase)).toEqual(['queued', 'queued']);
  });

  it('to any: restores go to the other live hosts in turn, never the drained host; a drain elsewhere replicates', () => {
    const d = new Drain();
    const r = d.run({ type: 'Start', drainId, request: req({ to: 'any' }), vms: ['a', 'b', 'c'], targets: ['host-b', 'host-a', 'host-c'] });
    expect(d.s.targets).toEqual(['host-b', 'host-c']);
    for (const a of r.actions) expect(a.type === 'save' && a.request.replicate).toBe('bus');
    const hosts = ['a', 'b', 'c'].map((vm) => {
      const out = d.run({ type: 'Observe', child: child(childOf(drainId, 'save', vm).jobId, 'save', 'verified') });
      const restore = out.actions.find((a) => a.type === 'restore');
      return restore?.type === 'restore' ? restore.request.host : undefined;
    });
    expect(hosts).toEqual(['host-b', 'host-c', 'host-b']);
    // Same host, or told not to: no replication asked.
    const same = new Drain().run({ type: 'Start', drainId, request: req({ to: 'host-a' }), vms: ['a'] });
    expect(same.actions[0]?.type === 'save' && same.actions[0].request.replicate).toBeUndefined();
    const none = new Drain().run({ type: 'Start', drainId, request: req({ to: 'host-b', replicate: 'none' }), vms: ['a'] });
    expect(none.actions[0]?.type === 'save' && none.actions[0].request.replicate).toBe('none');
  });

  it('to another host: waits for the copy on the bus before the restore, names the image by its file name; a failed copy fails the VM', () => {
    const d = new Drain();
    d.run({ type: 'Start', drainId, request: req({ to: 'host-b' }), vms: ['a', 'b'] });
    const [sa, sb] = ['a', 'b'].map((vm) => childOf(drainId, 'save', vm).jobId) as [string, string];
    let r = d.run({ type: 'Observe', child: child(sa, 'save', 'verified', { replicated: undefined }) });
    expect(r.actions).toEqual([]);
    expect(d.s.vms[0]).toMatchObject({ phase: 'saved' });
    r = d.run({ type: 'Observe', child: child(sa, 'save', 'verified') });
    const restore = r.actions[0];
    expect(restore?.type === 'restore' && restore.request).toMatchObject({ image: `img-${sa}.vmsave`, host: 'host-b' });
    d.run({
      type: 'Observe',
      child: child(sb, 'save', 'verified', { replicated: undefined, replicationFailed: { code: 'ENOSPC', reason: 'bucket full', at: '2026-12-04T01:00:01Z' } }),
    });
    expect(d.s.vms[1]).toMatchObject({ phase: 'failed' });
    expect(d.s.vms[1]?.error).toContain(`vmsave restore img-${sb}.vmsave --host host-a`);
  });

  it('with no VMs completes at once; a refused drain fails with its reason', () => {
    const d = new Drain();
    d.run({ type: 'Start', drainId, request: req(), vms: [] });
    expect(d.s.status).toBe('completed');
    const f = new Drain();
    f.run({ type: 'Refuse', drainId, request: req(), reason: 'host host-a: no announcement' });
    expect(f.s).toMatchObject({ status: 'failed', reason: 'host host-a: no announcement' });
  });

  it('moves queued → saving → saved → restoring → restored, and names each VM in DrainCompleted', () => {
    const d = new Drain();
    d.run({ type: 'Start', drainId, request: req({ to: 'host-b' }), vms: ['a'] });
    const sid = childOf(drainId, 'save', 'a').jobId;
    d.run({ type: 'Observe', child: child(sid, 'save', 'running') });
    expect(d.s.vms[0]!.phase).toBe('saving');
    d.run({ type: 'Observe', child: child(sid, 'save', 'completed') });
    expect(d.s.vms[0]!.phase).toBe('saving');
    const r = d.run({ type: 'Observe', child: child(sid, 'save', 'verified') });
    expect(r.actions).toEqual([expect.objectContaining({ type: 'restore', vm: 'a', request: expect.objectContaining({ image: `img-${sid}.vmsave`, host: 'host-b', drainId }) })]);
    expect(d.s.vms[0]!.phase).toBe('restoring');
    const rid = childOf(drainId, 'restore', 'a').jobId;
    d.run({ type: 'Observe', child: child(rid, 'restore', 'completed', { host: 'host-b' }) });
    expect(d.s.status).toBe('completed');
    expect(d.log.at(-1)).toMatchObject({ type: 'DrainCompleted', data: { outcome: [{ vm: 'a', phase: 'restored', restoredOn: 'host-b', saveJobId: sid, restoreJobId: rid }] } });
  });

  it('a VM whose save fails is named, never restored, and the drain fails', () => {
    const d = new Drain();
    d.run({ type: 'Start', drainId, request: req({ to: 'any' }), vms: ['a', 'b'] });
    const [sa, sb] = ['a', 'b'].map((vm) => childOf(drainId, 'save', vm).jobId) as [string, string];
    // A retryable failure is not final (the scheduler retries): nothing changes.
    d.run({ type: 'Observe', child: child(sa, 'save', 'failed', { lastFailure: { stage: 'migrate', code: 'EIO', reason: 'x', retryable: true } }) });
    expect(d.s.vms[0]!.phase).toBe('queued');
    d.run({ type: 'Observe', child: child(sa, 'save', 'failed', { lastFailure: { stage: 'migrate', code: 'ENOSPC', reason: 'no space', retryable: false, vmResumed: true } }) });
    d.run({ type: 'Observe', child: child(sb, 'save', 'verified') });
    const r = d.run({ type: 'Observe', child: child(childOf(drainId, 'restore', 'b').jobId, 'restore', 'completed', { host: 'host-a' }) });
    expect(d.actions.filter((a) => a.type === 'restore').map((a) => a.vm)).toEqual(['b']);
    const end = r.events.at(-1)!;
    expect(end.type).toBe('DrainFailed');
    expect(end.type === 'DrainFailed' && end.data.reason).toContain('a');
    expect(d.s.vms[0]).toMatchObject({ vm: 'a', phase: 'failed', error: expect.stringContaining('ENOSPC') });
    expect(d.s.vms[0]!.restoreJobId).toBeUndefined();
  });

  it('cancel asks every unfinished child to cancel, restores nothing more, and ends cancelled', () => {
    const d = new Drain();
    d.run({ type: 'Start', drainId, request: req({ to: 'host-a' }), vms: ['a', 'b'] });
    const [sa, sb] = ['a', 'b'].map((vm) => childOf(drainId, 'save', vm).jobId) as [string, string];
    const r = d.run({ type: 'Cancel', reason: 'stop' });
    expect(r.actions.map((a) => [a.type, a.jobId])).toEqual([
      ['cancel', sa],
      ['cancel', sb],
    ]);
    expect(decideDrain({ type: 'Cancel', reason: 'again' }, d.s, meta)).toEqual({ ok: true, events: [], actions: [] });
    d.run({ type: 'Observe', child: child(sa, 'save', 'cancelled') });
    // Verified before its cancel arrived: saved, and not restored.
    const last = d.run({ type: 'Observe', child: child(sb, 'save', 'verified') });
    expect(last.actions).toEqual([]);
    expect(d.s).toMatchObject({ status: 'cancelled', vms: [{ phase: 'cancelled' }, { phase: 'saved' }] });
    expect(decideDrain({ type: 'Cancel', reason: 'late' }, d.s, meta)).toMatchObject({ ok: false, rule: 'job-final' });
    expect(decideDrain({ type: 'Cancel', reason: 'x' }, foldDrain([]), meta)).toMatchObject({ ok: false, rule: 'job-unknown' });
  });

  it('after a restart asks again what has no child yet and applies what the children did', () => {
    const d = new Drain();
    d.run({ type: 'Start', drainId, request: req({ to: 'host-a' }), vms: ['a', 'b'] });
    const [sa, sb] = ['a', 'b'].map((vm) => childOf(drainId, 'save', vm).jobId) as [string, string];
    const r = d.run({ type: 'Resume', children: new Map([[sa, child(sa, 'save', 'verified')]]) });
    expect(r.actions.map((a) => [a.type, a.vm])).toEqual([
      ['restore', 'a'],
      ['save', 'b'],
    ]);
    expect(r.actions[1]!.jobId).toBe(sb);
    expect(d.s.vms.map((v) => v.phase)).toEqual(['restoring', 'queued']);
  });
});

describe('decideDrain properties', () => {
  type SaveEnd = 'verified' | 'failed' | 'rejected' | 'cancelled' | 'retried';
  const arbCase = fc.record({
    vms: fc.uniqueArray(fc.constantFrom('a', 'b', 'c', 'd', 'e'), { maxLength: 5 }),
    to: fc.constantFrom<undefined | string>(undefined, 'host-b', 'any'),
    saveEnd: fc.array(fc.constantFrom<SaveEnd>('verified', 'failed', 'rejected', 'cancelled', 'retried'), { minLength: 5, maxLength: 5 }),
    restoreOk: fc.array(fc.boolean(), { minLength: 5, maxLength: 5 }),
    choices: fc.array(fc.nat(1000), { maxLength: 80 }),
    cancelAt: fc.option(fc.nat(40)),
    restarts: fc.array(fc.nat(40), { maxLength: 3 }),
  });

  it('every VM ends final; a VM that failed to save is named and never restored; nothing restored twice', () => {
    fc.assert(
      fc.property(arbCase, (c) => {
        const d = new Drain();
        const children = new Map<string, JobState>();
        const steps = new Map<string, number>();
        const restoresAsked = new Map<string, Set<string>>();
        const plan = (vm: string) => (c.vms as string[]).indexOf(vm);
        const settled = (j: JobState) =>
          ['verified', 'rejected', 'cancelled'].includes(j.status) || (j.status === 'failed' && !j.lastFailure?.retryable) || (j.kind === 'restore' && j.status === 'completed');
        const take = (a: DrainAction) => {
          if (a.type === 'cancel') {
            const cur = children.get(a.jobId);
            if (cur && !settled(cur) && cur.status !== 'completed') {
              const next: JobState = { ...cur, status: 'cancelled' };
              children.set(a.jobId, next);
              d.run({ type: 'Observe', child: next });
            }
            return;
          }
          if (a.type === 'restore') {
            const set = restoresAsked.get(a.vm) ?? new Set();
            set.add(a.jobId);
            restoresAsked.set(a.vm, set);
          }
          // The scheduler deduplicates by job id: asking again changes nothing.
          if (!children.has(a.jobId)) children.set(a.jobId, child(a.jobId, a.type, 'requested'));
        };
        /** One step of a child job towards its planned end. */
        const advance = (jobId: string) => {
          const cur = children.get(jobId)!;
          const vm = d.s.vms.find((v) => v.saveJobId === jobId || v.restoreJobId === jobId)!.vm;
          const n = (steps.get(jobId) ?? 0) + 1;
          steps.set(jobId, n);
          let next: JobState;
          if (cur.kind === 'save') {
            const end = c.saveEnd[plan(vm)]!;
            if (n === 1) next = { ...cur, status: 'running' };
            else if (end === 'retried' && n === 2) next = { ...cur, status: 'failed', lastFailure: { stage: 'migrate', code: 'EIO', reason: 'io', retryable: true } };
            else if (end === 'verified' || end === 'retried')
              next = { ...cur, status: n === 2 || (end === 'retried' && n === 3) ? 'completed' : 'verified', lastFailure: undefined };
            else if (end === 'failed') next = { ...cur, status: 'failed', lastFailure: { stage: 'migrate', code: 'ENOSPC', reason: 'full', retryable: false } };
            else if (end === 'rejected') next = { ...cur, status: 'rejected', rejection: { rule: 'verification', message: 'bad' } };
            else next = { ...cur, status: 'cancelled' };
            // Verified, and copied to the bus in the same step (a drain to another host waits for the copy).
            if (next.status === 'verified') next = { ...next, replicated: { bucket: 'VMSAVE_IMAGES', object: jobId, host: 'host-a', bytesMoved: 1, at: '2026-12-04T01:00:00Z' } };
          } else {
            next =
              n === 1
                ? { ...cur, status: 'running' }
                : c.restoreOk[plan(vm)]
                  ? { ...cur, status: 'completed', host: 'host-b' }
                  : { ...cur, status: 'failed', lastFailure: { stage: 'restore', code: 'x', reason: 'x', retryable: false } };
          }
          children.set(jobId, next);
          d.run({ type: 'Observe', child: next });
        };

        d.run({ type: 'Start', drainId, request: req({ to: c.to }), vms: c.vms });
        let i = 0;
        for (let guard = 0; guard < 500; guard++) {
          if (c.cancelAt === i && !isDrainFinal(d.s)) d.run({ type: 'Cancel', reason: 'operator' });
          if (c.restarts.includes(i) && d.actions.length) {
            // A crash: the actions not taken yet are lost; the fold of the log and the children are what remain.
            d.actions = [];
            d.run({ type: 'Resume', children: new Map(children) });
          }
          const open = [...children.values()].filter((j) => !settled(j));
          const pick = c.choices[i] ?? i;
          i++;
          if (d.actions.length && (pick % 2 === 0 || !open.length)) take(d.actions.shift()!);
          else if (open.length) advance(open[pick % open.length]!.jobId!);
          else if (!d.actions.length) break;
        }
        // Late child states (a cancel raced a verdict) were observed above; the drain must be over.
        const s = d.s;
        expect(isDrainFinal(s)).toBe(true);
        expect(s.vms.map((v) => v.vm)).toEqual(c.vms);
        for (const v of s.vms) expect(isVmDone(s, v)).toBe(true);
        for (const v of s.vms) {
          const end = c.saveEnd[plan(v.vm)]!;
          if (end === 'failed' || end === 'rejected') {
            if (children.get(v.saveJobId!)?.status !== 'cancelled') expect(v.phase).toBe('failed');
            expect(v.error).toBeTruthy();
            expect(restoresAsked.has(v.vm)).toBe(false);
          }
          expect((restoresAsked.get(v.vm) ?? new Set()).size).toBeLessThanOrEqual(1);
          if (!c.to) expect(v.restoreJobId).toBeUndefined();
        }
        const ends = d.log.filter((e) => e.type === 'DrainCompleted' || e.type === 'DrainFailed' || e.type === 'DrainCancelled');
        expect(ends).toHaveLength(1);
        if (
          c.cancelAt === null &&
          c.vms.every((vm) => c.saveEnd[plan(vm)] === 'verified' || c.saveEnd[plan(vm)] === 'retried') &&
          (!c.to || c.vms.every((vm) => c.restoreOk[plan(vm)]))
        )
          expect(s.status).toBe('completed');
      }),
      { numRuns: 300 },
    );
  });
});

describe('a drain in the read models', () => {
  it('folds into one row of kind drain with its state, host, VM count and child jobs; save and restore events fold as before', () => {
    const d = new Drain();
    d.run({ type: 'Start', drainId, request: req({ to: 'host-b' }), vms: ['a', 'b'] });
    const sid = childOf(drainId, 'save', 'a').jobId;
    d.run({ type: 'Observe', child: child(sid, 'save', 'verified') });
    const row = foldView(d.log);
    expect(row).toMatchObject({ kind: 'drain', jobId: drainId, status: 'running', host: 'host-a', drain: { to: 'host-b', vmCount: 2 } });
    expect(row.drain!.vms.map((v) => [v.vm, v.phase, v.saveJobId])).toEqual([
      ['a', 'restoring', sid],
      ['b', 'queued', childOf(drainId, 'save', 'b').jobId],
    ]);
    expect(isFinal(row)).toBe(false);
    expect(describeState(row)).toBe(`drain ${drainId} of host-a to host-b running: 2 VM(s) (1 restoring, 1 queued)`);
    d.run({ type: 'Cancel', reason: 'stop' });
    d.run({ type: 'Observe', child: child(childOf(drainId, 'save', 'b').jobId, 'save', 'cancelled') });
    d.run({ type: 'Observe', child: child(childOf(drainId, 'restore', 'a').jobId, 'restore', 'completed', { host: 'host-b' }) });
    const end = foldView(d.log);
    expect(end).toMatchObject({ kind: 'drain', status: 'cancelled' });
    // The one final-ness rule holds for the row too.
    expect(isFinal(end)).toBe(true);
    // The jobs' own fold leaves a drain's events alone (the scheduler never sees a drain as a job on a host).
    expect(fold(d.log).status).toBe('none');
  });

  it('a drain request names the field and the rule it breaks', () => {
    const bad = DrainRequest.safeParse({ requestId: 'x', host: 'host a', after: 'running', format: 'zip' });
    expect(bad.success).toBe(false);
    const paths = bad.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    expect(paths).toEqual(expect.arrayContaining([expect.stringMatching(/^host: host name/), 'after: after: quit (a drain empties its host)', expect.stringMatching(/^format: /)]));
    expect(DrainRequest.parse({ requestId: 'x', host: 'h', to: 'any' })).toMatchObject({ after: 'quit', format: 'auto', priority: 'normal', to: 'any' });
  });
});
