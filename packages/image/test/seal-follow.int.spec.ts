/**
 * The seal follower (`startSealFollower`) on real QEMU legacy streams (a 256 MiB VM with 96 MiB of
 * pseudo-random RAM: 26 chunks of 4 MiB): followed while QEMU writes, its seal is byte for byte the
 * two-pass `sealImage` seal of the same file; any flipped byte of an image sealed so is caught; a
 * file truncated, rewritten or changed in place after it was read ends in `sealImage`; an aborted
 * follower writes nothing; a sparse image is not followed.
 */
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ImageStateError,
  checkSeal,
  createImage,
  finalizeImage,
  openFileSource,
  readImage,
  sealImage,
  startSealFollower,
  walkStream,
  walkStreamPrefix,
  type SealFollower,
  type SealImageResult,
} from '../src/node/index.ts';
import { DIRTY_ADDR, descriptorFor, makeVmsaveImage, qemuSave } from './fixtures.ts';

const MiB = 1024 * 1024;
const CHUNK = 4 * MiB;
let dir: string;
/** Saved by QEMU, not sealed, not finalized. */
let dirty: string;
let streamOffset: number;
let reference: SealImageResult;
let n = 0;

const copy = (from: string): string => {
  const to = join(dir, `copy-${n++}.vmsave`);
  execFileSync('cp', ['--sparse=always', from, to]);
  return to;
};

async function flip(path: string, at: number, mask: number): Promise<void> {
  const fh = await fsp.open(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0]! ^= mask;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

/** The head of `dirty` (header, descriptor, reserved room) alone: an image QEMU has not written yet. */
async function emptyImage(): Promise<string> {
  const to = join(dir, `empty-${n++}.vmsave`);
  const fh = await fsp.open(dirty, 'r');
  const head = Buffer.alloc(streamOffset);
  await fh.read(head, 0, streamOffset, 0);
  await fh.close();
  await fsp.writeFile(to, head);
  return to;
}

/** The offset in `stream` of the record of guest page `page` (a whole page, CONTINUE or named). */
function recordOf(bytes: Buffer, page: number): number {
  for (const flags of [0x28n, 0x08n]) {
    const key = Buffer.alloc(8);
    key.writeBigUInt64BE(BigInt(page * 4096) | flags);
    const at = bytes.indexOf(key);
    if (at >= 0) return at;
  }
  throw new Error(`no record of page ${page}`);
}

/** Until the follower has hashed `chunks` whole chunks (it polls the size every few ms). */
async function hashed(f: SealFollower, chunks: number): Promise<void> {
  for (let i = 0; f.stats.chunks < chunks; i++) {
    if (f.stats.state !== 'following') throw new Error(`the follower stopped: ${f.stats.state} ${f.stats.reason ?? ''}`);
    if (i > 3000) throw new Error(`the follower hashed ${f.stats.chunks} of ${chunks} chunks in 30 s`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Append `stream` bytes [from, to) to an image, as QEMU does. */
async function append(path: string, stream: Buffer, from: number, to: number): Promise<void> {
  const fh = await fsp.open(path, 'r+');
  try {
    await fh.write(stream, from, to - from, streamOffset + from);
  } finally {
    await fh.close();
  }
}

let stream: Buffer;

beforeAll(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-seal-follow-'));
  dirty = await makeVmsaveImage(dir, 'dirty-legacy.vmsave', 'legacy', { memMiB: 256, dirtyMiB: 96, finalize: false });
  streamOffset = (await readImage(dirty)).header.streamOffset;
  stream = (await fsp.readFile(dirty)).subarray(streamOffset);
  reference = await sealImage(copy(dirty), { onePass: false });
});
afterAll(async () => {
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
});

describe('seal follower', () => {
  it('a walk of the RAM sections resumed over the whole file is the walk from the start', async () => {
    const src = await openFileSource(dirty);
    try {
      const whole = await walkStream(src, streamOffset);
      const { prefix, walk } = await walkStreamPrefix(src, streamOffset);
      expect(walk.problems).toEqual([]);
      expect(prefix!.at).toBeGreaterThan(whole.ram!.startOffset);
      expect(prefix!.at).toBeLessThanOrEqual(whole.ram!.sectionsEnd);
      expect(await walkStream(src, streamOffset, { resume: prefix! })).toEqual(whole);
    } finally {
      await src.close();
    }
  });

  it('a real QEMU save followed while it writes: the seal is the two-pass sealImage seal of the same file, byte for byte', async () => {
    const path = join(dir, 'followed.vmsave');
    const { streamOffset: offset } = await createImage(path, { format: 'legacy', channels: 0, directIo: false, wasRunning: false, descriptor: descriptorFor('legacy', 256) });
    const follower = startSealFollower(path, { pollMs: 5 });
    // 64 MiB/s: QEMU writes for about 1.5 s, so the follower reads most chunks behind it.
    await qemuSave({ dir, format: 'legacy', target: path, offset, memMiB: 256, dirtyMiB: 96, maxBandwidth: 64 * MiB });
    const twin = copy(path);
    const followed = await follower.finish();
    const two = await sealImage(twin, { onePass: false });
    expect(followed.walk).toBe('follow');
    expect(follower.stats.state).toBe('finished');
    expect(followed.followedBytes).toBeGreaterThan(0);
    expect(followed.summary.chunks).toBeGreaterThanOrEqual(25);
    expect(followed.seal).toEqual(two.seal);
    expect(followed.summary).toEqual(two.summary);
    const [fa, fb] = await Promise.all([fsp.readFile(path), fsp.readFile(twin)]);
    expect(fa.equals(fb)).toBe(true);

    await finalizeImage(path);
    expect((await checkSeal(path, { scope: 'full' })).ok).toBe(true);
    const { size } = await fsp.stat(path);
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: size - 1 }), fc.integer({ min: 0, max: 7 }), async (at, bit) => {
        await flip(path, at, 1 << bit);
        try {
          const r = await checkSeal(path, { scope: 'full' });
          expect(r.ok, `byte ${at} bit ${bit}: ${JSON.stringify(r.checks)}`).toBe(false);
        } finally {
          await flip(path, at, 1 << bit);
        }
      }),
      { numRuns: 30 },
    );
    expect((await checkSeal(path, { scope: 'full' })).ok).toBe(true);
  });

  it('an appending writer followed step by step: every whole chunk is hashed before finish, which reads only the tail', async () => {
    const path = await emptyImage();
    const follower = startSealFollower(path, { pollMs: 2 });
    const step = 3 * MiB + 12345; // not chunk-aligned
    for (let at = 0; at < stream.length; at += step) {
      const to = Math.min(stream.length, at + step);
      await append(path, stream, at, to);
      await hashed(follower, Math.floor(to / CHUNK));
    }
    const whole = Math.floor(stream.length / CHUNK);
    expect(follower.stats.chunks).toBe(whole);
    const r = await follower.finish();
    expect(r.walk).toBe('follow');
    expect(r.followedBytes).toBe(whole * CHUNK);
    expect(r.seal).toEqual(reference.seal);
    const [fa, fb] = await Promise.all([fsp.readFile(path), fsp.readFile(dirty)]);
    const { header } = await readImage(path);
    expect(fa.subarray(header.streamOffset).equals(fb.subarray(header.streamOffset))).toBe(true);
  });

  it('a file truncated and written again after chunks were hashed: finish falls back to sealImage and returns its seal', async () => {
    const path = await emptyImage();
    const follower = startSealFollower(path, { pollMs: 2 });
    // Another stream first (chunk 0 differs), hashed; then QEMU starts over (ftruncate to the offset).
    const other = Buffer.from(stream.subarray(0, 3 * CHUNK));
    other[100]! ^= 0xff;
    other[CHUNK + 100]! ^= 0xff;
    await append(path, other, 0, other.length);
    await hashed(follower, 3);
    await fsp.truncate(path, streamOffset);
    await append(path, stream, 0, stream.length);
    const r = await follower.finish();
    expect(r.walk).not.toBe('follow');
    // Whichever saw it first: a poll during the short file (shrank), the re-check of chunk 0
    // (changed), or the walk running into the new stream's records where the old one's were.
    expect(follower.stats.reason).toMatch(/shrank|changed|walk stopped/);
    expect(r.seal).toEqual(reference.seal);
  });

  it('a hashed chunk changed in place (no shrink): caught by the re-check, the seal is that of the file as it is', async () => {
    const path = await emptyImage();
    const follower = startSealFollower(path, { pollMs: 2 });
    await append(path, stream, 0, stream.length);
    await hashed(follower, Math.floor(stream.length / CHUNK));
    const at = recordOf(stream, DIRTY_ADDR / 4096 + 10) + 8 + 100; // a byte of a page's data, in chunk 0
    expect(at).toBeLessThan(CHUNK);
    await flip(path, streamOffset + at, 0x04);
    const twin = copy(path);
    const r = await follower.finish();
    expect(r.walk).not.toBe('follow');
    expect(follower.stats.reason).toMatch(/chunk 0 changed/);
    expect(r.seal).toEqual((await sealImage(twin, { onePass: false })).seal);
  });

  it('aborted (a failed or cancelled save): nothing is written and finish refuses', async () => {
    const path = await emptyImage();
    const before = await fsp.readFile(path);
    const follower = startSealFollower(path, { pollMs: 2 });
    await append(path, stream, 0, 5 * CHUNK);
    await hashed(follower, 5);
    follower.abort();
    follower.abort();
    expect(follower.stats.state).toBe('aborted');
    await expect(follower.finish()).rejects.toBeInstanceOf(ImageStateError);
    const after = await fsp.readFile(path);
    expect(after.subarray(0, streamOffset).equals(before)).toBe(true);
    expect((await readImage(path)).descriptor.seal).toBeUndefined();
  });

  it('an abort signal during finish rejects with its reason and writes no seal', async () => {
    const path = await emptyImage();
    const follower = startSealFollower(path, { pollMs: 2 });
    await append(path, stream, 0, stream.length);
    const ac = new AbortController();
    const reason = new Error('cancelled');
    ac.abort(reason);
    await expect(follower.finish({ signal: ac.signal })).rejects.toBe(reason);
    expect((await readImage(path)).descriptor.seal).toBeUndefined();
  });

  it('a sparse image is not followed: finish is sealImage', async () => {
    const sparse = await makeVmsaveImage(dir, 'sparse.vmsave', 'sparse', { finalize: false });
    const a = copy(sparse);
    const follower = startSealFollower(a);
    const r = await follower.finish();
    expect(follower.stats.reason).toMatch(/sparse/);
    expect(r.walk).toBe('file');
    expect(r.seal).toEqual((await sealImage(copy(sparse))).seal);
  });
});
