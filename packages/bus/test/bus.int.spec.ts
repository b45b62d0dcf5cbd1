import { createHash, randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeadLetter, SaveRequest, messages, streams, subjects, makeEvent, jobIdFor, type StreamDefinition } from '@vmsave/contracts';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import { Bus, ack, createLogger, ensureStream, eventsOfJob, publishEvent, publishValidated, readLog, runConsumer } from '../src/index.ts';

const log = createLogger('bus-test', { level: 'silent' });
const capturingLogger = (lines: string[]) =>
  createLogger('bus-test', {
    level: 'warn',
    destination: new Writable({
      write: (c, _e, cb) => {
        lines.push(String(c));
        cb();
      },
    }),
  });
let bus: Bus;
const id = uniq('bus').replace(/[^A-Za-z0-9_-]/g, '_');
// A throwaway work-queue stream shaped like VMSAVE_CMD, so this test never competes with a scheduler.
const testStream: StreamDefinition = { ...streams.commands, name: `TEST_${id}`, subjects: [`test.${id}.>`], description: 'bus test' };
const subject = `test.${id}.save`;

beforeAll(async () => {
  const { natsUrl } = await testUrls();
  bus = await Bus.connect({ servers: natsUrl, name: 'bus-test' });
  await bus.ensureStreams();
  await ensureStream(bus.jsm, testStream, 1);
});
afterAll(async () => {
  await bus.jsm.streams.delete(testStream.name).catch(() => undefined);
  await bus.close();
});

describe('bus against a real NATS server', () => {
  it('ensureStreams is idempotent and creates every vmsave stream', async () => {
    await bus.ensureStreams();
    for (const def of Object.values(streams)) expect((await bus.jsm.streams.info(def.name)).config.subjects).toEqual(def.subjects);
  });

  it('deduplicates a request published twice with the same request id', async () => {
    const req = { requestId: uniq('r'), vm: 'vm1' };
    const a = await publishValidated(bus, messages.saveRequest, subject, req, { msgId: req.requestId });
    const b = await publishValidated(bus, messages.saveRequest, subject, req, { msgId: req.requestId });
    expect(a.ack.duplicate).toBe(false);
    expect(b.ack.duplicate).toBe(true);
    expect(b.ack.seq).toBe(a.ack.seq);
    expect((await bus.jsm.streams.info(testStream.name)).state.messages).toBe(1);
  });

  it('refuses to publish an invalid message, naming the field', async () => {
    await expect(publishValidated(bus, messages.saveRequest, subject, { requestId: 'x', vm: 'bad name' })).rejects.toThrow(/vm: VM name/);
  });

  it('dead-letters an invalid payload with a reason naming the field, and goes on with the next message', async () => {
    const service = `t-${id}`;
    const seen: SaveRequest[] = [];
    const ac = new AbortController();
    const loop = runConsumer(bus, {
      stream: testStream.name,
      durable: `c-${id}`,
      filterSubject: subject,
      schema: SaveRequest,
      service,
      log,
      signal: ac.signal,
      handler: async (m) => {
        seen.push(m);
        return ack();
      },
    });
    bus.nc.publish(subject, new TextEncoder().encode(JSON.stringify({ requestId: 'bad-1', vm: 'vm1', channels: 'many' })));
    bus.nc.publish(subject, new Uint8Array([0xff, 0xfe, 0x00]));
    bus.nc.publish(subject, new TextEncoder().encode('{"requestId": "truncated'));
    const good = uniq('good');
    await publishValidated(bus, messages.saveRequest, subject, { requestId: good, vm: 'vm2' }, { msgId: good });
    await waitFor('the valid message after the invalid ones', () => seen.find((m) => m.requestId === good));

    const letters: DeadLetter[] = [];
    const c = await bus.js.consumers.get(streams.deadLetters.name, { filter_subjects: subjects.dlq(service) });
    await waitFor('three dead letters', async () => {
      const m = await c.next({ expires: 1000 });
      if (m) letters.push(DeadLetter.parse(m.json()));
      return letters.length >= 3;
    });
    expect(letters[0]!.reason).toContain('channels:');
    expect(letters[0]!.payload).toContain('"many"');
    expect(letters[1]!.reason).toMatch(/not valid UTF-8/);
    expect(letters[1]!.payloadEncoding).toBe('base64');
    expect(letters[2]!.reason).toMatch(/not JSON/);
    expect(seen.map((m) => m.requestId)).not.toContain('bad-1');
    ac.abort();
    await loop;
    await bus.jsm.consumers.delete(testStream.name, `c-${id}`);
  });

  it('on abort, gives back at once the messages it fetched but never handled (no wait for the ack wait)', async () => {
    const durable = `nak-${id}`;
    const ackWaitMs = 60_000;
    const sub = `test.${id}.nak`;
    const ids = Array.from({ length: 6 }, (_, i) => `n${i}-${id}`);
    for (const r of ids) await publishValidated(bus, messages.saveRequest, sub, { requestId: r, vm: 'vm1' }, { msgId: r });
    const first: string[] = [];
    const ac = new AbortController();
    let release: () => void = () => undefined;
    const held = new Promise<void>((r) => (release = r));
    // One handler at a time, and the first one holds until the abort: the rest stay buffered in the iterator.
    const loop = runConsumer(bus, {
      stream: testStream.name,
      durable,
      filterSubject: sub,
      schema: SaveRequest,
      service: `t-${id}`,
      log,
      signal: ac.signal,
      ackWaitMs,
      concurrency: 1,
      handler: async (m) => {
        first.push(m.requestId);
        await held;
        return ack();
      },
    });
    await waitFor('the first message handled', () => first.length === 1);
    ac.abort();
    release();
    await loop;
    expect(first).toEqual([ids[0]]);
    // A second run of the same durable gets the other five well before the 60 s ack wait.
    const second: string[] = [];
    const ac2 = new AbortController();
    const loop2 = runConsumer(bus, {
      stream: testStream.name,
      durable,
      filterSubject: sub,
      schema: SaveRequest,
      service: `t-${id}`,
      log,
      signal: ac2.signal,
      ackWaitMs,
      handler: async (m) => {
        second.push(m.requestId);
        return ack();
      },
    });
    // 20 s, a third of the ack wait: without the give-back they would come only after 60 s.
    await waitFor('the five given back', () => second.length >= 5, 20_000);
    expect([...second].sort()).toEqual(ids.slice(1).sort());
    ac2.abort();
    await loop2;
    await bus.jsm.consumers.delete(testStream.name, durable);
  });

  it('dead-letters a 1 MB non-UTF-8 message as a truncated letter under max_payload, with its size and sha256', async () => {
    const service = `big-${id}`;
    const lines: string[] = [];
    const captured = capturingLogger(lines);
    const ac = new AbortController();
    const durable = `big-${id}`;
    const loop = runConsumer(bus, {
      stream: testStream.name,
      durable,
      filterSubject: subject,
      schema: SaveRequest,
      service,
      log: captured,
      signal: ac.signal,
      handler: async () => ack(),
    });
    const maxPayload = bus.nc.info!.max_payload;
    const big = randomBytes(Math.min(1_000_000, maxPayload - 4096));
    big[0] = 0xff; // never valid UTF-8
    await bus.js.publish(subject, big);
    const c = await bus.js.consumers.get(streams.deadLetters.name, { filter_subjects: subjects.dlq(service) });
    const m = await waitFor('the dead letter of the big message', () => c.next({ expires: 1000 }));
    ac.abort();
    await loop;
    await bus.jsm.consumers.delete(testStream.name, durable);
    expect(m.data.byteLength).toBeLessThanOrEqual(maxPayload);
    const letter = DeadLetter.parse(m.json());
    expect(letter).toMatchObject({ payloadEncoding: 'base64', payloadTruncated: true, payloadSize: big.byteLength, payloadSha256: createHash('sha256').update(big).digest('hex') });
    expect(letter.reason).toMatch(/not valid UTF-8/);
    const prefix = Buffer.from(letter.payload, 'base64');
    expect(prefix.byteLength).toBeGreaterThan(big.byteLength / 2);
    expect(prefix.equals(big.subarray(0, prefix.byteLength))).toBe(true);
    expect(lines.join('')).toMatch(/invalid message, dead-lettered/);
  });

  it('says in the log that a dead letter was NOT stored when it could not be published', async () => {
    const service = `lost-${id}`;
    const lines: string[] = [];
    const captured = capturingLogger(lines);
    // The same connection, but every publish to the dead-letter stream fails.
    const js = new Proxy(bus.js, {
      get: (t, p) =>
        p === 'publish' ? (s: string, ...rest: never[]) => (s.startsWith('vmsave.dlq.') ? Promise.reject(new Error('refused')) : t.publish(s, ...rest)) : Reflect.get(t, p),
    });
    const broken = Object.create(bus, { js: { value: js } }) as Bus;
    const ac = new AbortController();
    const durable = `lost-${id}`;
    const loop = runConsumer(broken, {
      stream: testStream.name,
      durable,
      filterSubject: subject,
      schema: SaveRequest,
      service,
      log: captured,
      signal: ac.signal,
      handler: async () => ack(),
    });
    bus.nc.publish(subject, new Uint8Array([0xff, 0xfe, 0x00]));
    await waitFor('the log line about the lost dead letter', () => lines.join('').includes('NOT stored'));
    ac.abort();
    await loop;
    await bus.jsm.consumers.delete(testStream.name, durable);
    expect(lines.join('')).not.toMatch(/dead-lettered/);
  });

  it('appends events to the log, deduplicated by event id, and reads one job back in order', async () => {
    const jobId = jobIdFor('save', uniq('r'));
    const request = SaveRequest.parse({ requestId: 'r', vm: 'vm1' });
    const e1 = makeEvent('SaveRequested', jobId, { request }, { source: 'scheduler' });
    const e2 = makeEvent('SaveRejected', jobId, { rule: 'vm-exists', field: 'vm', message: 'no VM vm1 on any host' }, { source: 'scheduler' });
    await publishEvent(bus, e1);
    expect((await publishEvent(bus, e1)).duplicate).toBe(true);
    await publishEvent(bus, e2);
    const got = await eventsOfJob(bus, jobId);
    expect(got.map((g) => g.event.type)).toEqual(['SaveRequested', 'SaveRejected']);
    expect(got[0]!.seq).toBeLessThan(got[1]!.seq);
    // readLog from a sequence starts there.
    const tail: string[] = [];
    for await (const g of readLog(bus, { fromSeq: got[1]!.seq, filter: subjects.evtOfJob(jobId) })) tail.push(g.event.type);
    expect(tail).toEqual(['SaveRejected']);
    expect(await eventsOfJob(bus, jobIdFor('save', uniq('none')))).toEqual([]);
  });
});
