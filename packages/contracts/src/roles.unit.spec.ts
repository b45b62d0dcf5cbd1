import { describe, expect, it } from 'vitest';
import { EVENT_PUBLISHERS, eventTypesOf, mayPublish, publisherRoles, refuseMisplacedEvent, roleOfSource } from './roles.ts';
import { jobEventTypes } from './events.ts';
import { subjects } from './subjects.ts';

describe('EVENT_PUBLISHERS', () => {
  it('gives every event type of the contracts at least one publisher role', () => {
    for (const t of jobEventTypes) expect(EVENT_PUBLISHERS[t]?.length ?? 0, t).toBeGreaterThan(0);
    expect(Object.keys(EVENT_PUBLISHERS).sort()).toEqual([...jobEventTypes].sort());
  });

  it('lets only the verifier publish verdicts, and the verifier nothing else', () => {
    expect(jobEventTypes.filter((t) => EVENT_PUBLISHERS[t].includes('verifier'))).toEqual(['ImageVerified', 'ImageRejected']);
    expect(EVENT_PUBLISHERS.ImageVerified).toEqual(['verifier']);
    expect(EVENT_PUBLISHERS.ImageRejected).toEqual(['verifier']);
  });

  it('lets executors publish Started/Completed/Failed/Cancelled, the scheduler requests, rejections, scheduling, retries, cancel requests', () => {
    for (const p of ['Save', 'Restore']) {
      for (const s of ['Started', 'Completed']) expect(EVENT_PUBLISHERS[`${p}${s}` as never], `${p}${s}`).toEqual(['executor']);
      // The scheduler's final failure when retries run out and the watchdog's lost job; a cancel of a queued job.
      for (const s of ['Failed', 'Cancelled']) expect(EVENT_PUBLISHERS[`${p}${s}` as never], `${p}${s}`).toEqual(['executor', 'scheduler']);
      for (const s of ['Requested', 'Rejected', 'Scheduled', 'Retrying', 'CancelRequested']) expect(EVENT_PUBLISHERS[`${p}${s}` as never], `${p}${s}`).toEqual(['scheduler']);
    }
    for (const r of publisherRoles) expect(eventTypesOf(r).length, r).toBeGreaterThan(0);
  });
});

describe('mayPublish', () => {
  it('reads the role from the source the services write', () => {
    expect(roleOfSource('scheduler')).toBe('scheduler');
    expect(roleOfSource('verifier')).toBe('verifier');
    expect(roleOfSource('executor')).toBe('executor');
    expect(roleOfSource('executor@host-a')).toBe('executor');
    for (const s of ['executor@', 'test', 'Scheduler', 'verifier-test', 'executor:h1', '']) expect(roleOfSource(s), s).toBeUndefined();
  });

  it('given a source and a type, allows exactly the table', () => {
    expect(mayPublish('verifier', 'ImageVerified')).toBe(true);
    expect(mayPublish('executor@h1', 'ImageVerified')).toBe(false);
    expect(mayPublish('scheduler', 'ImageRejected')).toBe(false);
    expect(mayPublish('executor@h1', 'SaveCompleted')).toBe(true);
    expect(mayPublish('scheduler', 'SaveCompleted')).toBe(false);
    expect(mayPublish('scheduler', 'SaveFailed')).toBe(true);
    expect(mayPublish('verifier', 'SaveRequested')).toBe(false);
    expect(mayPublish('anyone', 'SaveRequested')).toBe(false);
    expect(mayPublish('scheduler', 'NoSuchType')).toBe(false);
  });
});

describe('refuseMisplacedEvent', () => {
  const ev = { jobId: 's-0123456789abcdef0123', type: 'ImageVerified', source: 'verifier' } as const;
  it('accepts an event on its own subject from a role that may emit it', () => {
    expect(refuseMisplacedEvent(subjects.evt(ev.jobId, ev.type), ev)).toBeUndefined();
  });
  it('names the field and the rule of a misplaced or forged event', () => {
    expect(refuseMisplacedEvent(subjects.evt(ev.jobId, 'SaveCompleted'), ev)).toMatch(/^type: .*subject's type token "SaveCompleted"/);
    expect(refuseMisplacedEvent(subjects.evt('s-other', ev.type), ev)).toMatch(/^jobId: /);
    expect(refuseMisplacedEvent(subjects.evt(ev.jobId, ev.type), { ...ev, source: 'executor' })).toMatch(
      /^source: "executor" \(role executor\) may not publish ImageVerified; only verifier/,
    );
    expect(refuseMisplacedEvent(subjects.evt(ev.jobId, ev.type), { ...ev, source: 'test' })).toMatch(/^source: "test" \(no role/);
    expect(refuseMisplacedEvent('vmsave.work.h1', ev)).toMatch(/^subject: /);
  });
});
