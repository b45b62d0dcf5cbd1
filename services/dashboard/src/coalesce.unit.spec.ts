import { describe, expect, it } from 'vitest';
import { Coalescer } from './coalesce.ts';

const ev = (type: string) => ({ type });

describe('Coalescer: what a live stream owes one browser', () => {
  it('hands out every event in log order while the browser keeps up', () => {
    const c = new Coalescer<{ type: string }>();
    c.push(1, 'a', ev('SaveRequested'));
    c.push(2, 'b', ev('SaveRequested'));
    c.push(3, 'a', ev('SaveScheduled'));
    const t = c.take(false);
    expect(t).toEqual({
      kind: 'events',
      coalesced: false,
      items: [
        { seq: 1, jobId: 'a', event: ev('SaveRequested'), superseded: 0 },
        { seq: 2, jobId: 'b', event: ev('SaveRequested'), superseded: 0 },
        { seq: 3, jobId: 'a', event: ev('SaveScheduled'), superseded: 0 },
      ],
    });
    expect(c.size).toBe(0);
    expect(c.take(false)).toBeUndefined();
  });

  it('when the browser is behind, sends only each job’s latest event, in log order of those, with how many it stands for', () => {
    const c = new Coalescer<{ type: string }>();
    c.push(1, 'a', ev('SaveRequested'));
    c.push(2, 'b', ev('SaveRequested'));
    c.push(3, 'a', ev('SaveScheduled'));
    c.push(4, 'c', ev('SaveRequested'));
    c.push(5, 'a', ev('SaveStarted'));
    const t = c.take(true);
    expect(t?.kind).toBe('events');
    if (t?.kind !== 'events') return;
    expect(t.coalesced).toBe(true);
    expect(t.items.map((p) => [p.seq, p.jobId, p.event.type, p.superseded])).toEqual([
      [2, 'b', 'SaveRequested', 0],
      [4, 'c', 'SaveRequested', 0],
      [5, 'a', 'SaveStarted', 2],
    ]);
    // The last id sent (5) is a valid resume point: every event up to it was sent or superseded.
    expect(t.items.at(-1)!.seq).toBe(5);
  });

  it('coalesces a queue longer than maxExact even when the socket is not full', () => {
    const c = new Coalescer<{ type: string }>({ maxExact: 3 });
    for (let i = 1; i <= 4; i++) c.push(i, 'a', ev('SaveProgress'));
    const t = c.take(false);
    expect(t?.kind === 'events' && t.items.map((p) => [p.seq, p.superseded])).toEqual([[4, 3]]);
  });

  it('sends a summary (counts and the last sequence) instead of more than maxFrames jobs', () => {
    const c = new Coalescer<{ type: string }>({ maxFrames: 3 });
    for (let i = 1; i <= 8; i++) c.push(i, `j${i % 4}`, ev(i % 2 ? 'SaveRequested' : 'SaveScheduled'));
    expect(c.take(true)).toEqual({ kind: 'summary', summary: { seq: 8, events: 8, jobs: 4, byType: { SaveRequested: 4, SaveScheduled: 4 } } });
    expect(c.size).toBe(0);
  });

  it('stays bounded however far behind: past cap jobs only counts are kept', () => {
    const c = new Coalescer<{ type: string }>({ cap: 100 });
    for (let i = 1; i <= 100_000; i++) c.push(i, `j${i}`, ev('SaveRequested'));
    const internals = c as unknown as { queue: unknown[]; latest: Map<string, unknown> };
    expect(internals.queue.length).toBeLessThanOrEqual(100);
    expect(internals.latest.size).toBeLessThanOrEqual(100);
    const t = c.take(true);
    expect(t).toMatchObject({ kind: 'summary', summary: { seq: 100_000, events: 100_000 } });
    expect(t?.kind === 'summary' && t.summary.jobs).toBeGreaterThan(100);
    // After the summary it starts afresh, exact again.
    c.push(100_001, 'x', ev('SaveScheduled'));
    expect(c.take(false)).toMatchObject({ kind: 'events', coalesced: false, items: [{ seq: 100_001 }] });
  });
});
