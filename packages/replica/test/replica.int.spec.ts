/**
 * Replication on a real JetStream object store (the shared NATS, one bucket per test, deleted
 * after) with images a real QEMU saved: round trips byte-identical with holes kept, a damaged
 * extent refused, and a transfer SIGKILLed midway leaves nothing that looks complete.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { testUrls, uniq } from '@vmsave/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeVmsaveImage } from '@vmsave/image/test/fixtures';
import { NatsObjectImageStore, ReplicaError, downloadImage, tempPrefixOf, uploadImage } from '../src/index.ts';

const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'child.ts');
const MiB = 1024 * 1024;

let nc: NatsConnection;
let jsm: JetStreamManager;
let natsUrl: string;
let dir: string;
let sparse: string;
let legacy: string;
const stores: NatsObjectImageStore[] = [];

async function openStore(): Promise<NatsObjectImageStore> {
  const s = await NatsObjectImageStore.open(jetstream(nc), jsm, { bucket: uniq('replica').replace(/-/g, '_'), replicas: 1, chunkBytes: 64 * 1024 });
  stores.push(s);
  return s;
}

const blocksOf = async (p: string) => (await fsp.stat(p)).blocks;

async function expectSameFile(a: string, b: string) {
  const [x, y] = await Promise.all([fsp.readFile(a), fsp.readFile(b)]);
  expect(y.length).toBe(x.length);
  expect(y.equals(x)).toBe(true);
  const [ba, bb] = await Promise.all([blocksOf(a), blocksOf(b)]);
  // Holes stay holes: allocated blocks within 1 % of the source's.
  expect(Math.abs(bb - ba)).toBeLessThanOrEqual(Math.ceil(ba * 0.01));
}

beforeAll(async () => {
  natsUrl = (await testUrls()).natsUrl;
  nc = await connect({ servers: natsUrl });
  jsm = await jetstreamManager(nc);
  dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-replica-'));
  sparse = await makeVmsaveImage(dir, 'sparse.vmsave', 'sparse', { memMiB: 128 });
  legacy = await makeVmsaveImage(dir, 'legacy.vmsave', 'legacy', { memMiB: 64 });
});

afterAll(async () => {
  for (const s of stores) await s.destroy().catch(() => {});
  await nc?.close();
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
});

describe('replica round trip', () => {
  it('uploads only the data extents of a sparse image and rebuilds it byte-identical, holes kept', async () => {
    const store = await openStore();
    const st = await fsp.stat(sparse);
    expect(st.blocks * 512).toBeLessThan(st.size); // the source is sparse
    const progress: number[] = [];
    const up = await uploadImage(store, sparse, 'job-sparse', { host: 'a', partBytes: 4 * MiB, onProgress: (p) => progress.push(p.doneBytes) });
    expect(up.alreadyComplete).toBe(false);
    expect(up.bytesMoved).toBe(up.dataBytes);
    expect(up.bytesMoved).toBeLessThanOrEqual(st.blocks * 512);
    expect(up.extents).toBeGreaterThan(1);
    expect(progress.at(-1)).toBe(up.dataBytes);
    expect(await store.list()).toEqual(['job-sparse']);
    // A second upload of the unchanged file finds it complete and moves nothing.
    expect((await uploadImage(store, sparse, 'job-sparse')).alreadyComplete).toBe(true);

    const dest = join(dir, 'b', 'sparse.vmsave');
    const down = await downloadImage(store, 'job-sparse', dest);
    expect(down.bytesMoved).toBe(up.dataBytes);
    await expectSameFile(sparse, dest);
    expect((await fsp.readdir(dirname(dest))).filter((n) => n.startsWith('.'))).toEqual([]);
    await expect(downloadImage(store, 'job-sparse', dest)).rejects.toMatchObject({ code: 'replica-exists' });
  });

  it('round-trips a legacy image byte-identical', async () => {
    const store = await openStore();
    const up = await uploadImage(store, legacy, 'job-legacy', { partBytes: 8 * MiB });
    const dest = join(dir, 'b', 'legacy.vmsave');
    await downloadImage(store, 'job-legacy', dest);
    await expectSameFile(legacy, dest);
    const st = await fsp.stat(legacy);
    expect(up.bytesMoved).toBeLessThanOrEqual(st.blocks * 512);
  });

  it('refuses a damaged extent on download and leaves no file', async () => {
    const store = await openStore();
    await uploadImage(store, sparse, 'job-bad', { partBytes: 4 * MiB });
    // Damage part 0 as stored: same size and metadata, one byte flipped.
    const info = (await store.headPart('job-bad', 0))!;
    const chunks: Uint8Array[] = [];
    for await (const c of (await store.getPart('job-bad', 0)) as unknown as AsyncIterable<Uint8Array>) chunks.push(c);
    const data = Buffer.concat(chunks);
    const at = data.length >> 1;
    data[at] = data[at]! ^ 0xff;
    await store.putPart('job-bad', 0, new Blob([data]).stream(), info.metadata);
    const dest = join(dir, 'c', 'bad.vmsave');
    const err = await downloadImage(store, 'job-bad', dest).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ReplicaError);
    expect((err as ReplicaError).code).toBe('replica-checksum');
    expect((err as Error).message).toMatch(/^extent \d+ at offset \d+ \(\d+ bytes\) of job-bad: CRC-32 [0-9a-f]{8}, the manifest says [0-9a-f]{8}$/);
    expect(await fsp.readdir(dirname(dest))).toEqual([]);
  });

  it('refuses a key with no manifest (an incomplete or absent upload)', async () => {
    const store = await openStore();
    await expect(downloadImage(store, 'nothing', join(dir, 'd', 'x.vmsave'))).rejects.toMatchObject({ code: 'replica-missing' });
  });
});

/** Start the child; resolve when it prints MID (it is then stalled mid-part), with the process to kill. */
function startStalled(args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, ['--conditions=development', '--import', 'tsx', CHILD, ...args], {
    env: { ...process.env, NATS_URL: natsUrl, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code, sig) => r(code ?? (sig ? -1 : null))));
  const mid = new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('MID')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`child exited ${code} before MID: ${err}`)));
  });
  return { child, mid, exited };
}

describe('a transfer killed midway', () => {
  it('upload: no manifest while partial; a re-run completes, keeps the finished part, sweeps the dead chunks', async () => {
    const store = await openStore();
    const { child, mid, exited } = startStalled(['upload', store.bucket, sparse, 'job-kill'], { STALL_AFTER_BYTES: String(200 * 1024), PART_BYTES: String(512 * 1024) });
    await mid;
    child.kill('SIGKILL');
    await exited;
    expect(await store.getManifest('job-kill')).toBeUndefined();
    expect(await store.list()).toEqual([]);
    expect(await store.listParts('job-kill')).toEqual([0]); // part 0 finished, part 1 died midway
    const si = await jsm.streams.info(`OBJ_${store.bucket}`, { subjects_filter: `$O.${store.bucket}.C.>` });
    expect(Object.keys(si.state.subjects ?? {}).length).toBe(2); // part 0's chunks and the dead part's

    const up = await uploadImage(store, sparse, 'job-kill', { partBytes: 512 * 1024, sweepGraceMs: 0 });
    expect(up.partsKept).toBe(1);
    expect(up.parts).toBeGreaterThanOrEqual(3);
    expect(up.bytesMoved).toBe(up.dataBytes - 512 * 1024);
    expect(await store.list()).toEqual(['job-kill']);
    const after = await jsm.streams.info(`OBJ_${store.bucket}`, { subjects_filter: `$O.${store.bucket}.C.>` });
    // The dead part's chunks are gone: one chunk subject per live object (the parts and the manifest).
    expect(Object.keys(after.state.subjects ?? {}).length).toBe(up.parts + 1);
    const dest = join(dir, 'e', 'kill.vmsave');
    await downloadImage(store, 'job-kill', dest);
    await expectSameFile(sparse, dest);
  });

  it('download: no file under the image name while partial; a re-run removes the temporary file and completes', async () => {
    const store = await openStore();
    await uploadImage(store, sparse, 'job-dl', { partBytes: 512 * 1024 });
    const dest = join(dir, 'f', 'dl.vmsave');
    const { child, mid, exited } = startStalled(['download', store.bucket, 'job-dl', dest], { STALL_AFTER_BYTES: '1' });
    await mid;
    child.kill('SIGKILL');
    await exited;
    const left = await fsp.readdir(dirname(dest));
    expect(left).toHaveLength(1);
    expect(left[0]!.startsWith(tempPrefixOf(dest))).toBe(true);
    await downloadImage(store, 'job-dl', dest);
    expect(await fsp.readdir(dirname(dest))).toEqual(['dl.vmsave']);
    await expectSameFile(sparse, dest);
  });
});
