/**
 * Seal checksum benchmark (not a test). Part "algo": the candidate checksums over 1 GiB of random
 * data in memory and over a 1 GiB page-cache-resident file, hashed in 4 MiB chunks; GiB/s medians.
 *
 *   cd packages/image && npx tsx bench/seal-bench.ts algo [GiB=1] [runs=5]
 *
 * CRC32C and xxHash3 are measured only when `@node-rs/crc32` / `@node-rs/xxhash` can be imported
 * (they are not dependencies of this package): VMSAVE_BENCH_MODULES=<dir> names a directory they
 * were installed into (`npm install --prefix <dir> @node-rs/crc32 @node-rs/xxhash`).
 *
 * Part "cost" (the seal's cost on a 4 GiB image) is bench/seal-cost.ts.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';

const MiB = 1024 * 1024;
const CHUNK = 4 * MiB;
const [part = 'algo', gibArg = '1', runsArg = '5'] = process.argv.slice(2);
if (part !== 'algo') {
  console.error('usage: seal-bench.ts algo [GiB] [runs]   (the cost part is bench/seal-cost.ts)');
  process.exit(2);
}
const total = Number(gibArg) * 1024 * MiB;
const runs = Number(runsArg);

type Hash = (chunk: Uint8Array) => void;
interface Candidate {
  name: string;
  /** A fresh per-run state: `update` per chunk, `end` once. */
  start(): { update: Hash; end(): unknown };
}

const candidates: Candidate[] = [
  {
    name: 'zlib.crc32 (per-chunk crc32)',
    start: () => {
      let last = 0;
      return {
        update: (c) => {
          last = crc32(c);
        },
        end: () => last,
      };
    },
  },
  ...['sha256', 'blake2b512'].map(
    (alg): Candidate => ({
      name: `crypto ${alg} (per-chunk digest)`,
      start: () => {
        let last: Buffer | undefined;
        return {
          update: (c) => {
            last = createHash(alg).update(c).digest();
          },
          end: () => last,
        };
      },
    }),
  ),
];
// Native candidates not kept as dependencies: VMSAVE_BENCH_MODULES=<dir> is a directory whose
// node_modules has them (`npm install --prefix <dir> @node-rs/crc32 @node-rs/xxhash`).
const benchRequire = createRequire(process.env.VMSAVE_BENCH_MODULES ? join(process.env.VMSAVE_BENCH_MODULES, 'package.json') : import.meta.url);
try {
  const mod = benchRequire('@node-rs/crc32') as { crc32(input: Uint8Array, crc?: number): number; crc32c(input: Uint8Array, crc?: number): number };
  for (const fn of ['crc32', 'crc32c'] as const) {
    candidates.push({
      name: `@node-rs/crc32 ${fn} (per-chunk)`,
      start: () => {
        let last = 0;
        return {
          update: (c) => {
            last = mod[fn](c);
          },
          end: () => last,
        };
      },
    });
  }
} catch {
  console.log('(@node-rs/crc32 not importable: CRC32C not measured; set VMSAVE_BENCH_MODULES)');
}
try {
  const require = benchRequire;
  const mod = require(process.env.VMSAVE_BENCH_XXHASH ?? '@node-rs/xxhash') as { xxh3: { xxh64(input: Uint8Array): bigint; xxh128(input: Uint8Array): bigint } };
  candidates.push(
    {
      name: '@node-rs/xxhash xxh3-64 (per-chunk)',
      start: () => {
        let last = 0n;
        return {
          update: (c) => {
            last = mod.xxh3.xxh64(c);
          },
          end: () => last,
        };
      },
    },
    {
      name: '@node-rs/xxhash xxh3-128 (per-chunk)',
      start: () => {
        let last = 0n;
        return {
          update: (c) => {
            last = mod.xxh3.xxh128(c);
          },
          end: () => last,
        };
      },
    },
  );
} catch {
  console.log('(@node-rs/xxhash not importable: xxHash3 not measured; set VMSAVE_BENCH_XXHASH)');
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const gibps = (bytes: number, ms: number): number => bytes / 1024 ** 3 / (ms / 1000);

// In memory: a 256 MiB random buffer walked in 4 MiB chunks until `total` bytes were hashed.
const mem = Buffer.allocUnsafe(Math.min(total, 256 * MiB));
randomFillSync(mem);
function memRun(c: Candidate): number {
  const h = c.start();
  const t0 = performance.now();
  for (let done = 0; done < total; done += CHUNK) {
    const off = done % mem.length;
    h.update(mem.subarray(off, off + CHUNK));
  }
  h.end();
  return performance.now() - t0;
}

// A page-cache-resident file: written once (random), read once to warm, then read + hashed per run.
const dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-seal-bench-'));
const file = join(dir, 'data.bin');
try {
  const wfh = await fsp.open(file, 'w');
  for (let done = 0; done < total; done += mem.length) await wfh.write(mem, 0, Math.min(mem.length, total - done), done);
  await wfh.close();
  const buf = Buffer.allocUnsafe(CHUNK);
  const fileRun = async (c: Candidate | undefined): Promise<number> => {
    const fh = await fsp.open(file, 'r');
    const h = c?.start();
    const t0 = performance.now();
    for (let pos = 0; pos < total; pos += CHUNK) {
      const { bytesRead } = await fh.read(buf, 0, CHUNK, pos);
      h?.update(buf.subarray(0, bytesRead));
    }
    h?.end();
    const ms = performance.now() - t0;
    await fh.close();
    return ms;
  };
  await fileRun(undefined);
  const readOnly: number[] = [];
  for (let i = 0; i < runs; i++) readOnly.push(await fileRun(undefined));

  console.log(`\n${Number(gibArg)} GiB in ${CHUNK / MiB} MiB chunks, median of ${runs} runs, node ${process.version}`);
  console.log(`| algorithm | memory GiB/s | page-cache file (read + hash) GiB/s |`);
  console.log('|---|---|---|');
  console.log(`| (read only, no hash) | — | ${gibps(total, median(readOnly)).toFixed(2)} |`);
  for (const c of candidates) {
    const m: number[] = [];
    const f: number[] = [];
    for (let i = 0; i < runs; i++) m.push(memRun(c));
    for (let i = 0; i < runs; i++) f.push(await fileRun(c));
    console.log(`| ${c.name} | ${gibps(total, median(m)).toFixed(2)} | ${gibps(total, median(f)).toFixed(2)} |`);
  }
} finally {
  await fsp.rm(dir, { recursive: true, force: true });
}
