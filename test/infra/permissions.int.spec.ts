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
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AckPolicy, DeliverPolicy } from '@nats-io/jetstream';
import { EVENT_PUBLISHERS, SaveRequest, jobEventTypes, jobIdFor, makeEvent, messages, streams, subjects } from '@vmsave/contracts';
import { ack, createLogger, eventsOfJob, publishEvent, publishValidated, readLog, runConsumer } from '@vmsave/bus';
import { uniq, waitFor } from '@vmsave/testkit';
import { executorUser, roles, type Role } from '@vmsave/infra/permissions';
import { generateSecret } from '@vmsave/infra/servers';
import { connectAs, expectNoViolation, expectPublishDenied, expectSubscribeDenied, rawConnect, startPrivateNats, type PrivateNats, type RoleConnection } from './helpers.ts';

const DENIED = /permissions violation/i;
const log = createLogger('infra-test', { level: 'silent' });
const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

let nats: PrivateNats;
/** One connection per role; `as.executor` is the executor of `host`, connected as its own user `executor-h1`. */
const as = {} as Record<Role, RoleConnection>;
const host = 'h1';
/** Another executor host, `executor-h2`: what host h1's executor must not touch. */
const hostB = 'h2';
let exB: RoleConnection;
const requestId = uniq('req');
const jobId = jobIdFor('save', requestId);

beforeAll(async () => {
  // The configuration npm start renders: one user per executor host, no shared `executor`.
  nats = await startPrivateNats(undefined, { [host]: generateSecret(64), [hostB]: generateSecret(64) });
  for (const r of roles) as[r] = await connectAs(nats, r, r === 'executor' ? host : undefined);
  exB = await connectAs(nats, 'executor', hostB);
  // The scheduler starts first in `npm start` and creates the streams with its own permissions.
  await as.scheduler.bus.ensureStreams();
});

afterAll(async () => {
  for (const r of roles) await as[r]?.close().catch(() => undefined);
  await exB?.close().catch(() => undefined);
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

  it('the checked-in template (docker compose) has the shared executor user, with its own private inbox, and no host user', async () => {
    const tpl = await startPrivateNats();
    const conns: RoleConnection[] = [];
    try {
      const sched = await connectAs(tpl, 'scheduler');
      const ex = await connectAs(tpl, 'executor');
      conns.push(sched, ex);
      await sched.bus.ensureStreams();
      await sched.bus.js.publish(subjects.work('any-host'), enc({ jobId }), { msgID: uniq('w') });
      await ex.bus.jsm.consumers.add(streams.work.name, { durable_name: 'executor-any-host', filter_subject: subjects.work('any-host'), ack_policy: AckPolicy.Explicit });
      const msg = await (await ex.bus.js.consumers.get(streams.work.name, 'executor-any-host')).next({ expires: 5000 });
      expect(await msg!.ackAck()).toBe(true);
      expect(ex.bus.newInbox()).toMatch(/^_INBOX\.executor\./);
      await expectSubscribeDenied(ex, '_INBOX.>');
      expect(ex.violations.filter((v) => v.subject !== '_INBOX.>')).toEqual([]);
      await expect(rawConnect(tpl.url, executorUser('any-host'), 'x')).rejects.toThrow(/authorization/i);
    } finally {
      for (const c of conns) await c.close().catch(() => undefined);
      await tpl.stop();
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
    // It may publish control requests (`vmsave images prune` asks an executor), never read them.
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

  it("answers a requester on its private inbox (admission replies on the client's `_INBOX.client.<nuid>`)", async () => {
    const inbox = as.client.bus.newInbox();
    expect(inbox).toMatch(/^_INBOX\.client\.[A-Za-z0-9]+$/);
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

describe('one executor user per host (issue 14): executor-h1 against host h2', () => {
  it("cannot consume host h2's work: not through h2's durable, nor its own durable pointed at h2's subject, nor an ephemeral", async () => {
    await as.scheduler.bus.js.publish(subjects.work(hostB), enc({ jobId: 'for-h2' }), { msgID: uniq('w') });
    const jsm = as.executor.bus.jsm;
    const cfg = { ack_policy: AckPolicy.Explicit, filter_subject: subjects.work(hostB) };
    await expect(jsm.consumers.add(streams.work.name, { ...cfg, durable_name: executorUser(hostB) }), 'h2 durable').rejects.toThrow(DENIED);
    await expect(jsm.consumers.add(streams.work.name, { ...cfg, durable_name: executorUser(host) }), 'own name, h2 filter').rejects.toThrow(DENIED);
    await expect(jsm.consumers.add(streams.work.name, { ...cfg, name: uniq('eph') }), 'ephemeral').rejects.toThrow(DENIED);
    // The old API and the subject without a filter take the filter from the body only: not granted.
    const body = { stream_name: streams.work.name, config: { ...cfg, durable_name: executorUser(host) } };
    expect(await requestAllowed(as.executor, `$JS.API.CONSUMER.DURABLE.CREATE.${streams.work.name}.${executorUser(host)}`, body)).toBe(false);
    expect(await requestAllowed(as.executor, `$JS.API.CONSUMER.CREATE.${streams.work.name}.${executorUser(host)}`, body)).toBe(false);
    // The granted subject names h1's filter; a body naming h2's is refused by the server itself.
    const r = await as.executor.nc.request(`$JS.API.CONSUMER.CREATE.${streams.work.name}.${executorUser(host)}.${subjects.work(host)}`, JSON.stringify(body), { timeout: 5000 });
    expect(JSON.stringify(r.json()), 'filter mismatch').toMatch(/"error".*filter/i);
    expect((await jsm.consumers.info(streams.work.name, executorUser(host))).config.filter_subject).toBe(subjects.work(host));
    // Nor can it read h2's durable, pull from it or ack on it.
    await exB.bus.jsm.consumers.add(streams.work.name, { ...cfg, durable_name: executorUser(hostB) });
    expect(await requestAllowed(as.executor, `$JS.API.CONSUMER.INFO.${streams.work.name}.${executorUser(hostB)}`)).toBe(false);
    expect(await requestAllowed(as.executor, `$JS.API.CONSUMER.MSG.NEXT.${streams.work.name}.${executorUser(hostB)}`, { batch: 1, expires: 1_000_000_000 })).toBe(false);
    await expectPublishDenied(as.executor, `$JS.ACK.${streams.work.name}.${executorUser(hostB)}.1.1.1.1.0`);
    // h2's executor gets its work.
    const m = await (await exB.bus.js.consumers.get(streams.work.name, executorUser(hostB))).next({ expires: 5000 });
    expect(m?.json()).toEqual({ jobId: 'for-h2' });
    expect(await m!.ackAck()).toBe(true);
    expect(exB.violations).toEqual([]);
  });

  it("cannot announce host h2, beat for it, or hear h2's control requests; h2's own executor can", async () => {
    await expectJsPublishDenied(as.executor, subjects.host(hostB));
    await expectPublishDenied(as.executor, subjects.heartbeat(hostB));
    await expectSubscribeDenied(as.executor, subjects.control(hostB));
    await expectSubscribeDenied(as.executor, subjects.controlAll);
    expect((await exB.bus.js.publish(subjects.host(hostB), enc({ host: hostB }))).stream).toBe(streams.hosts.name);
    const hb = as.scheduler.nc.subscribe(subjects.heartbeat(hostB), { max: 1 });
    await as.scheduler.nc.flush();
    exB.nc.publish(subjects.heartbeat(hostB), 'beat-h2');
    for await (const x of hb) expect(x.string()).toBe('beat-h2');
    const ctl = exB.nc.subscribe(subjects.control(hostB), { callback: (_e, msg) => void msg.respond('h2 cancelled') });
    await exB.nc.flush();
    expect((await as.scheduler.nc.request(subjects.control(hostB), 'cancel', { timeout: 5000 })).string()).toBe('h2 cancelled');
    ctl.unsubscribe();
    expect(exB.violations).toEqual([]);
  });

  it('cannot log in as another host with its own password', async () => {
    await expect(rawConnect(nats.url, executorUser(hostB), nats.executors[host])).rejects.toThrow(/authorization/i);
    // npm start's configuration has no shared `executor` user.
    await expect(rawConnect(nats.url, 'executor', nats.passwords.executor)).rejects.toThrow(/authorization/i);
  });
});

describe('private inbox prefixes (issue 14)', () => {
  it('every connection makes its inboxes under `_INBOX.<its user>`', () => {
    for (const r of roles) expect(as[r].bus.newInbox().startsWith(`_INBOX.${as[r].user}.`), r).toBe(true);
    expect(exB.bus.newInbox()).toMatch(/^_INBOX\.executor-h2\./);
  });

  it("no user may subscribe to `_INBOX.>` or to another user's prefix", async () => {
    for (const r of roles) {
      await expectSubscribeDenied(as[r], '_INBOX.>');
      for (const other of roles.filter((x) => x !== r)) await expectSubscribeDenied(as[r], `_INBOX.${as[other].user}.>`);
    }
    await expectSubscribeDenied(as.executor, `_INBOX.${exB.user}.>`);
  });

  it("a client cannot read the answers of another user's request, and the scheduler's answer still reaches the client", async () => {
    // A JetStream API answer to the dashboard lands on its own prefix, which the client cannot subscribe.
    await expectSubscribeDenied(as.client, '_INBOX.dashboard.*');
    expect((await as.dashboard.bus.jsm.streams.info(streams.events.name)).config.name).toBe(streams.events.name);
    const inbox = as.client.bus.newInbox();
    const sub = as.client.nc.subscribe(inbox, { max: 1 });
    await as.client.nc.flush();
    as.scheduler.nc.publish(inbox, 'admitted');
    for await (const x of sub) expect(x.string()).toBe('admitted');
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
    // Its second durable, for the verdict watchdog's VerificationOverdue.
    await as.verifier.bus.jsm.consumers.add(streams.events.name, {
      durable_name: 'verifier-overdue',
      filter_subject: subjects.evtOfType('VerificationOverdue'),
      ack_policy: AckPolicy.Explicit,
    });
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
    const before = as.dashboard.violations.length;
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
    expect(as.dashboard.violations.slice(before)).toEqual([]);
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

/** A JetStream API request: answered (allowed, whatever the answer says) or refused by the server. */
async function requestAllowed(c: RoleConnection, subject: string, body?: unknown): Promise<boolean> {
  try {
    await c.nc.request(subject, body === undefined ? '' : JSON.stringify(body), { timeout: 5000 });
    return true;
  } catch (err) {
    if (DENIED.test(String((err as Error)?.message))) return false;
    throw err;
  }
}

/** A core publish: refused when the server reports a violation for it (checked after a round trip). */
async function publishAllowed(c: RoleConnection, subject: string): Promise<boolean> {
  const before = c.violations.length;
  c.nc.publish(subject, 'x');
  await c.nc.flush();
  await new Promise((r) => setTimeout(r, 30));
  return !c.violations.slice(before).some((v) => v.operation === 'publish' && v.subject === subject);
}

async function subscribeAllowed(c: RoleConnection, subject: string): Promise<boolean> {
  const before = c.violations.length;
  const sub = c.nc.subscribe(subject);
  await c.nc.flush();
  await new Promise((r) => setTimeout(r, 30));
  sub.unsubscribe();
  return !c.violations.slice(before).some((v) => v.operation === 'subscription' && v.subject === subject);
}

const EVT = streams.events.name;
const verifierDurable = () => as.verifier.bus.jsm.consumers.info(EVT, 'verifier');

describe('the attacks of issue 14, as every role', () => {
  it('no role but the verifier can switch verification off by updating its durable (headers_only), by any API subject', async () => {
    const cfg = (await verifierDurable()).config;
    const hostile = { ...cfg, headers_only: true };
    for (const r of roles.filter((x) => x !== 'verifier')) {
      const c = as[r];
      // What the issue did, through nats.js: create = update on NATS 2.9.
      await expect(c.bus.jsm.consumers.add(EVT, hostile), r).rejects.toThrow(DENIED);
      await expect(c.bus.jsm.consumers.update(EVT, 'verifier', { headers_only: true }), r).rejects.toThrow(DENIED);
      // The bare CONSUMER.CREATE.<stream> with config.name updates a durable on 2.9.10: not granted to anyone.
      expect(await requestAllowed(c, `$JS.API.CONSUMER.CREATE.${EVT}`, { stream_name: EVT, config: { ...hostile, durable_name: undefined, name: 'verifier' } }), r).toBe(false);
      // The old API.
      expect(await requestAllowed(c, `$JS.API.CONSUMER.DURABLE.CREATE.${EVT}.verifier`, { stream_name: EVT, config: hostile }), r).toBe(false);
    }
    expect((await verifierDurable()).config.headers_only).toBeFalsy();
    for (const r of roles.filter((x) => x !== 'verifier')) {
      await expect(as[r].bus.jsm.consumers.update(EVT, 'verifier-overdue', { headers_only: true }), r).rejects.toThrow(DENIED);
    }
    expect((await as.verifier.bus.jsm.consumers.info(EVT, 'verifier-overdue')).config.headers_only).toBeFalsy();
  });

  it('no role but the scheduler can reconfigure the scheduler durable on the command queue', async () => {
    for (const r of roles.filter((x) => x !== 'scheduler')) {
      await expect(as[r].bus.jsm.consumers.update(streams.commands.name, 'scheduler', { headers_only: true }), r).rejects.toThrow(DENIED);
    }
    expect((await as.scheduler.bus.jsm.consumers.info(streams.commands.name, 'scheduler')).config.headers_only).toBeFalsy();
  });

  it('no role but the verifier can publish a verdict (executor, scheduler, client, dashboard all refused)', async () => {
    const forged = makeEvent('ImageVerified', jobId, { imagePath: '/images/vm1.vmsave', host, checks: [] }, { source: 'verifier' });
    for (const r of roles.filter((x) => x !== 'verifier')) {
      await expect(publishEvent(as[r].bus, forged), r).rejects.toThrow(DENIED);
      await expect(publishEvent(as[r].bus, { ...forged, type: 'ImageRejected' } as never), r).rejects.toThrow(DENIED);
    }
  });

  it('each service publishes only its own event types', async () => {
    await expectJsPublishDenied(as.executor, subjects.evt(jobId, 'SaveScheduled'));
    await expectJsPublishDenied(as.executor, subjects.evt(jobId, 'SaveRetrying'));
    await expectJsPublishDenied(as.scheduler, subjects.evt(jobId, 'SaveCompleted'));
    await expectJsPublishDenied(as.scheduler, subjects.evt(jobId, 'RestoreStarted'));
    await expectJsPublishDenied(as.verifier, subjects.evt(jobId, 'SaveCompleted'));
    await expectJsPublishDenied(as.verifier, subjects.evt(jobId, 'SaveRequested'));
    // A subject that is no event type of anyone.
    await expectJsPublishDenied(as.scheduler, `vmsave.evt.${jobId}.Anything`);
    await expectJsPublishDenied(as.executor, `vmsave.evt.${jobId}.x.y`);
  });
});

describe('the log reader', () => {
  it('never returns an event the server let in but whose source may not emit it, or whose subject is not its own', async () => {
    const j = jobIdFor('save', uniq('forged'));
    await publishEvent(as.scheduler.bus, makeEvent('SaveRequested', j, { request: SaveRequest.parse({ requestId: uniq('f'), vm: 'vm1' }) }, { source: 'scheduler' }));
    const verdict = { imagePath: '/images/vm1.vmsave', host, checks: [] };
    // The verifier's user may publish ImageVerified, but not in the executor's name.
    await publishEvent(as.verifier.bus, makeEvent('ImageVerified', j, verdict, { source: 'executor' }));
    // A verdict on the subject of another verdict type.
    await as.verifier.bus.js.publish(subjects.evt(j, 'ImageRejected'), enc(makeEvent('ImageVerified', j, verdict, { source: 'verifier' })));
    const refused: string[] = [];
    const got = await eventsOfJob(as.client.bus, j, { onRefused: (_seq, reason) => refused.push(reason) });
    expect(got.map((e) => e.event.type)).toEqual(['SaveRequested']);
    expect(refused).toEqual([
      expect.stringMatching(/^source: "executor" \(role executor\) may not publish ImageVerified; only verifier/),
      expect.stringMatching(/^type: "ImageVerified" differs from the subject's type token "ImageRejected"/),
    ]);
  });
});

type Family = 'core' | 'events' | 'JetStream API';
interface MatrixRow {
  family: Family;
  what: string;
  allowed: readonly Role[];
  check: (c: RoleConnection, r: Role) => Promise<boolean>;
}

const ALL: readonly Role[] = roles;
const SERVICES: readonly Role[] = ['scheduler', 'executor', 'verifier', 'dashboard'];
const m = () => uniq('m').replace(/[^A-Za-z0-9_-]/g, '');
const ephemeral = (stream: string, name: string) => ({
  stream_name: stream,
  config: { name, ack_policy: 'none', deliver_policy: 'last', mem_storage: true, num_replicas: 1, inactive_threshold: 5_000_000_000 },
});

function matrixRows(): MatrixRow[] {
  const pub = (what: string, subject: () => string, allowed: readonly Role[], family: Family = 'core'): MatrixRow => ({
    family,
    what,
    allowed,
    check: (c) => publishAllowed(c, subject()),
  });
  const sub = (subject: string, allowed: readonly Role[]): MatrixRow => ({ family: 'core', what: `subscribe \`${subject}\``, allowed, check: (c) => subscribeAllowed(c, subject) });
  const api = (what: string, allowed: readonly Role[], run: (c: RoleConnection, r: Role) => Promise<boolean>): MatrixRow => ({
    family: 'JetStream API',
    what,
    allowed,
    check: run,
  });
  const rows: MatrixRow[] = [
    pub('publish `vmsave.cmd.save` (a command)', () => subjects.cmd.save, ['client']),
    pub('publish `vmsave.work.<host>`', () => subjects.work(m()), ['scheduler']),
    pub('publish `vmsave.ctl.<host>`', () => subjects.control(m()), ['client', 'scheduler']),
    pub('publish `vmsave.host.<own host>` (executor: `h1`)', () => subjects.host(host), ['executor']),
    pub('publish `vmsave.host.<another host>`', () => subjects.host(m()), []),
    pub('publish `vmsave.hb.<own host>`', () => subjects.heartbeat(host), ['executor']),
    pub('publish `vmsave.hb.<another host>`', () => subjects.heartbeat(m()), []),
    pub('publish `vmsave.progress.<job>`', () => subjects.progress(m()), ['executor']),
    pub('publish `vmsave.dlq.<service>`', () => subjects.dlq(m()), SERVICES),
    pub('publish `_INBOX.<x>` (not a reply)', () => `_INBOX.${m()}`, ['scheduler']),
    pub('ack on `VMSAVE_CMD` (`$JS.ACK.VMSAVE_CMD.…`)', () => `$JS.ACK.${streams.commands.name}.scheduler.1.1.1.1.0`, ['scheduler']),
    pub('ack on `VMSAVE_WORK`, own durable `executor-<own host>`', () => `$JS.ACK.${streams.work.name}.${executorUser(host)}.1.1.1.1.0`, ['executor']),
    pub("ack on `VMSAVE_WORK`, another host's durable", () => `$JS.ACK.${streams.work.name}.${executorUser(m())}.1.1.1.1.0`, []),
    pub('ack on `VMSAVE_EVT`', () => `$JS.ACK.${EVT}.verifier.1.1.1.1.0`, ['verifier']),
    ...jobEventTypes.map((t) => pub(`publish \`vmsave.evt.<job>.${t}\``, () => subjects.evt(jobIdFor('save', m()), t), EVENT_PUBLISHERS[t] as readonly Role[], 'events')),
    pub('publish `vmsave.evt.<job>.<not a type>`', () => `vmsave.evt.${jobIdFor('save', m())}.Forged`, [], 'events'),
    sub('vmsave.evt.>', ['client', 'scheduler', 'verifier', 'dashboard']),
    sub('vmsave.progress.*', ['client', 'dashboard']),
    sub('vmsave.hb.*', ['scheduler', 'dashboard']),
    sub('vmsave.host.*', ['dashboard']),
    { ...sub(subjects.control(host), ['executor']), what: 'subscribe `vmsave.ctl.<own host>`' },
    { ...sub('vmsave.ctl.<another host>', []), check: (c) => subscribeAllowed(c, subjects.control(m())) },
    sub('vmsave.ctl.*', []),
    sub('vmsave.cmd.>', []),
    sub('vmsave.work.*', []),
    sub('vmsave.dlq.*', []),
    sub('_INBOX.>', []),
    { family: 'core', what: 'subscribe `_INBOX.<own user>.>` (private inbox prefix)', allowed: ALL, check: (c) => subscribeAllowed(c, `_INBOX.${c.user}.>`) },
    {
      family: 'core',
      what: "subscribe another user's `_INBOX.<user>.>`",
      allowed: [],
      check: async (c) => {
        for (const other of [...roles.map((r) => as[r].user), exB.user].filter((u) => u !== c.user)) if (await subscribeAllowed(c, `_INBOX.${other}.>`)) return true;
        return false;
      },
    },
  ];
  const streamsRead: [string, readonly Role[]][] = [
    [streams.commands.name, ['scheduler']],
    [streams.work.name, []],
    [EVT, ALL],
    [streams.hosts.name, ['client', 'scheduler', 'verifier', 'dashboard']],
    [streams.deadLetters.name, ['dashboard']],
  ];
  for (const [stream, allowed] of streamsRead) {
    rows.push(
      api(`create an ephemeral consumer on \`${stream}\``, allowed, (c) => {
        const name = m();
        return requestAllowed(c, `$JS.API.CONSUMER.CREATE.${stream}.${name}`, ephemeral(stream, name));
      }),
    );
  }
  const hostileVerifier = async (r: Role) => {
    const cfg = (await verifierDurable()).config;
    // The owner re-sends its own configuration (a no-op); everyone else tries to switch it off.
    return r === 'verifier' ? cfg : { ...cfg, headers_only: true };
  };
  const ownWork = (h: string, filterHost = h) => ({
    stream_name: streams.work.name,
    config: { durable_name: executorUser(h), ack_policy: 'explicit', filter_subject: subjects.work(filterHost), mem_storage: true },
  });
  rows.push(
    api('create/update its work durable `executor-<own host>` on `VMSAVE_WORK` (filter in the subject)', ['executor'], (c) =>
      requestAllowed(c, `$JS.API.CONSUMER.CREATE.${streams.work.name}.${executorUser(host)}.${subjects.work(host)}`, ownWork(host)),
    ),
    api("create another host's work durable (`executor-h2` on `vmsave.work.h2`)", [], (c) =>
      requestAllowed(c, `$JS.API.CONSUMER.CREATE.${streams.work.name}.${executorUser(hostB)}.${subjects.work(hostB)}`, ownWork(hostB)),
    ),
    api('create `executor-<own host>` filtered on another host (`.executor-h1.vmsave.work.h2`)', [], (c) =>
      requestAllowed(c, `$JS.API.CONSUMER.CREATE.${streams.work.name}.${executorUser(host)}.${subjects.work(hostB)}`, ownWork(host, hostB)),
    ),
    api('create `executor-<own host>` without the filter in the subject, or by the old API', [], async (c) => {
      const a = await requestAllowed(c, `$JS.API.CONSUMER.CREATE.${streams.work.name}.${executorUser(host)}`, ownWork(host, hostB));
      const b = await requestAllowed(c, `$JS.API.CONSUMER.DURABLE.CREATE.${streams.work.name}.${executorUser(host)}`, ownWork(host, hostB));
      return a || b;
    }),
    api('create a durable with an unused name on `VMSAVE_EVT` (see the limits above)', ALL, (c) => {
      const name = m();
      return requestAllowed(c, `$JS.API.CONSUMER.CREATE.${EVT}.${name}`, {
        stream_name: EVT,
        config: { durable_name: name, ack_policy: 'explicit', mem_storage: true, inactive_threshold: 5_000_000_000 },
      });
    }),
    api('update the `verifier` durable (`CONSUMER.CREATE.VMSAVE_EVT.verifier.<filter>`)', ['verifier'], async (c, r) => {
      const cfg = await hostileVerifier(r);
      return requestAllowed(c, `$JS.API.CONSUMER.CREATE.${EVT}.verifier.${cfg.filter_subject}`, { stream_name: EVT, config: cfg });
    }),
    api('update the `verifier` durable (bare `CONSUMER.CREATE.VMSAVE_EVT`, `config.name`)', [], async (c, r) => {
      const cfg = await hostileVerifier(r);
      return requestAllowed(c, `$JS.API.CONSUMER.CREATE.${EVT}`, { stream_name: EVT, config: { ...cfg, durable_name: undefined, name: 'verifier' } });
    }),
    api('update the `verifier` durable (old API `CONSUMER.DURABLE.CREATE`)', ['verifier'], async (c, r) =>
      requestAllowed(c, `$JS.API.CONSUMER.DURABLE.CREATE.${EVT}.verifier`, { stream_name: EVT, config: await hostileVerifier(r) }),
    ),
    api('update the `scheduler` durable on `VMSAVE_CMD`', ['scheduler'], async (c, r) => {
      const cfg = (await as.scheduler.bus.jsm.consumers.info(streams.commands.name, 'scheduler')).config;
      const body = { stream_name: streams.commands.name, config: r === 'scheduler' ? cfg : { ...cfg, headers_only: true } };
      return requestAllowed(c, `$JS.API.CONSUMER.CREATE.${streams.commands.name}.scheduler.${cfg.filter_subject}`, body);
    }),
    api('delete a consumer', [], (c) => requestAllowed(c, `$JS.API.CONSUMER.DELETE.${EVT}.verifier`)),
    api('update a stream (`VMSAVE_EVT`, its own configuration)', SERVICES, async (c) =>
      requestAllowed(c, `$JS.API.STREAM.UPDATE.${EVT}`, (await as.scheduler.bus.jsm.streams.info(EVT)).config),
    ),
    api('create another stream', [], (c) => requestAllowed(c, `$JS.API.STREAM.CREATE.${m()}`, { name: 'ROGUE', subjects: ['rogue.>'] })),
    api('purge `VMSAVE_EVT`', [], (c) => requestAllowed(c, `$JS.API.STREAM.PURGE.${EVT}`, {})),
    api('delete the stream `VMSAVE_DLQ`', [], (c) => requestAllowed(c, `$JS.API.STREAM.DELETE.${streams.deadLetters.name}`)),
    api('delete a message of `VMSAVE_EVT`', [], (c) => requestAllowed(c, `$JS.API.STREAM.MSG.DELETE.${EVT}`, { seq: 1 })),
    api('get a message (`STREAM.MSG.GET`)', [], (c) => requestAllowed(c, `$JS.API.STREAM.MSG.GET.${EVT}`, { seq: 1 })),
    api('direct get (`DIRECT.GET.VMSAVE_EVT`)', [], (c) => requestAllowed(c, `$JS.API.DIRECT.GET.${EVT}`, { seq: 1 })),
  );
  return rows;
}

const BEGIN = '<!-- permission-matrix:begin (written by test/infra/permissions.int.spec.ts with VMSAVE_WRITE_DOCS=1) -->';
const END = '<!-- permission-matrix:end -->';

describe('the permission matrix (every role × subject family × publish/subscribe/JetStream API)', () => {
  it('allows and refuses exactly as documented', async () => {
    const rows = matrixRows();
    const results: { row: MatrixRow; got: Record<Role, boolean> }[] = [];
    const wrong: string[] = [];
    for (const row of rows) {
      const got = {} as Record<Role, boolean>;
      for (const r of roles) {
        got[r] = await row.check(as[r], r);
        if (got[r] !== row.allowed.includes(r)) wrong.push(`${r}: ${row.what}: expected ${row.allowed.includes(r) ? 'allowed' : 'refused'}, was ${got[r] ? 'allowed' : 'refused'}`);
      }
      results.push({ row, got });
    }
    expect(wrong).toEqual([]);
    // Nothing above changed a service's durable.
    expect((await verifierDurable()).config.headers_only).toBeFalsy();

    const doc = new URL('../../docs/operations.md', import.meta.url);
    const text = readFileSync(doc, 'utf8');
    expect(text.includes(BEGIN) && text.includes(END), 'docs/operations.md has the matrix markers').toBe(true);
    if (process.env.VMSAVE_WRITE_DOCS === '1') {
      const table = [
        `| family | what | ${roles.map((r) => `\`${as[r].user}\``).join(' | ')} |`,
        `|---|---|${roles.map(() => ':-:').join('|')}|`,
        ...results.map(({ row, got }) => `| ${row.family} | ${row.what} | ${roles.map((r) => (got[r] ? 'allowed' : '—')).join(' | ')} |`),
      ];
      const before = text.slice(0, text.indexOf(BEGIN) + BEGIN.length);
      const after = text.slice(text.indexOf(END));
      writeFileSync(doc, `${before}\n${table.join('\n')}\n${after}`);
    }
  });
});
