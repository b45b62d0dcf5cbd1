import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { messages } from '@vmsave/contracts';
import { testUrls, uniq } from '@vmsave/testkit';
import { awaitAnswer, Bus, BusRequestTimeout, BusValidationError, requestValidated, subscribeValidated } from '../src/index.ts';

let bus: Bus;
const id = uniq('core').replace(/[^A-Za-z0-9_-]/g, '_');

beforeAll(async () => {
  const { natsUrl } = await testUrls();
  bus = await Bus.connect({ servers: natsUrl, name: 'bus-core-test' });
});
afterAll(async () => {
  await bus.close();
});

describe('typed core NATS request/reply and subscribe', () => {
  it('answers a validated request with a validated reply', async () => {
    const subject = `test.${id}.ctl`;
    const sub = subscribeValidated(bus, messages.controlRequest, subject, { max: 1 });
    void (async () => {
      for await (const m of sub) m.respond(messages.controlReply, { ok: true, message: `cancelling ${m.value.action === 'cancel' ? m.value.jobId : '-'}` });
    })();
    await bus.nc.flush();
    const r = await requestValidated(bus, messages.controlRequest, subject, { action: 'cancel', jobId: 's-abc', reason: 'test' }, messages.controlReply);
    expect(r).toEqual({ ok: true, message: 'cancelling s-abc' });
  });

  it('skips an invalid message, reports it, and delivers the next valid one', async () => {
    const subject = `test.${id}.hb`;
    const invalid: string[] = [];
    const sub = subscribeValidated(bus, messages.heartbeat, subject, { onInvalid: (err) => invalid.push(err.issues.join(',')) });
    const got = (async () => {
      for await (const m of sub) return m.value.host;
      return undefined;
    })();
    await bus.nc.flush();
    bus.nc.publish(subject, new TextEncoder().encode('{"host": 5}'));
    bus.nc.publish(subject, new TextEncoder().encode(JSON.stringify({ host: 'h1', executorId: 'e1', at: new Date().toISOString(), jobs: [] })));
    expect(await got).toBe('h1');
    expect(invalid.length).toBe(1);
    expect(invalid[0]).toMatch(/host/);
  });

  it('refuses to send an invalid request, naming the field', async () => {
    await expect(requestValidated(bus, messages.controlRequest, `test.${id}.none`, { action: 'explode' } as never, messages.controlReply)).rejects.toBeInstanceOf(
      BusValidationError,
    );
  });

  it('times out with a retryable error when nobody answers', async () => {
    const err = await requestValidated(bus, messages.controlRequest, `test.${id}.nobody`, { action: 'cancel', jobId: 's-abc', reason: 'x' }, messages.controlReply, {
      timeoutMs: 300,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BusRequestTimeout);
    expect((err as BusRequestTimeout).retryable).toBe(true);
  });

  it('awaitAnswer returns the one answer on its inbox, or undefined after its timeout', async () => {
    const a = awaitAnswer(bus, messages.admissionReply, { timeoutMs: 5000 });
    await bus.nc.flush();
    bus.nc.publish(a.inbox, new TextEncoder().encode(JSON.stringify({ outcome: 'accepted', requestId: 'r1', jobId: 's-r1', duplicate: false })));
    expect((await a.value)?.outcome).toBe('accepted');
    const b = awaitAnswer(bus, messages.admissionReply, { timeoutMs: 200 });
    expect(await b.value).toBeUndefined();
  });
});
