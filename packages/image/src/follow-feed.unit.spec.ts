import { describe, expect, it } from 'vitest';
import { FollowFeed } from './follow-feed.ts';

const bytes = (n: number, seed = 1): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

describe('FollowFeed', () => {
  it('given chunks lent in order, a read across two chunks waits for the second and returns the bytes of both', async () => {
    const data = bytes(40);
    const feed = new FollowFeed(100, 16);
    const released: number[] = [];
    feed.lend(0, data.subarray(0, 16), () => released.push(0));
    let done = false;
    const r = feed.read(110, 10).then((b) => {
      done = true;
      return Array.from(b);
    });
    await Promise.resolve();
    expect(done).toBe(false);
    feed.lend(1, data.subarray(16, 32), () => released.push(1));
    expect(await r).toEqual(Array.from(data.subarray(10, 20)));
    // A read in chunk 1 lets go of chunk 0.
    expect(Array.from(await feed.read(120, 4))).toEqual(Array.from(data.subarray(20, 24)));
    expect(released).toEqual([0]);
  });

  it('when the end becomes known, a read waiting past it returns what there is', async () => {
    const data = bytes(20);
    const feed = new FollowFeed(0, 16);
    feed.lend(0, data.subarray(0, 16), () => {});
    const r = feed.read(12, 16);
    feed.lend(1, data.subarray(16, 20), () => {});
    feed.end(20);
    expect(Array.from(await r)).toEqual(Array.from(data.subarray(12, 20)));
    expect(feed.size).toBe(20);
    expect((await feed.read(20, 8)).length).toBe(0);
  });

  it('a failed lender rejects the waiting read; finish releases every chunk, and chunks lent after it at once', async () => {
    const feed = new FollowFeed(0, 8);
    const released: number[] = [];
    feed.lend(0, bytes(8), () => released.push(0));
    const r = feed.read(4, 8);
    feed.fail(new Error('read failed'));
    await expect(r).rejects.toThrow('read failed');
    feed.finish();
    expect(released).toEqual([0]);
    feed.lend(1, bytes(8), () => released.push(1));
    expect(released).toEqual([0, 1]);
    await expect(feed.read(8, 1)).rejects.toThrow(/finished/);
  });

  it('refuses chunks out of order, reads before a released chunk and reads spanning more chunks than allowed', async () => {
    const feed = new FollowFeed(0, 8, 2);
    expect(() => feed.lend(1, bytes(8), () => {})).toThrow(/out of order/);
    feed.lend(0, bytes(8), () => {});
    feed.lend(1, bytes(8), () => {});
    feed.lend(2, bytes(8), () => {});
    await expect(feed.read(0, 24)).rejects.toThrow(/spans 3 chunks/);
    await feed.read(16, 4);
    await expect(feed.read(2, 2)).rejects.toThrow(/goes back/);
  });
});
