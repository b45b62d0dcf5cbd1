import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeadLetter, SaveRequest, messages, streams, subjects, makeEvent, jobIdFor, type StreamDefinition } from '@vmsave/contracts';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import { Bus, ack, createLogger, ensureStream, eventsOfJob, publishEvent, publishValidated, readLog, runConsumer } from '../src/index.ts';

const log = createLogger('bus-test', { level: 'silent' });
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

  it('appends events to the log, deduplicated by event id, and reads one job back in order', async () => {
    const jobId = jobIdFor('save', uniq('r'));
    const request = SaveRequest.parse({ requestId: 'r', vm: 'vm1' });
    const e1 = makeEvent('SaveRequested', jobId, { request }, { source: 'test' });
    const e2 = makeEvent('SaveRejected', jobId, { rule: 'vm-exists', field: 'vm', message: 'no VM vm1 on any host' }, { source: 'test' });
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
