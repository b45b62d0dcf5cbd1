/**
 * The state snapshot (`src/snapshot.ts`) on a private nats-server and the real Redis:
 * - folding a random-ish log fully equals loading a snapshot taken at k and replaying the rest;
 * - a snapshot of another version, an unreadable one or one of another stream is ignored (warned);
 * - a real scheduler stopped cleanly writes one, and restarted resumes from it, still answering a
 *   repeated request as a duplicate.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostAnnouncement, makeEvent, messages, RestoreRequest, SaveRequest, streams, subjects, type AdmissionReply, type JobEvent } from '@vmsave/contracts';
import { awaitAnswer, Bus, publishEvent, publishValidated, readLog, type Logger } from '@vmsave/bus';
import { connectRedis, Leases } from '@vmsave/store';
import { answers, freePort, testUrls, uniq, waitFor } from '@vmsave/testkit';
import { loadConfig } from '../src/config.ts';
import { Journal } from '../src/journal.ts';
import { captureSnapshot, discardedGap, Snapshots, snapshotKey, streamInfo, writeSnapshot } from '../src/snapshot.ts';
import { SchedulerState } from '../src/state.ts';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const prefix = uniq('snap').replace(/[^A-Za-z0-9_-]/g, '');
let dir: string;
let nats: ChildProcess;
let natsUrl: string;
let bus: Bus;
let redis: Redis;

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'vmsave-snapshot-'));
  const port = await freePort();
  nats = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' });
  await waitFor('the private nats-server', () => answers(port));
  natsUrl = `nats://127.0.0.1:${port}`;
  bus = await Bus.connect({ servers: natsUrl, name: 'snapshot-test' });
  await bus.ensureStreams();
  redis = await connectRedis((await testUrls()).redisUrl);
});

afterAll(async () => {
  try {
    await bus?.close();
    if (redis) {
      const keys = await redis.keys(`${prefix}*`);
      if (keys.length) await redis.del(...keys);
      redis.disconnect();
    }
  } finally {
    nats?.kill('SIGTERM');
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
});

/** A logger that keeps what it was told. */
function memLog(): Logger & { lines: Array<{ level: string; obj: unknown; msg: string }> } {
  const lines: Array<{ level: string; obj: unknown; msg: string }> = [];
  const at = (level: string) => (obj: unknown, msg?: string) => void lines.push({ level, obj, msg: msg ?? String(obj) });
  const l = { lines, info: at('info'), warn: at('warn'), error: at('error'), debug: at('debug'), child: () => l };
  return l as unknown as Logger & { lines: typeof lines };
}

/** A small PRNG, so that a failure can be replayed. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/**
 * Random-ish events for `jobs` jobs, interleaved: save lifecycles with failures, retries, cancels,
 * verdicts, restores with and without a known VM (leased by image), and stray events (stale
 * attempts, repeated requests, events after the end) that the fold must ignore.
 */
function randomLog(seed: number, jobs: number, n: number): JobEvent[] {
  const r = rng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]!;
  const st = Array.from({ length: jobs }, (_, i) => ({ i, kind: i % 4 === 3 ? 'restore' : 'save', phase: 'none', attempt: 0 }));
  const out: JobEvent[] = [];
  let t = Date.parse('2026-01-01T00:00:00Z');
  while (out.length < n) {
    const j = pick(st);
    const jobId = `${j.kind === 'save' ? 's' : 'r'}-${prefix}-${j.i}`;
    const host = `hv-${j.i % 3}`;
    const vm = `vm-${j.i % 7}`;
    const P = j.kind === 'save' ? 'Save' : 'Restore';
    const imagePath = `/var/lib/vmsave/${vm}-${jobId}-${j.attempt}.vmsave`;
    t += 1000;
    const at = new Date(t);
    const sourceOf = (type: string) => (/Started|Completed|Failed/.test(type) ? `executor@${host}` : type.startsWith('Image') ? 'verifier' : 'scheduler');
    const ev = (type: string, data: unknown) => out.push(makeEvent(type as never, jobId, data as never, { source: sourceOf(type), at }));
    const stray = r() < 0.1;
    if (j.phase === 'none' || (stray && r() < 0.3)) {
      if (j.kind === 'save') ev('SaveRequested', { request: SaveRequest.parse({ requestId: `q-${j.i}`, vm, priority: pick(['high', 'normal', 'low']) }) });
      else ev('RestoreRequested', { request: RestoreRequest.parse({ requestId: `q-${j.i}`, image: `${vm}.vmsave`, host }), vm: j.i % 8 === 3 ? undefined : vm });
      if (j.phase === 'none') j.phase = 'requested';
      continue;
    }
    if (stray) {
      if (j.kind === 'save')
        ev('SaveStarted', { host, attempt: j.attempt + 5, fencingToken: 999, imagePath, format: 'sparse', channels: 1, directIo: false, wasRunning: true, ramBytes: 1 });
      else ev('RestoreFailed', { attempt: j.attempt + 5, stage: 'restore', reason: 'stale', code: 'x', retryable: true, host });
      continue;
    }
    const token = j.i * 100 + j.attempt;
    switch (j.phase) {
      case 'requested':
        if (r() < 0.1) {
          ev(`${P}Cancelled`, { reason: 'test', stage: 'queued' });
          j.phase = 'end';
        } else if (r() < 0.05) {
          ev(`${P}Rejected`, { rule: 'test', message: 'no' });
          j.phase = 'end';
        } else {
          j.attempt++;
          ev(`${P}Scheduled`, { host, attempt: j.attempt, fencingToken: j.i * 100 + j.attempt, deadlineAt: new Date(t + 3600_000).toISOString() });
          j.phase = 'scheduled';
        }
        break;
      case 'scheduled':
        if (j.kind === 'save')
          ev('SaveStarted', { host, attempt: j.attempt, fencingToken: token, imagePath, format: 'sparse', channels: 1, directIo: false, wasRunning: true, ramBytes: 1 });
        // A restore goes on without its Started (its VM definition is the executor's): what follows is folded from `scheduled`.
        j.phase = 'running';
        break;
      case 'running':
        if (r() < 0.3) {
          const retryable = r() < 0.7;
          ev(`${P}Failed`, {
            attempt: j.attempt,
            stage: 'migrate',
            reason: 'x',
            code: 'qemu-migration-failed',
            retryable,
            host,
            ...(j.kind === 'save' ? { vmResumed: true } : {}),
          });
          j.phase = retryable && j.attempt < 3 ? 'failed' : 'end';
        } else if (j.kind === 'save') {
          ev('SaveCompleted', {
            host,
            attempt: j.attempt,
            fencingToken: token,
            imagePath,
            format: 'sparse',
            bytes: 1,
            blocks: 1,
            durationMs: 10,
            throughputBytesPerSec: 1,
            vmState: 'running',
            qemu: {},
          });
          j.phase = 'completed';
        } else {
          ev('RestoreCompleted', { host, attempt: j.attempt, fencingToken: token, imagePath, vm, durationMs: 10, vmState: 'running' });
          j.phase = 'end';
        }
        break;
      case 'failed':
        ev(`${P}Retrying`, { attempt: j.attempt + 1, delayMs: 100, lastCode: 'qemu-migration-failed' });
        j.phase = 'requested';
        break;
      case 'completed':
        ev(r() < 0.8 ? 'ImageVerified' : 'ImageRejected', { imagePath, host, checks: [{ name: 'header', status: 'pass', detail: 'ok' }] });
        j.phase = 'end';
        break;
      default:
        // After the end: a late event the fold counts but does not apply.
        ev(`${P}Cancelled`, { reason: 'late' });
    }
  }
  return out;
}

function parts(state: SchedulerState) {
  const log = memLog();
  const cfg = loadConfig({ NATS_URL: natsUrl, VMSAVE_REDIS_PREFIX: prefix });
  return { log, journal: new Journal({ bus, state, leases: new Leases(redis, prefix), cfg, log, wake: () => undefined }) };
}

/** Everything of the state a snapshot must bring back, in a comparable form. */
function view(s: SchedulerState) {
  return {
    jobs: [...s.jobs.entries()].sort(([a], [b]) => a.localeCompare(b)),
    imageOnly: [...s.imageOnly].sort(),
    open: [...s.openJobs()].map((j) => j.jobId).sort(),
    unplaced: [...s.unplaced].sort(),
    awaitingVerdict: [...s.awaitingVerdict.keys()].sort(),
    images: s
      .knownImages()
      .map((i) => i.jobId)
      .sort(),
  };
}

describe('snapshot at k + replay of the rest', () => {
  it('equals a full replay of the same random-ish log, for several k', async () => {
    const events = randomLog(13, 40, 600);
    const window: Promise<unknown>[] = [];
    for (const e of events) window.push(publishEvent(bus, e));
    await Promise.all(window);
    const { lastSeq } = await streamInfo(bus);
    expect(lastSeq).toBe(events.length);

    const full = new SchedulerState();
    expect(await parts(full).journal.rebuild()).toBe(lastSeq);
    const want = view(full);
    // The log exercises what the snapshot must carry.
    expect(want.imageOnly.length).toBeGreaterThan(0);
    expect(want.open.length).toBeGreaterThan(0);
    expect(new Set(want.jobs.map(([, j]) => j.status)).size).toBeGreaterThanOrEqual(5);

    for (const k of [1, 97, 300, 599, lastSeq]) {
      const key = `${prefix}-k${k}`;
      // A scheduler that has folded the log up to k (and nothing after it) writes its snapshot.
      const before = new SchedulerState();
      const { journal: jb } = parts(before);
      for await (const { seq, event } of readLog(bus)) {
        if (seq > k) break;
        jb.foldOnly(event);
        before.logSeq = seq;
      }
      expect(before.quiescentAt()).toBe(k);
      await writeSnapshot(redis, snapshotKey(key), captureSnapshot(before, k, (await streamInfo(bus)).created));

      // A new one loads it and replays the rest.
      const after = new SchedulerState();
      const { journal: ja, log } = parts(after);
      const snaps = new Snapshots({ bus, redis, state: after, log, prefix: key, every: 1, intervalMs: 1000 });
      expect(await snaps.load()).toBe(k);
      // A non-following read of the log from a start sequence may end a few events before the
      // stream's last (packages/bus readLog); the scheduler's follower goes on from there, as here.
      let seq = k;
      for (let reads = 0; seq < lastSeq && reads < 10; reads++) seq = await ja.rebuild(seq + 1);
      expect(seq).toBe(lastSeq);
      expect(view(after)).toEqual(want);
    }
  });

  it("ignores, with a warning, a snapshot (plain or gzip'd) of another version, an unreadable one and one of another stream: the whole log is replayed", async () => {
    const { created } = await streamInfo(bus);
    const cases: Array<[string, Buffer, RegExp]> = [
      ['version', gzipSync(JSON.stringify({ v: 99, stream: created, seq: 5, at: '', jobs: [], imageOnly: [] })), /version 99/],
      ['plain-version', Buffer.from(JSON.stringify({ v: 98, stream: created, seq: 5, at: '', jobs: [], imageOnly: [] })), /version 98/],
      ['garbage', Buffer.from('not a snapshot'), /not JSON/],
      ['broken-gzip', Buffer.concat([gzipSync('{"v":1}').subarray(0, 10), Buffer.from('garbage')]), /unreadable/],
      ['json', gzipSync('{"v":1,"stream":'), /not JSON/],
      ['malformed', gzipSync(JSON.stringify({ v: 1, stream: created, seq: 5, at: '', jobs: [{ nope: 1 }], imageOnly: [] })), /jobs\.0: not a job state/],
      ['stream', gzipSync(JSON.stringify({ v: 1, stream: 'another', seq: 5, at: '', jobs: [], imageOnly: [] })), /another event stream/],
    ];
    for (const [name, buf, why] of cases) {
      const key = `${prefix}-bad-${name}`;
      await redis.set(snapshotKey(key), buf);
      const state = new SchedulerState();
      const log = memLog();
      expect(await new Snapshots({ bus, redis, state, log, prefix: key, every: 1, intervalMs: 1000 }).load()).toBe(0);
      expect(state.jobs.size).toBe(0);
      const warn = log.lines.find((l) => l.level === 'warn');
      expect(`${warn?.msg} ${JSON.stringify(warn?.obj)}`).toMatch(why);
    }
  });
});

describe('periodic snapshots', () => {
  it('are written once enough events were folded, and never while an own event is unfolded, its echo unread or a read event unapplied', async () => {
    const key = `${prefix}-periodic`;
    const state = new SchedulerState();
    const { journal, log } = parts(state);
    state.logSeq = await journal.rebuild();
    const snaps = new Snapshots({ bus, redis, state, log, prefix: key, every: 10, intervalMs: 3600_000 });
    expect(await snaps.load()).toBe(0);
    const written = async () => {
      await new Promise((r) => setTimeout(r, 200));
      return log.lines.filter((l) => l.msg === 'state snapshot written').length;
    };
    state.unfolded.add('e-1');
    snaps.maybe();
    expect(await written()).toBe(0);
    state.unfolded.delete('e-1');
    state.ownMaxSeq = state.logSeq + 1;
    snaps.maybe();
    expect(await written()).toBe(0);
    state.ownMaxSeq = 0;
    state.pendingLogEvents = 1;
    snaps.maybe();
    expect(await written()).toBe(0);
    state.pendingLogEvents = 0;
    snaps.maybe();
    expect(await written()).toBe(1);
    // Not again until `every` more events (or the interval).
    snaps.maybe();
    expect(await written()).toBe(1);
    const fresh = new SchedulerState();
    expect(await new Snapshots({ bus, redis, state: fresh, log: memLog(), prefix: key, every: 10, intervalMs: 1000 }).load()).toBe(state.logSeq);
    expect(view(fresh)).toEqual(view(state));
    // Written plain JSON; one above the size limit is gzip'd, and read back the same.
    expect((await redis.getBuffer(snapshotKey(key)))!.subarray(0, 1).toString()).toBe('{');
    const gzKey = `${prefix}-periodic-gz`;
    const gzSnaps = new Snapshots({ bus, redis, state, log: memLog(), prefix: gzKey, every: 10, intervalMs: 1000, gzipAboveBytes: 0 });
    expect(await gzSnaps.load()).toBe(0); // none yet under this key; learns the stream's identity
    await gzSnaps.final();
    const stored = (await redis.getBuffer(snapshotKey(gzKey)))!;
    expect([stored[0], stored[1]]).toEqual([0x1f, 0x8b]);
    const fromGz = new SchedulerState();
    expect(await new Snapshots({ bus, redis, state: fromGz, log: memLog(), prefix: gzKey, every: 10, intervalMs: 1000 }).load()).toBe(state.logSeq);
    expect(view(fromGz)).toEqual(view(state));
  });
});

describe('a real scheduler restarted', () => {
  it('writes a snapshot on its clean stop, resumes from it (replaying only what came after), and still answers a repeated request as a duplicate', async () => {
    const host = uniq('hv').replace(/[^A-Za-z0-9_-]/g, '');
    const vm = uniq('web').replace(/[^A-Za-z0-9_-]/g, '');
    const now = new Date().toISOString();
    await publishValidated(
      bus,
      messages.hostAnnouncement,
      subjects.host(host),
      HostAnnouncement.parse({
        host,
        executorId: `executor@${host}`,
        at: now,
        startedAt: now,
        qemu: { version: '10.1.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
        imageDir: '/var/lib/vmsave',
        freeBytes: 64 * 1024 ** 3,
        maxConcurrentJobs: 1,
        vms: [{ name: vm, uuid: '6f1c1a0e-3b7e-4c55-9d4e-2b1f0c9a8e31', machine: 'q35', memoryMiB: 128, vcpus: 1, status: 'running' }],
      }),
    );
    const schedPrefix = `${prefix}-sched`;
    const startScheduler = async () => {
      const lines: Array<Record<string, unknown>> = [];
      let stderr = '';
      const child = spawn(process.execPath, ['--conditions=development', '--import', 'tsx', path.join(PKG, 'src', 'main.ts')], {
        cwd: PKG,
        env: { ...process.env, NATS_URL: natsUrl, REDIS_URL: (await testUrls()).redisUrl, VMSAVE_REDIS_PREFIX: schedPrefix, VMSAVE_METRICS_PORT: '0', VMSAVE_LOG_LEVEL: 'info' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const exited = new Promise<number | null>((r) => child.once('exit', r));
      let buf = '';
      child.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          try {
            lines.push(JSON.parse(line) as Record<string, unknown>);
          } catch {
            // not a log line
          }
        }
      });
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const logged = (msg: string) => lines.find((l) => l.msg === msg);
      await waitFor(
        'the scheduler to run',
        () => logged('scheduler running') ?? (child.exitCode !== null ? Promise.reject(new Error(`exited: ${stderr}`)) : undefined),
        60_000,
        100,
      );
      return {
        logged,
        async stop() {
          child.kill('SIGTERM');
          await exited;
        },
      };
    };
    const save = async (requestId: string): Promise<AdmissionReply | undefined> => {
      const answer = awaitAnswer(bus, messages.admissionReply, { timeoutMs: 30_000 });
      await publishValidated(bus, messages.saveRequest, subjects.cmd.save, { requestId, vm }, { replyTo: answer.inbox });
      return answer.value;
    };

    const first = await startScheduler();
    const requestId = uniq('snap-req');
    const reply = await save(requestId);
    expect(reply).toMatchObject({ outcome: 'accepted', duplicate: false });
    const jobId = (reply as { jobId: string }).jobId;
    // Its SaveScheduled (the host has a free slot) is in the log before the stop.
    await waitFor('SaveScheduled', () => readUntilScheduled(jobId), 30_000, 200);
    await first.stop();
    const written = first.logged('state snapshot written') as { seq: number } | undefined;
    expect(written?.seq).toBe((await streamInfo(bus)).lastSeq);

    // An event after the snapshot: the restarted scheduler replays just that one.
    await publishEvent(bus, makeEvent('SaveCancelRequested', jobId, { reason: 'test' }, { source: 'scheduler' }));
    const second = await startScheduler();
    try {
      expect(second.logged('loaded the state snapshot')).toMatchObject({ seq: written!.seq });
      expect(second.logged('scheduler rebuilt its view from the log')).toMatchObject({ snapshotSeq: written!.seq, replayed: 1 });
      expect(await save(requestId)).toEqual({ outcome: 'accepted', requestId, jobId, duplicate: true });
    } finally {
      await second.stop();
    }
  });
});

async function readUntilScheduled(jobId: string): Promise<true | undefined> {
  for await (const { event } of readLog(bus)) if (event.jobId === jobId && event.type === 'SaveScheduled') return true;
  return undefined;
}

// Last: it purges the private events stream's head, which the tests above read whole.
describe('a log whose head was discarded (retention, purge)', () => {
  it('is said loudly at start when events after the snapshot are gone, and not when the snapshot covers them', async () => {
    expect(discardedGap(10, 11)).toBeUndefined();
    expect(discardedGap(10, 15)).toEqual({ from: 11, to: 14 });
    expect(discardedGap(0, 1)).toBeUndefined();
    const jobId = uniq('s-gap').replace(/[^A-Za-z0-9_-]/g, '');
    for (let i = 0; i < 3; i++) await publishEvent(bus, makeEvent('SaveCancelRequested', jobId, { reason: `gap ${i}` }, { source: 'scheduler' }));
    const { lastSeq, created } = await streamInfo(bus);
    // Keep only the last event: everything before lastSeq is discarded.
    await bus.jsm.streams.purge(streams.events.name, { seq: lastSeq });
    expect((await streamInfo(bus)).firstSeq).toBe(lastSeq);
    const load = async (name: string, seq: number | undefined) => {
      const key = `${prefix}-gap-${name}`;
      if (seq !== undefined) await writeSnapshot(redis, snapshotKey(key), captureSnapshot(new SchedulerState(), seq, created));
      const log = memLog();
      const loaded = await new Snapshots({ bus, redis, state: new SchedulerState(), log, prefix: key, every: 1, intervalMs: 1000 }).load();
      return { loaded, errors: log.lines.filter((l) => l.level === 'error') };
    };
    // A snapshot older than the discarded events: loaded, and the gap named.
    const old = await load('old', lastSeq - 3);
    expect(old.loaded).toBe(lastSeq - 3);
    expect(old.errors).toHaveLength(1);
    expect(old.errors[0]!.obj).toMatchObject({ snapshotSeq: lastSeq - 3, firstSeq: lastSeq, missingFrom: lastSeq - 2, missingTo: lastSeq - 1, missing: 2 });
    // No snapshot at all: the whole log is replayed from what remains, and the loss is named.
    const none = await load('none', undefined);
    expect(none.loaded).toBe(0);
    expect(none.errors[0]?.obj).toMatchObject({ snapshotSeq: 0, firstSeq: lastSeq, missingFrom: 1, missingTo: lastSeq - 1 });
    // A snapshot covering everything discarded: nothing said.
    const covering = await load('covering', lastSeq - 1);
    expect(covering.loaded).toBe(lastSeq - 1);
    expect(covering.errors).toEqual([]);
  });
});
