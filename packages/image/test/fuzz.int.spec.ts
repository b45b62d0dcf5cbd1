/**
 * Property-based robustness: mutated and truncated images (real ones made by QEMU, and
 * synthetic headers) never make the walker or the verifier throw or hang; every result is a verdict.
 */
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHECK_NAMES, bufferSource, decodeHeader, decodeLibvirtHeader, encodeLibvirtHeader, readImage, verifyImage, walkStream, ImageError } from '../src/node/index.ts';
import { makeVmsaveImage } from './fixtures.ts';

let dir: string;
let legacy: Buffer;
let legacyStream: number;
let sparsePath: string;
let sparseMeta: Array<[number, number]>; // [offset, length] regions holding metadata
let n = 0;

beforeAll(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-fuzz-'));
  const lp = await makeVmsaveImage(dir, 'legacy.vmsave', 'legacy');
  legacy = await fsp.readFile(lp);
  legacyStream = (await readImage(lp)).header.streamOffset;
  sparsePath = await makeVmsaveImage(dir, 'sparse.vmsave', 'sparse', { channels: 1 });
  const size = (await fsp.stat(sparsePath)).size;
  const so = (await readImage(sparsePath)).header.streamOffset;
  sparseMeta = [
    [0, 4096],
    [so, 256],
    [size - 48_000, 48_000],
  ];
});
afterAll(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

/** A mutation: overwrite `bytes` at a position inside a region, or truncate. */
const mutation = (len: number) =>
  fc.oneof(
    fc.record({ kind: fc.constant('write' as const), at: fc.nat({ max: len - 1 }), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
    fc.record({ kind: fc.constant('bit' as const), at: fc.nat({ max: len - 1 }), bit: fc.nat({ max: 7 }) }),
    fc.record({ kind: fc.constant('be32' as const), at: fc.nat({ max: len - 1 }), value: fc.constantFrom(0, 1, 0x7fffffff, 0xffffffff, 4096, 28) }),
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat({ max: len }) }),
  );
type Mutation =
  | { kind: 'write'; at: number; bytes: Uint8Array }
  | { kind: 'bit'; at: number; bit: number }
  | { kind: 'be32'; at: number; value: number }
  | { kind: 'truncate'; at: number };

function apply(buf: Buffer, muts: Mutation[]): Buffer {
  let out = Buffer.from(buf);
  for (const m of muts) {
    if (m.kind === 'truncate') out = out.subarray(0, Math.min(m.at, out.length));
    else if (m.at >= out.length) continue;
    else if (m.kind === 'write') out.set(m.bytes.subarray(0, out.length - m.at), m.at);
    else if (m.kind === 'bit') out[m.at]! ^= 1 << m.bit;
    else if (m.at + 4 <= out.length) out.writeUInt32BE(m.value >>> 0, m.at);
  }
  return out;
}

function isVerdict(r: Awaited<ReturnType<typeof verifyImage>>): void {
  expect(['vmsave', 'libvirt', 'unknown']).toContain(r.kind);
  expect(r.checks.map((c) => c.name).sort()).toEqual([...CHECK_NAMES].sort());
  for (const c of r.checks) {
    expect(['pass', 'warn', 'fail', 'skip']).toContain(c.status);
    expect(c.detail.length).toBeGreaterThan(0);
  }
  expect(r.ok).toBe(!r.checks.some((c) => c.status === 'fail'));
}

describe('the stream walker never throws on mutated real streams', () => {
  it('legacy stream, mutations focused on the metadata and anywhere', async () => {
    const stream = legacy.subarray(legacyStream);
    const hot = Math.min(stream.length, 512);
    await fc.assert(
      fc.asyncProperty(fc.array(fc.oneof(mutation(hot), mutation(stream.length)), { minLength: 1, maxLength: 3 }), async (muts) => {
        const w = await walkStream(bufferSource(apply(stream, muts)), 0);
        expect(w.complete === true || w.problems.length > 0 || w.eofOffset !== undefined).toBe(true);
        for (const p of w.problems) expect(typeof p.detail).toBe('string');
      }),
      { numRuns: 1500 },
    );
  });
});

describe('the header decoders only throw ImageErrors', () => {
  it('vmsave and libvirt headers, arbitrary bytes after a valid magic', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 128 }), fc.nat({ max: 1 << 20 }), fc.boolean(), (bytes, size, libvirt) => {
        const buf = Buffer.alloc(128);
        buf.set(bytes);
        (libvirt ? encodeLibvirtHeader({ complete: true, dataLength: 0, wasRunning: false, formatCode: 0, cookieOffset: 0 }) : Buffer.from('VMSVDONE')).copy(
          buf,
          0,
          0,
          libvirt ? 16 : 8,
        );
        try {
          if (libvirt) decodeLibvirtHeader(buf, size);
          else decodeHeader(buf, size);
        } catch (e) {
          expect(e).toBeInstanceOf(ImageError);
        }
      }),
      { numRuns: 5000 },
    );
  });
});

describe('verifyImage never throws and always returns a verdict', () => {
  it('mutated and truncated legacy vmsave images (whole files)', async () => {
    const p = join(dir, 'mut-legacy');
    await fc.assert(
      fc.asyncProperty(fc.array(fc.oneof(mutation(legacyStream + 256), mutation(legacy.length)), { minLength: 1, maxLength: 3 }), async (muts) => {
        await fsp.writeFile(p, apply(legacy, muts));
        isVerdict(await verifyImage(p));
      }),
      { numRuns: 300 },
    );
  });

  it('sparse vmsave image: metadata regions mutated in place and restored', async () => {
    const p = join(dir, `mut-sparse-${n++}`);
    execFileSync('cp', ['--sparse=always', sparsePath, p]);
    const fh = await fsp.open(p, 'r+');
    try {
      await fc.assert(
        fc.asyncProperty(fc.constantFrom(...sparseMeta), fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 12 }), async ([off, len], rel, bytes) => {
          const at = off + (rel % len);
          const saved = Buffer.alloc(bytes.length);
          const { bytesRead } = await fh.read(saved, 0, bytes.length, at);
          await fh.write(bytes, 0, bytesRead, at);
          try {
            isVerdict(await verifyImage(p));
          } finally {
            await fh.write(saved, 0, bytesRead, at);
          }
        }),
        { numRuns: 200 },
      );
    } finally {
      await fh.close();
    }
    expect((await verifyImage(p)).ok).toBe(true); // restored intact
  });

  it('sparse vmsave image truncated anywhere', async () => {
    const size = (await fsp.stat(sparsePath)).size;
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: size - 1 }), async (at) => {
        const p = join(dir, `trunc-${n++}`);
        execFileSync('cp', ['--sparse=always', sparsePath, p]);
        await fsp.truncate(p, at);
        const r = await verifyImage(p);
        isVerdict(r);
        expect(r.ok).toBe(false);
        await fsp.rm(p);
      }),
      { numRuns: 40 },
    );
  });
});
