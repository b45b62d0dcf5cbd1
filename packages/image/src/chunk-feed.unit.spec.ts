/**
 * The chunk feed (pure logic, a simulated lender): every read gives the bytes the file holds,
 * whatever the order the chunks arrive in, whichever are short, and however few buffers the
 * lender has (two or more); it never waits for a chunk that cannot come; every lent chunk is
 * released exactly once. A legacy stream walked through it gives the very walk of the stream
 * itself, damaged or not.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ChunkFeed } from './chunk-feed.ts';
import { chunksOf } from './seal.ts';
import { bufferSource, type Range } from './source.ts';
import { RAM_FLAG, walkStream } from './stream.ts';

/** A byte pattern that tells every offset apart (in 4-byte words). */
function patterned(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = ((i * 2654435761) >>> 24) ^ i;
  return b;
}

interface LenderPlan {
  slots: number;
  /** Which in-flight chunk completes next (index into the in-flight list, modulo its length). */
  picks: number[];
  /** Chunks lent short (their first half only). */
  short: Set<number>;
}

/**
 * A lender keeping the feed's promise: `slots` buffers; a chunk index is taken only with a free
 * buffer, in order; in-flight chunks complete in the order `picks` says, one per macrotask.
 * Returns a promise for the end and the release counts.
 */
function lend(feed: ChunkFeed, buf: Uint8Array, chunks: readonly Range[], plan: LenderPlan): { done: Promise<void>; releases: number[] } {
  const releases = new Array<number>(chunks.length).fill(0);
  let free = plan.slots;
  let next = 0;
  let step = 0;
  const inFlight: number[] = [];
  let wake: (() => void) | undefined;
  const done = (async () => {
    for (;;) {
      while (free > 0 && next < chunks.length) {
        free--;
        inFlight.push(next++);
      }
      if (inFlight.length === 0) {
        if (next >= chunks.length) return;
        // All buffers lent: wait for a release.
        await new Promise<void>((r) => (wake = r));
        continue;
      }
      await new Promise((r) => setImmediate(r));
      const k = inFlight.splice((plan.picks[step++ % Math.max(1, plan.picks.length)] ?? 0) % inFlight.length, 1)[0]!;
      const [s, e] = chunks[k]!;
      const data = plan.short.has(k) ? buf.subarray(s, s + Math.floor((e - s) / 2)) : buf.subarray(s, e);
      feed.lend(k, data, () => {
        releases[k]!++;
        free++;
        const w = wake;
        wake = undefined;
        w?.();
      });
    }
  })();
  return { done, releases };
}

/** Rejects when `p` has not settled within `ms`: a read waiting for a chunk that cannot come. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms (deadlock)`)), ms)))]).finally(() =>
    clearTimeout(t),
  );
}

describe('ChunkFeed', () => {
  it('serves forward, far and backward reads with the file bytes, never stalls, releases each chunk once', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 40_000 }),
        fc.integer({ min: 64, max: 4096 }),
        fc.integer({ min: 2, max: 5 }),
        fc.array(fc.nat(), { minLength: 1, maxLength: 20 }),
        fc.array(fc.nat(), { maxLength: 5 }),
        fc.array(
          fc.oneof(
            fc.record({ kind: fc.constant('fwd' as const), skip: fc.nat({ max: 3000 }), len: fc.integer({ min: 1, max: 3000 }) }),
            fc.record({ kind: fc.constant('any' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 9000 }) }),
          ),
          {
            minLength: 1,
            maxLength: 60,
          },
        ),
        fc.array(fc.nat(), { maxLength: 4 }),
        async (size, chunkBytes, slots, picks, shortPicks, reads, holePicks) => {
          const buf = patterned(size);
          const all = [...chunksOf([[0, size]], chunkBytes)];
          // Some chunks are holes (not lent): the feed reads those from the file.
          const holes = new Set(holePicks.map((h) => h % all.length));
          const chunks = all.filter((_, i) => !holes.has(i));
          const feed = new ChunkFeed(bufferSource(buf), chunks);
          const short = new Set(shortPicks.map((x) => x % Math.max(1, chunks.length)));
          const { done, releases } = lend(feed, buf, chunks, { slots, picks, short });
          let pos = 0;
          for (const r of reads) {
            const at = r.kind === 'fwd' ? pos + r.skip : r.at % (size + 10);
            if (r.kind === 'fwd') pos = at;
            const got = await within(feed.read(at, r.len), 2000, `read ${at}+${r.len}`);
            const want = buf.subarray(Math.min(at, size), Math.min(size, at + r.len));
            expect(Buffer.from(got).equals(Buffer.from(want))).toBe(true);
          }
          feed.finish();
          await within(done, 2000, 'the lender');
          expect(releases.every((n) => n === 1)).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('a read waiting for a chunk rejects with the lender failure', async () => {
    const buf = patterned(10_000);
    const feed = new ChunkFeed(bufferSource(buf), [...chunksOf([[0, 10_000]], 1000)]);
    const waiting = feed.read(10, 100);
    const err = new Error('read error');
    feed.fail(err);
    await expect(waiting).rejects.toBe(err);
    await expect(feed.read(20, 10)).rejects.toBe(err);
    // Reads it would serve from the file still work.
    expect(Buffer.from(await feed.read(9000, 10)).equals(Buffer.from(buf.subarray(9000, 9010)))).toBe(true);
  });
});

/* ---------- walking a legacy stream through the feed ---------- */

/** A legacy stream: header, RAM START, `pages` page/zero records in three sections, RAM END, one device section, EOF, the description. */
function legacyStream(pages: number, seed: number): Uint8Array {
  const out: number[] = [];
  const u8 = (v: number): void => {
    out.push(v & 0xff);
  };
  const be16 = (v: number): void => {
    u8(v >>> 8);
    u8(v);
  };
  const be32 = (v: number): void => {
    be16(v >>> 16);
    be16(v);
  };
  const be64 = (v: bigint): void => {
    be32(Number(v >> 32n));
    be32(Number(v & 0xffffffffn));
  };
  const str = (s: string): void => {
    for (const ch of Buffer.from(s, 'latin1')) u8(ch);
  };
  /** A section header: type, id, then (START/FULL) the name, instance and version. */
  const section = (type: number, id: number, named?: { name: string; version: number }): void => {
    u8(type);
    be32(id);
    if (named) {
      u8(named.name.length);
      str(named.name);
      be32(0);
      be32(named.version);
    }
  };
  const footer = (id: number): void => {
    u8(0x7e);
    be32(id);
  };
  let x = seed || 1;
  const rnd = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  const block = 'pc.ram';
  const blockSize = 64 * 1024 * 1024;
  be32(0x5145564d);
  be32(3);
  section(0x01, 2, { name: 'ram', version: 4 });
  be64(BigInt(blockSize) | BigInt(RAM_FLAG.MEM_SIZE));
  u8(block.length);
  str(block);
  be64(BigInt(blockSize));
  let page = 0;
  const records = (n: number): void => {
    for (let i = 0; i < n; i++) {
      const named = page === 0 || rnd() % 7 === 0;
      const zero = rnd() % 3 === 0;
      be64(BigInt(page * 4096) | BigInt((zero ? RAM_FLAG.ZERO : RAM_FLAG.PAGE) | (named ? 0 : RAM_FLAG.CONTINUE)));
      if (named) {
        u8(block.length);
        str(block);
      }
      if (zero) u8(0);
      else for (let j = 0; j < 4096; j++) u8(rnd());
      page++;
    }
    be64(BigInt(RAM_FLAG.EOS));
  };
  records(Math.floor(pages / 3));
  footer(2);
  section(0x02, 2);
  records(pages - 2 * Math.floor(pages / 3));
  footer(2);
  section(0x03, 2);
  records(Math.floor(pages / 3));
  footer(2);
  // One device section of 40 bytes, as the description sizes it.
  section(0x04, 3, { name: 'timer0', version: 1 });
  for (let j = 0; j < 40; j++) u8(j);
  footer(3);
  const json = JSON.stringify({ devices: [{ name: 'timer0', instance_id: 0, vmsd_name: 'timer', version: 1, fields: [{ name: 'ticks', size: 8, array_len: 5 }] }] });
  u8(0x00);
  u8(0x06);
  be32(json.length);
  str(json);
  return Uint8Array.from(out);
}

describe('walkStream through a ChunkFeed', () => {
  it('gives the walk of the stream itself, for the stream as written and with any byte flipped', async () => {
    const clean = legacyStream(900, 11);
    const whole = await walkStream(bufferSource(clean), 0);
    expect(whole.problems).toEqual([]);
    expect(whole.complete).toBe(true);
    await fc.assert(
      fc.asyncProperty(
        fc.option(fc.record({ at: fc.nat({ max: clean.length - 1 }), bit: fc.integer({ min: 0, max: 7 }) }), { nil: undefined }),
        fc.constantFrom(64 * 1024, 100_000, 256 * 1024 + 3, 1024 * 1024 - 5),
        fc.integer({ min: 2, max: 4 }),
        fc.array(fc.nat(), { minLength: 1, maxLength: 8 }),
        async (flip, chunkBytes, slots, picks) => {
          const buf = Uint8Array.from(clean);
          if (flip) buf[flip.at]! ^= 1 << flip.bit;
          const want = await walkStream(bufferSource(buf), 0);
          const chunks = [...chunksOf([[0, buf.length]], chunkBytes)];
          const feed = new ChunkFeed(bufferSource(buf), chunks);
          const { done, releases } = lend(feed, buf, chunks, { slots, picks, short: new Set() });
          const got = await within(walkStream(feed, 0), 5000, 'the walk');
          feed.finish();
          await within(done, 5000, 'the lender');
          expect(got).toEqual(want);
          expect(releases.every((n) => n === 1)).toBe(true);
          // With chunks at least a cursor window long (256 KiB) the pages come from the chunks: the
          // file is read for the description at the end only (smaller chunks: reads across more
          // than two go to the file, still the same walk).
          if (!flip && chunkBytes >= 256 * 1024) expect(feed.fallbackBytes).toBeLessThan(300 * 1024);
        },
      ),
      { numRuns: 60 },
    );
  });
});
