/**
 * The executor's replication (src/replicate.ts) against a private nats-server with the rendered
 * permissions, each service as its own NATS user (`executor-ha`, `executor-hb`): a verified save
 * asking `replicate: bus` is uploaded by its host's executor (`ImageReplicated` on its job), a
 * restore on another host fetches it first (`ImageFetched`), and an executor SIGKILLed during the
 * upload or the download leaves nothing that looks complete; after the restart the job ends with
 * the event.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { RestoreRequest, SaveRequest, imageBucket, jobIdFor, makeEvent, type JobEventType, type RestoreWork } from '@vmsave/contracts';
import { createLogger, eventsOfJob, publishEvent } from '@vmsave/bus';
import { fold } from '@vmsave/jobs';
import { NatsObjectImageStore, tempPrefixOf, uploadImage } from '@vmsave/replica';
import { uniq, waitFor } from '@vmsave/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeVmsaveImage } from '@vmsave/image/test/fixtures';
import { connectAs, startPrivateNats, type PrivateNats, type RoleConnection } from './helpers.ts';
import { JobTrack, ensureLocalImage, runReplication, type ExecutorConfig, type ExecutorContext, type InFlight } from '@vmsave/executor';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'replicate-child.ts');
const log = createLogger('executor', { level: 'silent' });
/** The bucket the permissions grant (a private nats-server: this test's alone). */
const bucket = imageBucket.name;

let nats: PrivateNats;
let sched: RoleConnection;
let verifier: RoleConnection;
let exA: RoleConnection;
let exB: RoleConnection;
let root: string;
let dirA: string;
let dirB: string;
let image: string;

const ctxOf = (c: RoleConnection, host: string, imageDir: string): ExecutorContext =>
  ({
    bus: c.bus,
    cfg: { VMSAVE_REPLICATE: 'none', VMSAVE_REPLICATE_LOOKBACK: 3_600_000, imageDir } as unknown as ExecutorConfig,
    log,
    host,
    source: `executor@${host}`,
  }) as unknown as ExecutorContext;

async function emit(c: RoleConnection, type: JobEventType, jobId: string, data: unknown, source: string) {
  await publishEvent(c.bus, makeEvent(type, jobId, data as never, { source }));
}

/** A save of `image` on host ha, verified, asking `replicate`. */
async function verifiedSave(name: string, replicate: 'bus' | 'none'): Promise<string> {
  const jobId = jobIdFor('save', uniq('req'));
  const imagePath = path.join(dirA, name);
  // A sparse copy (copyFile may fill the holes).
  await promisify(execFile)('cp', ['--sparse=always', image, imagePath]);
  const request = SaveRequest.parse({ schemaVersion: 1, requestId: uniq('r'), vm: 'vm1', format: 'sparse', replicate });
  const at = { host: 'ha', attempt: 1, fencingToken: 1 };
  await emit(sched, 'SaveRequested', jobId, { request }, 'scheduler');
  await emit(sched, 'SaveScheduled', jobId, { ...at, deadlineAt: new Date(Date.now() + 600_000).toISOString() }, 'scheduler');
  await emit(exA, 'SaveStarted', jobId, { ...at, imagePath, format: 'sparse', channels: 2, directIo: false, wasRunning: false, ramBytes: 128 << 20 }, 'executor@ha');
  const st = await fsp.stat(imagePath);
  await emit(
    exA,
    'SaveCompleted',
    jobId,
    { ...at, imagePath, format: 'sparse', bytes: st.size, blocks: st.blocks, durationMs: 100, throughputBytesPerSec: 1, vmState: 'running', qemu: {} },
    'executor@ha',
  );
  await emit(verifier, 'ImageVerified', jobId, { imagePath, host: 'ha', checks: [{ name: 'header', status: 'pass', detail: 'ok' }] }, 'verifier');
  return jobId;
}

/** A restore of `name` placed on host hb. */
async function restoreOnB(name: string, sourceJobId: string | undefined): Promise<string> {
  const jobId = jobIdFor('restore', uniq('req'));
  const request = RestoreRequest.parse({ schemaVersion: 1, requestId: uniq('r'), image: name, host: 'hb' });
  await emit(sched, 'RestoreRequested', jobId, { request, ...(sourceJobId ? { sourceJobId } : {}), vm: 'vm1' }, 'scheduler');
  await emit(sched, 'RestoreScheduled', jobId, { host: 'hb', attempt: 1, fencingToken: 2, deadlineAt: new Date(Date.now() + 600_000).toISOString() }, 'scheduler');
  return jobId;
}

async function fetchOnB(jobId: string): Promise<JobTrack> {
  const ctx = ctxOf(exB, 'hb', dirB);
  const track = await JobTrack.load(ctx, jobId);
  const s = track.state;
  const w = { kind: 'restore', jobId, attempt: s.attempt, fencingToken: s.fencingToken, host: 'hb', request: s.restoreRequest } as unknown as RestoreWork;
  const job = { jobId, attempt: s.attempt, fencingToken: s.fencingToken, kind: 'restore', stage: 'intake', ac: new AbortController() } as InFlight;
  await ensureLocalImage(ctx, w, job, track, path.join(dirB, s.restoreRequest!.image), log);
  return track;
}

const stateOf = async (c: RoleConnection, jobId: string) => fold((await eventsOfJob(c.bus, jobId)).map((l) => l.event));

async function expectSameFile(a: string, b: string) {
  const [x, y] = await Promise.all([fsp.readFile(a), fsp.readFile(b)]);
  expect(y.equals(x)).toBe(true);
  const [sa, sb] = await Promise.all([fsp.stat(a), fsp.stat(b)]);
  expect(Math.abs(sb.blocks - sa.blocks)).toBeLessThanOrEqual(Math.ceil(sa.blocks * 0.01));
}

function startChild(mode: 'upload' | 'fetch', user: RoleConnection, host: string, imageDir: string, extra: Record<string, string>) {
  const pass = nats.executors[host]!;
  const child = spawn(process.execPath, ['--conditions=development', '--import', 'tsx', CHILD, mode], {
    env: { ...process.env, NATS_URL: nats.url, NATS_USER: user.user, NATS_PASS: pass, HOST: host, IMAGE_DIR: imageDir, ...extra },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const mid = new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('MID') && resolve());
    child.once('exit', (code) => reject(new Error(`child exited ${code} before MID: ${err}`)));
    setTimeout(() => reject(new Error(`no MID after 60 s: ${err}`)), 60_000).unref();
  });
  return { child, mid, exited };
}

beforeAll(async () => {
  nats = await startPrivateNats(undefined, { ha: randomBytes(24).toString('hex'), hb: randomBytes(24).toString('hex') });
  sched = await connectAs(nats, 'scheduler');
  verifier = await connectAs(nats, 'verifier');
  exA = await connectAs(nats, 'executor', 'ha');
  exB = await connectAs(nats, 'executor', 'hb');
  await sched.bus.ensureStreams();
  root = await fsp.mkdtemp(path.join(tmpdir(), 'vmsave-exec-replica-'));
  dirA = path.join(root, 'a');
  dirB = path.join(root, 'b');
  await fsp.mkdir(dirA);
  await fsp.mkdir(dirB);
  image = await makeVmsaveImage(root, 'source.vmsave', 'sparse', { memMiB: 128 });
});

afterAll(async () => {
  for (const c of [sched, verifier, exA, exB]) await c?.close().catch(() => {});
  await nats?.stop();
  if (root) await fsp.rm(root, { recursive: true, force: true });
});

describe('executor replication', () => {
  it('uploads a verified save asking replicate: bus, not one asking none; a restore on another host fetches it first', async () => {
    const wanted = await verifiedSave('one.vmsave', 'bus');
    const notWanted = await verifiedSave('two.vmsave', 'none');
    const ac = new AbortController();
    const follower = runReplication(ctxOf(exA, 'ha', dirA), ac.signal);
    try {
      await waitFor('ImageReplicated', async () => (await stateOf(sched, wanted)).replicated, 30_000);
    } finally {
      ac.abort();
      await follower;
    }
    const events = (await eventsOfJob(sched.bus, wanted)).map((l) => l.event);
    const rep = events.find((e) => e.type === 'ImageReplicated');
    expect(rep?.type === 'ImageReplicated' && rep.data).toMatchObject({
      imagePath: path.join(dirA, 'one.vmsave'),
      host: 'ha',
      bucket,
      object: wanted,
      extents: expect.any(Number),
    });
    const st = await fsp.stat(path.join(dirA, 'one.vmsave'));
    if (rep?.type === 'ImageReplicated') expect(rep.data.bytesMoved).toBeLessThanOrEqual(st.blocks * 512);
    const s = await stateOf(sched, wanted);
    expect(s.status).toBe('verified');
    expect(s.replicated).toMatchObject({ bucket, object: wanted, host: 'ha' });
    expect((await stateOf(sched, notWanted)).replicated).toBeUndefined();
    expect((await eventsOfJob(sched.bus, notWanted)).some((l) => l.event.type.startsWith('ImageReplicat'))).toBe(false);

    // Host hb has no such file: the restore fetches it (the request names no source job: found by its ImageReplicated).
    const restore = await restoreOnB('one.vmsave', undefined);
    await fetchOnB(restore);
    await expectSameFile(path.join(dirA, 'one.vmsave'), path.join(dirB, 'one.vmsave'));
    const r = await stateOf(sched, restore);
    expect(r.fetched).toMatchObject({ bucket, object: wanted, host: 'hb' });
    // Already here: nothing fetched again.
    const again = await restoreOnB('one.vmsave', wanted);
    await fetchOnB(again);
    expect((await stateOf(sched, again)).fetched).toBeUndefined();
  });

  it("a save whose events aged out of the log: the restore still finds its complete copy in the bucket by the save's job id", async () => {
    // Copied under the key of a save the log no longer knows (VMSAVE_EVENT_MAX_AGE): no event names it.
    const gone = jobIdFor('save', uniq('aged'));
    await promisify(execFile)('cp', ['--sparse=always', image, path.join(dirA, 'aged.vmsave')]);
    const store = await NatsObjectImageStore.open(exA.bus.js, exA.bus.jsm, { bucket });
    await uploadImage(store, path.join(dirA, 'aged.vmsave'), gone, { host: 'ha', jobId: gone, imagePath: path.join(dirA, 'aged.vmsave') });
    expect(await eventsOfJob(sched.bus, gone)).toEqual([]);
    const restore = await restoreOnB('aged.vmsave', gone);
    await fetchOnB(restore);
    await expectSameFile(path.join(dirA, 'aged.vmsave'), path.join(dirB, 'aged.vmsave'));
    expect((await stateOf(sched, restore)).fetched).toMatchObject({ bucket, object: gone, host: 'hb' });
  });

  it('an executor killed during the upload: nothing looks complete; after the restart the job ends replicated', async () => {
    const jobId = await verifiedSave('three.vmsave', 'bus');
    const { child, mid, exited } = startChild('upload', exA, 'ha', dirA, { STALL_AFTER_BYTES: String(200 * 1024) });
    await mid;
    child.kill('SIGKILL');
    await exited;
    const store = await NatsObjectImageStore.open(exA.bus.js, exA.bus.jsm, { bucket });
    expect(await store.getManifest(jobId)).toBeUndefined();
    expect(await store.list()).not.toContain(jobId);
    expect((await stateOf(sched, jobId)).replicated).toBeUndefined();
    // The dead upload's chunks stay: an executor's user may not purge (an operator's sweep).
    expect((await store.sweep({ graceMs: 0 })).refused).toMatch(/permission/i);

    const ac = new AbortController();
    const follower = runReplication(ctxOf(exA, 'ha', dirA), ac.signal);
    try {
      await waitFor('ImageReplicated', async () => (await stateOf(sched, jobId)).replicated, 30_000);
    } finally {
      ac.abort();
      await follower;
    }
    expect(await store.list()).toContain(jobId);
    expect((await store.getManifest(jobId))?.complete).toBe(true);
  });

  it('an executor killed during the download: no file under the image name; after the restart the fetch completes and the leftovers go', async () => {
    const saved = await verifiedSave('four.vmsave', 'bus');
    const ac = new AbortController();
    const follower = runReplication(ctxOf(exA, 'ha', dirA), ac.signal);
    try {
      await waitFor('ImageReplicated', async () => (await stateOf(sched, saved)).replicated, 30_000);
    } finally {
      ac.abort();
      await follower;
    }
    const restore = await restoreOnB('four.vmsave', saved);
    const { child, mid, exited } = startChild('fetch', exB, 'hb', dirB, { STALL_AFTER_BYTES: '1', JOB_ID: restore });
    await mid;
    child.kill('SIGKILL');
    await exited;
    const dest = path.join(dirB, 'four.vmsave');
    const names = (await fsp.readdir(dirB)).filter((n) => n.includes('four'));
    expect(names).toHaveLength(1);
    expect(names[0]!.startsWith(tempPrefixOf(dest))).toBe(true);
    expect((await stateOf(sched, restore)).fetched).toBeUndefined();

    await fetchOnB(restore);
    expect((await fsp.readdir(dirB)).filter((n) => n.includes('four'))).toEqual(['four.vmsave']);
    await expectSameFile(path.join(dirA, 'four.vmsave'), dest);
    expect((await stateOf(sched, restore)).fetched).toMatchObject({ object: saved });
  });
});
