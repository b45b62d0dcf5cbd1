import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostAnnouncement, SaveRequest, jobIdFor, makeEvent, streams, subjects } from '@vmsave/contracts';
import { answers, freePort, uniq, waitFor } from '@vmsave/testkit';
import { Bus, DirectGetError, directGet, ensureStream, followDirect, publishEvent, readDirect, readHosts, readLog, readsByConsumer, type LoggedEvent } from '../src/index.ts';

// A private nats-server: this suite updates VMSAVE_EVT's configuration and counts every event in it.
let nats: ChildProcess;
let dir: string;
let url: string;
let bus: Bus;
let natsArgs: string[];
let natsPort: number;

beforeAll(async () => {
  const port = await freePort();
  dir = mkdtempSync(join(tmpdir(), 'vmsave-direct-'));
  natsArgs = ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir];
  nats = spawn('nats-server', natsArgs, { stdio: 'ignore' });
  await waitFor('the private nats-server', () => answers(port));
  url = `nats://127.0.0.1:${port}`;
  natsPort = port;
  bus = await Bus.connect({ servers: url, name: 'direct-test' });
  await bus.ensureStreams();
});
afterAll(async () => {
  await bus?.close();
  const exited = new Promise((r) => nats.once('exit', r));
  nats.kill('SIGTERM');
  await exited;
  rmSync(dir, { recursive: true, force: true });
});

const request = SaveRequest.parse({ requestId: 'r', vm: 'vm1' });
const requested = (jobId: string) => makeEvent('SaveRequested', jobId, { request }, { source: 'scheduler' });
const rejected = (jobId: string) => makeEvent('SaveRejected', jobId, { rule: 'vm-exists', field: 'vm', message: 'no VM vm1 on any host' }, { source: 'scheduler' });
const newJob = () => jobIdFor('save', uniq('r'));
const collect = async <T>(it: AsyncIterable<T>): Promise<T[]> => {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
};

describe('direct get on the event log', () => {
  it('a client connection reads by direct get, a service connection by consumer', () => {
    expect(readsByConsumer({ options: { servers: url, name: 'vmsave-cli' } })).toBe(false);
    expect(readsByConsumer({ options: { servers: url, name: 'x', user: 'dashboard' } })).toBe(false);
    expect(readsByConsumer({ options: { servers: url, name: 'scheduler' } })).toBe(true);
    expect(readsByConsumer({ options: { servers: url, name: 'x', user: 'executor-h1' } })).toBe(true);
  });

  it('ensureStreams turns allow_direct on for the event log and the hosts stream, also on an existing stream', async () => {
    const { allowDirect: _a, ...plain } = streams.events;
    await bus.jsm.streams.delete(streams.events.name);
    await ensureStream(bus.jsm, plain, 1);
    expect((await bus.jsm.streams.info(streams.events.name)).config.allow_direct).toBeFalsy();
    await bus.ensureStreams();
    expect((await bus.jsm.streams.info(streams.events.name)).config.allow_direct).toBe(true);
    expect((await bus.jsm.streams.info(streams.hosts.name)).config.allow_direct).toBe(true);
    expect((await bus.jsm.streams.info(streams.commands.name)).config.allow_direct).toBeFalsy();
  });

  it('gets by seq, by next_by_subj and by last_by_subj; null when nothing matches', async () => {
    const job = newJob();
    const a = await publishEvent(bus, requested(job));
    const b = await publishEvent(bus, rejected(job));
    const bySeq = await directGet(bus, { seq: a.seq });
    expect(bySeq?.seq).toBe(a.seq);
    expect(bySeq?.subject).toBe(subjects.evt(job, 'SaveRequested'));
    const next = await directGet(bus, { nextBySubj: subjects.evtOfJob(job), seq: a.seq + 1 });
    expect(next?.seq).toBe(b.seq);
    expect((await directGet(bus, { lastBySubj: subjects.evtOfJob(job) }))?.seq).toBe(b.seq);
    expect(await directGet(bus, { nextBySubj: subjects.evtOfJob(job), seq: b.seq + 1 })).toBeNull();
    expect(await directGet(bus, { seq: b.seq + 1000 })).toBeNull();
  });

  it('names allow_direct when the stream has no direct get', async () => {
    await expect(directGet(bus, { seq: 1 }, { stream: streams.commands.name, timeoutMs: 2000 })).rejects.toThrow(DirectGetError);
    await expect(directGet(bus, { seq: 1 }, { stream: streams.commands.name, timeoutMs: 2000 })).rejects.toThrow(/allow_direct/);
  });

  it('reads the same events as the consumer read, whole log and one job, with the same validation', async () => {
    const job = newJob();
    await publishEvent(bus, requested(job));
    // A forged verdict (source may not publish it) and bytes that are no event.
    await publishEvent(bus, makeEvent('SaveRejected', job, { rule: 'x', field: 'vm', message: 'forged' }, { source: 'verifier' }));
    await bus.js.publish(subjects.evt(job, 'SaveRejected'), new TextEncoder().encode('not json'));
    await publishEvent(bus, rejected(job));
    const pick = (l: LoggedEvent[]) => l.map((e) => [e.seq, e.event.eventId]);
    for (const filter of [undefined, subjects.evtOfJob(job)]) {
      const refused: string[] = [];
      const invalid: number[] = [];
      const direct = await collect(readLog(bus, { filter, via: 'direct', onRefused: (_s, r) => refused.push(r), onInvalid: (s) => invalid.push(s) }));
      const consumer = await collect(readLog(bus, { filter, via: 'consumer', onRefused: () => undefined, onInvalid: () => undefined }));
      expect(pick(direct)).toEqual(pick(consumer));
      expect(refused.some((r) => /source: "verifier"/.test(r))).toBe(true);
      expect(invalid.length).toBeGreaterThanOrEqual(1);
    }
    const ofJob = await collect(readLog(bus, { filter: subjects.evtOfJob(job), via: 'direct', onRefused: () => undefined, onInvalid: () => undefined }));
    expect(ofJob.map((e) => e.event.type)).toEqual(['SaveRequested', 'SaveRejected']);
    // From a sequence: starts there.
    const tail = await collect(readLog(bus, { filter: subjects.evtOfJob(job), fromSeq: ofJob[1]!.seq, via: 'direct' }));
    expect(tail.map((e) => e.seq)).toEqual([ofJob[1]!.seq]);
  });

  it('the seq and the walk strategies agree', async () => {
    const seq = await collect(readDirect(bus, { strategy: 'seq', window: 7 }));
    const walk = await collect(readDirect(bus, { strategy: 'walk' }));
    expect(seq.length).toBeGreaterThan(3);
    expect(seq.map((m) => m.seq)).toEqual(walk.map((m) => m.seq));
  });

  it('follows history then live events exactly once and in order while events are being published', async () => {
    const job = newJob();
    const filter = subjects.evtOfJob(job);
    const total = 300;
    const ac = new AbortController();
    const got: number[] = [];
    const published: number[] = [];
    // Half the events before the follow starts, the rest while it reads the history.
    for (let i = 0; i < total / 2; i++) published.push((await publishEvent(bus, requested(job))).seq);
    const follow = (async () => {
      for await (const m of followDirect(bus, filter, 1, { signal: ac.signal })) {
        got.push(m.seq);
        if (got.length === total) ac.abort();
      }
    })();
    for (let i = total / 2; i < total; i++) published.push((await publishEvent(bus, requested(job))).seq);
    await Promise.race([follow, new Promise((_, reject) => setTimeout(() => reject(new Error(`follow saw ${got.length}/${total}`)), 30_000))]);
    expect(got).toEqual(published);
  });

  it('a live message the stream drops (duplicate Nats-Msg-Id) neither stalls nor repeats the follow', async () => {
    const job = newJob();
    const e1 = requested(job);
    const ac = new AbortController();
    const got: string[] = [];
    const follow = (async () => {
      for await (const { event } of readLog(bus, { filter: subjects.evtOfJob(job), follow: true, signal: ac.signal, via: 'direct' })) {
        got.push(event.type);
        if (got.length === 2) ac.abort();
      }
    })();
    await publishEvent(bus, e1);
    expect((await publishEvent(bus, e1)).duplicate).toBe(true);
    await publishEvent(bus, rejected(job));
    await follow;
    expect(got).toEqual(['SaveRequested', 'SaveRejected']);
  });

  it('a follow goes on after NATS restarts, still exactly once and in order', async () => {
    const job = newJob();
    const ac = new AbortController();
    const got: string[] = [];
    const before = [requested(job), rejected(job)];
    const after = [requested(job), rejected(job)];
    for (const e of before) await publishEvent(bus, e);
    const follow = (async () => {
      for await (const { event } of readLog(bus, { filter: subjects.evtOfJob(job), follow: true, signal: ac.signal, via: 'direct' })) {
        got.push(event.eventId);
        if (got.length === 4) ac.abort();
      }
    })();
    await waitFor('the history', () => got.length === 2);
    const exited = new Promise((r) => nats.once('exit', r));
    nats.kill('SIGTERM');
    await exited;
    nats = spawn('nats-server', natsArgs, { stdio: 'ignore' });
    await waitFor('the restarted nats-server', () => answers(natsPort));
    for (const e of after) await publishEvent(bus, e);
    await Promise.race([follow, new Promise((_, reject) => setTimeout(() => reject(new Error(`follow saw ${got.length}/4 after the restart`)), 30_000))]);
    expect(got).toEqual([...before, ...after].map((e) => e.eventId));
  });

  it('reads host announcements without a consumer: the latest of each host', async () => {
    const at = new Date().toISOString();
    const announce = (host: string, freeBytes: number) =>
      HostAnnouncement.parse({
        host,
        executorId: `executor@${host}`,
        at,
        startedAt: at,
        qemu: { version: '10.1.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'tcg' },
        imageDir: '/var/lib/vmsave',
        freeBytes,
        maxConcurrentJobs: 2,
        vms: [],
      });
    for (const [h, f] of [
      ['hv-a', 1],
      ['hv-b', 2],
      ['hv-a', 3],
    ] as const)
      await bus.js.publish(subjects.host(h), JSON.stringify(announce(h, f)));
    const hosts = await collect(readHosts(bus, { via: 'direct' }));
    const viaConsumer = await collect(readHosts(bus, { via: 'consumer' }));
    expect(hosts).toEqual(viaConsumer);
    expect(hosts.map((h) => [h.host, h.freeBytes]).sort()).toEqual([
      ['hv-a', 3],
      ['hv-b', 2],
    ]);
  });
});
