/** A binary min-heap ordered by `at` (ms): the scheduler's time-ordered indexes (retry backoffs, watchdog checks). */
export class TimeHeap<T> {
  private readonly items: Array<{ at: number; value: T }> = [];

  get size(): number {
    return this.items.length;
  }

  push(at: number, value: T): void {
    const a = this.items;
    a.push({ at, value });
    for (let i = a.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (a[p]!.at <= a[i]!.at) break;
      [a[p], a[i]] = [a[i]!, a[p]!];
      i = p;
    }
  }

  /** The earliest time in the heap (Infinity when empty). */
  peekAt(): number {
    return this.items[0]?.at ?? Number.POSITIVE_INFINITY;
  }

  /** Remove and return every entry due at or before `now`, earliest first. */
  popDue(now: number): Array<{ at: number; value: T }> {
    const out: Array<{ at: number; value: T }> = [];
    while (this.items.length && this.items[0]!.at <= now) out.push(this.pop()!);
    return out;
  }

  pop(): { at: number; value: T } | undefined {
    const a = this.items;
    if (!a.length) return undefined;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length) {
      a[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && a[l]!.at < a[m]!.at) m = l;
        if (r < a.length && a[r]!.at < a[m]!.at) m = r;
        if (m === i) break;
        [a[m], a[i]] = [a[i]!, a[m]!];
        i = m;
      }
    }
    return top;
  }
}
