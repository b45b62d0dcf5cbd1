/**
 * The seal's RAM chunks hashed on worker threads give the very seal and the very check results of
 * the in-thread path, on a real sparse image (64 MiB VM by QEMU) whose pages region is then filled
 * with random data (every chunk read, none a hole).
 */
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkSeal, finalizeImage, openFileSource, readImage, sealImage, walkStream } from '../src/node/index.ts';
import { LENT_EXTRA_BUFFERS, crc32ChunksInWorkers, crc32ChunksLent } from '../src/node/seal-worker.ts';
import { makeVmsaveImage } from './fixtures.ts';

let dir: string;
let dirty: string;
let pages: { start: number; length: number };
let n = 0;
const copy = (from: string): string => {
  const to = join(dir, `copy-${n++}.vmsave`);
  execFileSync('cp', ['--sparse=always', from, to]);
  return to;
};

beforeAll(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-seal-worker-'));
  dirty = await makeVmsaveImage(dir, 'dirty.vmsave', 'sparse', { memMiB: 64, channels: 2, finalize: false });
  const { header } = await readImage(dirty);
  const src = await openFileSource(dirty);
  const walk = await walkStream(src, header.streamOffset);
  await src.close();
  const block = walk.ram!.blocks.find((b) => b.name === 'pc.ram')!;
  pages = { start: block.mappedRam!.pagesOffset, length: block.usedLength };
  const data = Buffer.allocUnsafe(block.usedLength);
  randomFillSync(data);
  const fh = await fsp.open(dirty, 'r+');
  await fh.write(data, 0, data.length, pages.start);
  await fh.close();
});
afterAll(async () => {
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
});

describe('seal on worker threads', () => {
  it('seals a dirty image exactly as the in-thread path does, reading every RAM byte', async () => {
    const one = copy(dirty);
    const two = copy(dirty);
    const inThread = await sealImage(one, { workers: 0 });
    const onWorkers = await sealImage(two, { workers: 2 });
    expect(inThread.summary.chunks).toBeGreaterThanOrEqual(16);
    expect(onWorkers.seal).toEqual(inThread.seal);
    expect(onWorkers.bytesRead).toBe(inThread.bytesRead);
    expect(onWorkers.bytesRead).toBeGreaterThanOrEqual(pages.length);
  });

  it('a full check on workers passes on the sealed image and names the same damaged chunk as the in-thread check', async () => {
    const path = copy(dirty);
    await sealImage(path, { workers: 2 });
    await finalizeImage(path);
    const good = await checkSeal(path, { scope: 'full', workers: 2 });
    expect(good.ok).toBe(true);
    expect(good.checks.find((c) => c.name === 'seal.ram')?.status).toBe('pass');

    // One byte flipped in the RAM chunk holding pages.start + 40 MiB.
    const at = pages.start + 40 * 1024 * 1024 + 12345;
    const fh = await fsp.open(path, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0x01;
    await fh.write(b, 0, 1, at);
    await fh.close();
    const [bad, ref] = [await checkSeal(path, { scope: 'full', workers: 2 }), await checkSeal(path, { scope: 'full', workers: 0 })];
    expect(bad.ok).toBe(false);
    expect(bad.checks.find((c) => c.name === 'seal.ram')?.status).toBe('fail');
    expect(bad.mismatches).toEqual(ref.mismatches);
    expect(bad.mismatches).toHaveLength(1);
    expect(bad.mismatches[0]!.start).toBeLessThanOrEqual(at);
    expect(bad.mismatches[0]!.end).toBeGreaterThan(at);
    expect(bad.checks.find((c) => c.name === 'seal.ram')?.detail).toBe(ref.checks.find((c) => c.name === 'seal.ram')?.detail);
  });

  it('O_DIRECT reads on the workers give the same seal and the same full check', async () => {
    const one = copy(dirty);
    const two = copy(dirty);
    const inThread = await sealImage(one, { workers: 0 });
    const direct = await sealImage(two, { workers: 2, directRead: true });
    expect(direct.seal).toEqual(inThread.seal);
    expect(direct.bytesRead).toBe(inThread.bytesRead);
    await finalizeImage(two);
    const check = await checkSeal(two, { scope: 'full', workers: 2, directRead: true });
    expect(check.ok).toBe(true);
    expect(check.bytesRead).toBe((await checkSeal(two, { scope: 'full', workers: 0 })).bytesRead);
  });

  it('worker chunks at unaligned offsets, past the end and at an unaligned end give zlib CRC-32 of the bytes, with and without O_DIRECT', async () => {
    const path = join(dir, 'odd.bin');
    const bytes = Buffer.allocUnsafe(9 * 1024 * 1024 + 1234);
    randomFillSync(bytes);
    await fsp.writeFile(path, bytes);
    const chunks: Array<[number, number]> = [
      [0, 4096],
      [1, 5000],
      [4095, 4 * 1024 * 1024 + 17],
      [3 * 1024 * 1024 + 511, 7 * 1024 * 1024],
      [bytes.length - 3000, bytes.length],
      [bytes.length - 100, bytes.length + 8192],
    ];
    for (const direct of [false, true]) {
      const got: Array<[number, number]> = [];
      await crc32ChunksInWorkers(path, chunks, (k, c, n) => (got[k] = [c, n]), { workers: 2, direct });
      chunks.forEach(([s, e], k) => {
        const data = bytes.subarray(s, Math.min(e, bytes.length));
        const want = e <= bytes.length ? crc32(data) : crc32(Buffer.concat([data, Buffer.alloc(e - bytes.length + 1, 0xff)]));
        expect(got[k], `chunk ${k}, direct ${direct}`).toEqual([want, data.length]);
      });
    }
  });

  it('an abort stops the workers and rejects with the reason', async () => {
    const path = copy(dirty);
    const ac = new AbortController();
    const reason = new Error('stop now');
    let seen = 0;
    const p = sealImage(path, {
      workers: 2,
      signal: ac.signal,
      onProgress: () => {
        if (++seen === 3) ac.abort(reason);
      },
    });
    await expect(p).rejects.toBe(reason);
    // The image stays unsealed and unfinalized: a later seal works.
    const again = await sealImage(path, { workers: 2 });
    expect(again.summary.chunks).toBeGreaterThanOrEqual(16);
  });

  it('lent chunks: the file bytes and their CRC-32, taken in order, so a consumer releasing in order never stalls them', async () => {
    const path = join(dir, 'lent.bin');
    const bytes = Buffer.allocUnsafe(30 * 1024 * 1024 + 777);
    randomFillSync(bytes);
    await fsp.writeFile(path, bytes);
    const chunks: Array<[number, number]> = [];
    for (let s = 0; s < bytes.length; s += 1024 * 1024) chunks.push([s, Math.min(bytes.length, s + 1024 * 1024)]);
    chunks.push([bytes.length - 10, bytes.length + 4096]); // read short: the bytes there are
    // The stream walk's way: chunks are held until every chunk before them was seen, then let go in order.
    const held = new Map<number, () => void>();
    const seen: boolean[] = [];
    let front = 0;
    await crc32ChunksLent(
      path,
      chunks,
      (k, crc, n, data, release) => {
        const [s, e] = chunks[k]!;
        const want = bytes.subarray(s, Math.min(e, bytes.length));
        expect(Buffer.from(data).equals(want), `chunk ${k}`).toBe(true);
        expect(n).toBe(want.length);
        expect(crc).toBe(e <= bytes.length ? crc32(want) : crc32(Buffer.concat([want, Buffer.alloc(e - bytes.length + 1, 0xff)])));
        expect(seen[k]).toBeUndefined();
        seen[k] = true;
        held.set(k, release);
        for (; seen[front]; front++) {
          held.get(front)!();
          held.delete(front);
        }
      },
      { workers: 2 },
    );
    expect(front).toBe(chunks.length);
  });

  it('lent chunks never released: an abort still stops the waiting workers and rejects with the reason', async () => {
    const path = join(dir, 'lent-abort.bin');
    await fsp.writeFile(path, Buffer.alloc(40 * 1024 * 1024, 1));
    const chunks: Array<[number, number]> = [];
    for (let s = 0; s < 40 * 1024 * 1024; s += 1024 * 1024) chunks.push([s, s + 1024 * 1024]);
    const ac = new AbortController();
    const reason = new Error('stop waiting');
    let lent = 0;
    const p = crc32ChunksLent(
      path,
      chunks,
      () => {
        // Holds every buffer: the workers wait for one; abort once they all are lent.
        if (++lent === 2 + LENT_EXTRA_BUFFERS) setTimeout(() => ac.abort(reason), 50);
      },
      { workers: 2, signal: ac.signal },
    );
    await expect(p).rejects.toBe(reason);
    expect(lent).toBe(2 + LENT_EXTRA_BUFFERS);
  });
});
