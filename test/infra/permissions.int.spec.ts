/**
 * The NATS roles of infra/nats/nats.conf against a real, private nats-server (free port, temp
 * store, freshly generated passwords): each role can do what its service needs and is refused
 * what it must not do.
 *
 * How nats.js v3 reports a refusal: the server answers a forbidden PUB or SUB with
 * `-ERR 'Permissions Violation for Publish to "…"'`, which the client turns into a
 * `PermissionViolationError` on the status stream (`nc.status()`). A request (a JetStream publish
 * or API call) to the forbidden subject is also rejected with that error instead of timing out;
 * a forbidden subscription ends with it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AckPolicy, DeliverPolicy } from '@nats-io/jetstream';
import { createInbox } from '@nats-io/nats-core';
import { SaveRequest, jobIdFor, makeEvent, messages, streams, subjects } from '@vmsave/contracts';
import { ack, createLogger, publishEvent, publishValidated, readLog, runConsumer } from '@vmsave/bus';
import { uniq, waitFor } from '@vmsave/testkit';
import { roles, type Role } from '@vmsave/infra/permissions';
import { connectAs, expectNoViolation, expectPublishDenied, expectSubscribeDenied, rawConnect, startPrivateNats, type PrivateNats, type RoleConnection } from './helpers.ts';

const DENIED = /permissions violation/i;
const log = createLogger('infra-test', { level: 'silent' });
const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

let nats: PrivateNats;
const as = {} as Record<Role, RoleConnection>;
const host = 'h1';
const requestId = uniq('req');
const jobId = jobIdFor('save', requestId);

beforeAll(async () => {
  nats = await startPrivateNats();
  for (const r of roles) as[r] = await connectAs(nats, r);
  // The scheduler starts first in `npm start` and creates the streams with its own permissions.
  await as.scheduler.bus.ensureStreams();
});

afterAll(async () => {
  for (const r of roles) await as[r]?.close().catch(() => undefined);
  await nats?.stop();
});

async function expectJsPublishDenied(c: RoleConnection, subject: string): Promise<void> {
  await expect(c.bus.js.publish(subject, enc({ test: true }), { timeout: 5000 })).rejects.toThrow(DENIED);
}

describe('authentication', () => {
  it('refuses a connection without credentials or with a wrong password', async () => {
    await expect(rawConnect(nats.url)).rejects.toThrow(/authorization/i);
    await expect(rawConnect(nats.url, 'client', 'wrong-password')).rejects.toThrow(/authorization/i);
    await expect(rawConnect(nats.url, 'scheduler', nats.passwords.client)).rejects.toThrow(/authorization/i);
  });

  it('accepts generated passwords that nats.conf would otherwise read as a number or a boolean', async () => {
    // Regression: `$VMSAVE_NATS_PASS_<ROLE>` is parsed as a config value; a secret starting with a
    // digit failed the server's start (about half of the generated password sets did).
    const tricky = { client: '2fXq9', scheduler: 'true', executor: '0x1F', verifier: '1e5', dashboard: '42' } satisfies Record<Role, string>;
    const other = await startPrivateNats(tricky);
    try {
      for (const r of roles) {
        const nc = await rawConnect(other.url, r, tricky[r]);
        expect(nc.info?.server_id, r).toBeTruthy();
        await nc.close();
      }
    } finally {
      await other.stop();
    }
  });

  it('every service role may create or update the streams it relies on (Bus.ensureStreams at start)', async () => {
    for (const r of ['scheduler', 'executor', 'verifier', 'dashboard'] as const) await as[r].bus.ensureStreams();
    expect((await as.dashboard.bus.jsm.streams.info(streams.commands.name)).config.subjects).toEqual([...streams.commands.subjects]);
  });
});

describe('client', () => {
  it('publishes a save request into VMSAVE_CMD, deduplicated by its request id', async () => {
    const first = await publishValidated(as.client.bus, messages.saveRequest, subjects.cmd.save, { requestId, vm: 'vm1' }, { msgId: requestId });
    expect(first.ack.stream).toBe(streams.commands.name);
    const again = await publishValidated(as.client.bus, messages.saveRequest, subjects.cmd.save, { requestId, vm: 'vm1' }, { msgId: requestId });
    expect(again.ack.duplicate).toBe(true);
  });

  it('is refused events, work, heartbeats, host announcements, progress and dead letters', async () => {
    await expectJsPublishDenied(as.client, subjects.evt(jobId, 'SaveRequested'));
    await expectJsPublishDenied(as.client, subjects.work(host));
    await expectJsPublishDenied(as.client, subjects.host(host));
    await expectJsPublishDenied(as.client, subjects.dlq('client'));
    await expectPublishDenied(as.client, subjects.heartbeat(host));
    await expectPublishDenied(as.client, subjects.progress(jobId));
    await expectPublishDenied(as.client, subjects.control(host));
  });

  it('cannot read the command or work queues, nor steal from them with a consumer', async () => {
    await expectSubscribeDenied(as.client, subjects.workAll);
    await expectSubscribeDenied(as.client, subjects.cmd.all);
    await expectSubscribeDenied(as.client, 'vmsave.ctl.*');
    await expect(as.client.bus.jsm.consumers.add(streams.commands.name, { durable_name: 'thief', ack_policy: AckPolicy.Explicit })).rejects.toThrow(DENIED);
    await expect(as.client.bus.jsm.consumers.add(streams.work.name, { name: 'thief', ack_policy: AckPolicy.Explicit, filter_subject: subjects.work(host) })).rejects.toThrow(
      DENIED,
    );
  });

  it('cannot create, delete or purge streams', async () => {
    await expect(as.client.bus.jsm.streams.delete(streams.events.name)).rejects.toThrow(DENIED);
    await expect(as.client.bus.jsm.streams.purge(streams.events.name)).rejects.toThrow(DENIED);
    await expect(as.client.bus.jsm.streams.add({ name: 'ROGUE', subjects: ['rogue.>'] })).rejects.toThrow(DENIED);
  });
});

describe('scheduler', () => {
  it('consumes commands with its durable, acks them, publishes events and work', async () => {
    const seen: SaveRequest[] = [];
    const ac = new AbortController();
    const loop = runConsumer(as.scheduler.bus, {
      stream: streams.commands.name,
      durable: 'scheduler',
      filterSubject: subjects.cmd.all,
      schema: SaveRequest,
      service: 'scheduler',
      log,
      signal: ac.signal,
      handler: async (m) => {
        seen.push(m);
        return ack();
      },
    });
    await waitFor('the client request at the scheduler', () => seen.find((m) => m.requestId === requestId));
    // Acked: the work queue removes the message.
    await waitFor('the command acked', async () => (await as.scheduler.bus.jsm.streams.info(streams.commands.name)).state.messages === 0);
    ac.abort();
    await loop;

    await publishEvent(as.scheduler.bus, makeEvent('SaveRequested', jobId, { request: SaveRequest.parse({ requestId, vm: 'vm1' }) }, { source: 'scheduler' }));
    const w = await as.scheduler.bus.js.publish(subjects.work(host), enc({ jobId }), { msgID: `${jobId}.1` });
    expect(w.stream).toBe(streams.work.name);
    expect(as.scheduler.violations).toEqual([]);
  });

  it('answers a requester on its inbox (admission replies)', async () => {
    const inbox = createInbox();
    const sub = as.client.nc.subscribe(inbox, { max: 1 });
    await as.client.nc.flush();
    as.scheduler.nc.publish(inbox, 'admitted');
    for await (const m of sub) expect(m.string()).toBe('admitted');
  });

  it('asks an executor to cancel over vmsave.ctl.<host> and gets its answer', async () => {
    const sub = as.executor.nc.subscribe(subjects.control(host), { callback: (_e, m) => void m.respond('cancelled') });
    await as.executor.nc.flush();
    const reply = await as.scheduler.nc.request(subjects.control(host), 'cancel', { timeout: 5000 });
    expect(reply.string()).toBe('cancelled');
    sub.unsubscribe();
  });

  it('is refused commands, host announcements, heartbeats and progress', async () => {
    await expectJsPublishDenied(as.scheduler, subjects.cmd.save);
    await expectJsPublishDenied(as.scheduler, subjects.host(host));
    await expectPublishDenied(as.scheduler, subjects.heartbeat(host));
    await expectPublishDenied(as.scheduler, subjects.progress(jobId));
  });
});

describe('executor', () => {
  it('consumes its work subject, extends and acks, publishes events, announcements, heartbeats, progress', async () => {
    const jsm = as.executor.bus.jsm;
    await jsm.consumers.add(streams.work.name, { durable_name: `executor-${host}`, filter_subject: subjects.work(host), ack_policy: AckPolicy.Explicit });
    const consumer = await as.executor.bus.js.consumers.get(streams.work.name, `executor-${host}`);
    const m = await consumer.next({ expires: 5000 });
    expect(m?.json()).toEqual({ jobId });
    m!.working();
    m!.working();
    expect(await m!.ackAck()).toBe(true);

    await publishEvent(
      as.executor.bus,
      makeEvent(
        'SaveStarted',
        jobId,
        { host, attempt: 1, fencingToken: 1, imagePath: '/images/vm1.vmsave', format: 'sparse', channels: 1, directIo: false, wasRunning: true, ramBytes: 1 << 20 },
        { source: 'executor' },
      ),
    );
    const h = await as.executor.bus.js.publish(subjects.host(host), enc({ host }));
    expect(h.stream).toBe(streams.hosts.name);

    const hb = as.scheduler.nc.subscribe(subjects.heartbeatAll, { max: 1 });
    const pr = as.client.nc.subscribe(subjects.progressAll, { max: 1 });
    await Promise.all([as.scheduler.nc.flush(), as.client.nc.flush()]);
    as.executor.nc.publish(subjects.heartbeat(host), 'beat');
    as.executor.nc.publish(subjects.progress(jobId), 'half');
    for await (const x of hb) expect(x.string()).toBe('beat');
    for await (const x of pr) expect(x.string()).toBe('half');
    await expectNoViolation(as.executor, subjects.heartbeat(host));
    expect(as.executor.violations).toEqual([]);
  });

  it('is refused commands, work, control requests and unsolicited inbox messages', async () => {
    await expectJsPublishDenied(as.executor, subjects.cmd.save);
    await expectJsPublishDenied(as.executor, subjects.work('h2'));
    await expectPublishDenied(as.executor, subjects.control('h2'));
    await expectPublishDenied(as.executor, '_INBOX.not-a-reply');
    await expectSubscribeDenied(as.executor, subjects.cmd.all);
    await expect(as.executor.bus.jsm.consumers.add(streams.commands.name, { durable_name: 'thief', ack_policy: AckPolicy.Explicit })).rejects.toThrow(DENIED);
  });
});

describe('verifier', () => {
  it('consumes events with a durable, acks them and publishes its verdict as events', async () => {
    await as.verifier.bus.jsm.consumers.add(streams.events.name, {
      durable_name: 'verifier',
      filter_subject: subjects.evtOfJob(jobId),
      ack_policy: AckPolicy.Explicit,
    });
    const consumer = await as.verifier.bus.js.consumers.get(streams.events.name, 'verifier');
    const m = await consumer.next({ expires: 5000 });
    expect(m?.subject).toBe(subjects.evt(jobId, 'SaveRequested'));
    expect(await m!.ackAck()).toBe(true);
    const a = await publishEvent(as.verifier.bus, makeEvent('ImageVerified', jobId, { imagePath: '/images/vm1.vmsave', host, checks: [] }, { source: 'verifier' }));
    expect(a.stream).toBe(streams.events.name);
  });

  it("reads host announcements (what each host's QEMU supports)", async () => {
    const hosts = await as.verifier.bus.js.consumers.get(streams.hosts.name, { deliver_policy: DeliverPolicy.LastPerSubject });
    expect((await hosts.next({ expires: 5000 }))?.subject).toBe(subjects.host(host));
  });

  it('is refused work, commands, heartbeats and the work queue', async () => {
    await expectJsPublishDenied(as.verifier, subjects.work(host));
    await expectJsPublishDenied(as.verifier, subjects.cmd.save);
    await expectPublishDenied(as.verifier, subjects.heartbeat(host));
    await expect(as.verifier.bus.jsm.consumers.add(streams.work.name, { durable_name: 'thief', ack_policy: AckPolicy.Explicit })).rejects.toThrow(DENIED);
  });
});

describe('dashboard', () => {
  it('reads the event log, host announcements, dead letters, heartbeats and progress', async () => {
    const logged = [];
    for await (const e of readLog(as.dashboard.bus, { filter: subjects.evtOfJob(jobId) })) logged.push(e);
    expect(logged.map((e) => e.event.type)).toContain('SaveRequested');

    const hosts = await as.dashboard.bus.js.consumers.get(streams.hosts.name, { deliver_policy: DeliverPolicy.LastPerSubject });
    expect((await hosts.next({ expires: 5000 }))?.subject).toBe(subjects.host(host));
    await as.dashboard.bus.js.consumers.get(streams.deadLetters.name);

    const hb = as.dashboard.nc.subscribe(subjects.heartbeatAll, { max: 1 });
    const pr = as.dashboard.nc.subscribe(subjects.progressAll, { max: 1 });
    await as.dashboard.nc.flush();
    as.executor.nc.publish(subjects.heartbeat(host), 'beat');
    as.executor.nc.publish(subjects.progress(jobId), 'half');
    for await (const x of hb) expect(x.string()).toBe('beat');
    for await (const x of pr) expect(x.string()).toBe('half');
    expect(as.dashboard.violations).toEqual([]);
  });

  it('is refused events, commands, work, control, and deleting anything', async () => {
    await expectJsPublishDenied(as.dashboard, subjects.evt(jobId, 'SaveCompleted'));
    await expectJsPublishDenied(as.dashboard, subjects.cmd.cancel);
    await expectJsPublishDenied(as.dashboard, subjects.work(host));
    await expectPublishDenied(as.dashboard, subjects.control(host));
    await expectSubscribeDenied(as.dashboard, subjects.workAll);
    await expect(as.dashboard.bus.jsm.streams.delete(streams.events.name)).rejects.toThrow(DENIED);
    await expect(as.dashboard.bus.jsm.consumers.delete(streams.events.name, 'verifier')).rejects.toThrow(DENIED);
    await expect(as.dashboard.bus.jsm.consumers.add(streams.commands.name, { durable_name: 'thief', ack_policy: AckPolicy.Explicit })).rejects.toThrow(DENIED);
  });
});

describe('the server log', () => {
  it('names the user and subject of each refusal (what an operator greps for)', () => {
    expect(nats.server.output()).toMatch(/\[ERR\].*Violation.*User "dashboard"/);
  });
});
