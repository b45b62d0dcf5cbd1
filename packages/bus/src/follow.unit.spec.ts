import { describe, expect, it } from 'vitest';
import { resumable } from './follow.ts';

/** A read over `items` from position `after + 1` that fails (or just ends) after `failAfter` items. */
function flaky(items: number[], plan: Array<{ failAfter: number; throws: boolean }>) {
  const opened: Array<number | undefined> = [];
  const open = (after: number | undefined, signal: AbortSignal) => {
    opened.push(after);
    const p = plan.shift() ?? { failAfter: Infinity, throws: false };
    return (async function* () {
      let n = 0;
      // Replays one item before `after`, as a reset ordered consumer may.
      for (const i of items.filter((x) => after === undefined || x >= after)) {
        if (n++ >= p.failAfter) {
          if (p.throws) throw new Error('connection closed');
          return;
        }
        yield i;
      }
      // Then it stalls, as a stuck consumer does, until its opening is ended.
      await new Promise<void>((r) => (signal.aborted ? r() : signal.addEventListener('abort', () => r(), { once: true })));
    })();
  };
  return { open, opened };
}

describe('resumable', () => {
  it('reopens after an error or an end, from the position after the last item, skipping repeats', async () => {
    const { open, opened } = flaky(
      [1, 2, 3, 4, 5, 6],
      [
        { failAfter: 2, throws: true },
        { failAfter: 2, throws: false },
      ],
    );
    const resumes: unknown[] = [];
    const got: number[] = [];
    for await (const i of resumable(open, (x) => x, { onResume: (err) => resumes.push((err as Error).message), maxDelayMs: 1 })) {
      got.push(i);
      if (i === 6) break;
    }
    expect(got).toEqual([1, 2, 3, 4, 5, 6]);
    expect(opened).toEqual([undefined, 2, 3]);
    expect(resumes).toEqual(['connection closed', 'the read ended by itself']);
  });

  it('stops without reopening once aborted', async () => {
    const { open, opened } = flaky([1, 2], [{ failAfter: 1, throws: true }]);
    const ac = new AbortController();
    const got: number[] = [];
    for await (const i of resumable(open, (x) => x, { signal: ac.signal })) {
      got.push(i);
      ac.abort();
    }
    expect(got).toEqual([1]);
    expect(opened).toEqual([undefined]);
  });

  it('reopens a stalled read when asked (a reconnect), from where it stopped', async () => {
    // Each opening yields what `items` holds then stalls: it never sees items added later.
    const items = [1, 2, 3];
    const { open, opened } = flaky(items, []);
    let kick = (): void => undefined;
    const resumes: string[] = [];
    const got: number[] = [];
    const reopenOn = (fn: () => void) => {
      kick = fn;
      return () => undefined;
    };
    for await (const i of resumable(open, (x) => x, { reopenOn, reopenDelayMs: 1, onResume: (e) => resumes.push((e as Error).message) })) {
      got.push(i);
      if (i === 3) {
        items.push(4);
        setTimeout(() => kick(), 20);
      }
      if (i === 4) break;
    }
    expect(got).toEqual([1, 2, 3, 4]);
    expect(opened).toEqual([undefined, 3]);
    expect(resumes).toEqual(['reopened after a reconnect']);
  });
});
