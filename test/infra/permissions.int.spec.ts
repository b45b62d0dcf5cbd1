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
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AckPolicy, DeliverPolicy, DiscardPolicy, StorageType } from '@nats-io/jetstream';
import { headers } from '@nats-io/nats-core';
import {
  EVENT_PUBLISHERS,
  SaveRequest,
  commandFilters,
  imageBucket,
  jobEventTypes,
  jobIdFor,
  makeEvent,
  messages,
  objectStoreSubjects,
  streams,
  subjects,
} from '@vmsave/contracts';
import { ack, createLogger, directGet, eventsOfJob, publishEvent, publishValidated, readHosts, readLog, runConsumer } from '@vmsave/bus';
import { lines, runNode, uniq, waitFor } from '@vmsave/testkit';
import { VmsaveClient } from '@vmsave/client';
import { REPO_ROOT } from '@vmsave/infra/servers';
import { executorUser, roles, type Role } from '@vmsave/infra/permissions';
import { generateSecret } from '@vmsave/infra/servers';
import { connectAs, expectNoViolation, expectPublishDenied, expectSubscribeDenied, rawConnect, startPrivateNats, type PrivateNats, type RoleConnection } from './helpers.ts';

const DENIED = /permissions violation/i;
/** The real `vmsave` command, run from its sources (as test/e2e does). */
const VMSAVE_BIN = join(REPO_ROOT, 'packages', 'cli', 'bin', 'vmsave.js');
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

  it('reads the log and the hosts without any consumer (direct get, core subscription): every consumer create is refused', async () => {
    const before = as.client.violations.length;
    const j = jobIdFor('save', uniq('direct'));
    const req = SaveRequest.parse({ requestId: uniq('d'), vm: 'vm1' });
    await publishEvent(as.scheduler.bus, makeEvent('SaveRequested', j, { request: req }, { source: 'scheduler' }));
    expect((await eventsOfJob(as.client.bus, j)).map((e) => e.event.type)).toEqual(['SaveRequested']);
    // Following: history, then a live event.
    const ac = new AbortController();
    const seen: string[] = [];
    const follow = (async () => {
      for await (const { event } of readLog(as.client.bus, { filter: subjects.evtOfJob(j), follow: true, signal: ac.signal })) {
        seen.push(event.type);
        if (seen.length === 2) ac.abort();
      }
    })();
    await waitFor('the history event', () => seen.length === 1);
    await publishEvent(as.scheduler.bus, makeEvent('SaveRejected', j, { rule: 'vm-exists', field: 'vm', message: 'no VM vm1' }, { source: 'scheduler' }));
    await follow;
    expect(seen).toEqual(['SaveRequested', 'SaveRejected']);
    const all: number[] = [];
    for await (const e of readLog(as.client.bus)) all.push(e.seq);
    expect(all.length).toBeGreaterThanOrEqual(2);
    for await (const _ of readHosts(as.client.bus)) break;
    expect(as.client.violations.slice(before)).toEqual([]);
    // The old way of reading, an ordered consumer, is refused; so is any consumer on any stream.
    await expect(readLog(as.client.bus, { via: 'consumer', filter: subjects.evtOfJob(j) }).next()).rejects.toThrow(DENIED);
    for (const stream of [streams.events.name, streams.hosts.name, streams.deadLetters.name]) {
      const name = m();
      expect(await requestAllowed(as.client, `$JS.API.CONSUMER.CREATE.${stream}.${name}`, ephemeral(stream, name)), stream).toBe(false);
      expect(
        await requestAllowed(as.client, `$JS.API.CONSUMER.CREATE.${stream}.${name}`, { stream_name: stream, config: { durable_name: name, ack_policy: 'explicit' } }),
        stream,
      ).toBe(false);
    }
  });

  // Three CLI processes from source: well over vitest's default 5 s on a loaded machine.
  it('the client library (history, waitForJob) and the CLI (`vmsave job`, `vmsave watch`, `vmsave jobs` from the log) work as the client user', { timeout: 120_000 }, async () => {
    const before = as.client.violations.length;
    const j = jobIdFor('save', uniq('cli'));
    const req = SaveRequest.parse({ requestId: uniq('c'), vm: 'vm1' });
    await publishEvent(as.scheduler.bus, makeEvent('SaveRequested', j, { request: req }, { source: 'scheduler' }));
    const client = new VmsaveClient(as.client.bus);
    const waiting = client.waitForJob(j, { timeoutMs: 30_000 });
    await new Promise((r) => setTimeout(r, 200));
    await publishEvent(as.scheduler.bus, makeEvent('SaveRejected', j, { rule: 'vm-exists', field: 'vm', message: 'no VM vm1' }, { source: 'scheduler' }));
    expect((await waiting).status).toBe('rejected');
    expect((await client.history(j)).map((e) => e.type)).toEqual(['SaveRequested', 'SaveRejected']);
    expect(as.client.violations.slice(before)).toEqual([]);

    const env = {
      VMSAVE_CLI_FROM_SOURCE: '1',
      NATS_URL: nats.url,
      NATS_USER: 'client',
      NATS_PASS: nats.passwords.client,
      REDIS_URL: 'redis://127.0.0.1:1',
      VMSAVE_LOG_LEVEL: 'warn',
    };
    const cli = (args: string[]) => runNode(VMSAVE_BIN, args, { env, timeoutMs: 60_000 });
    const shown = await cli(['job', j, '--json']);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.json<{ events: { type: string }[] }>().events.map((e) => e.type)).toEqual(['SaveRequested', 'SaveRejected']);
    const watched = await cli(['watch', '--job', j, '--from-start', '--count', '2', '--json']);
    expect(watched.code, watched.stderr).toBe(0);
    expect(lines(watched.stdout).map((l) => JSON.parse(l).event.type)).toEqual(['SaveRequested', 'SaveRejected']);
    expect(watched.stderr).not.toMatch(/violation/i);
    const listed = await cli(['jobs', '--json', '--limit', '100000']);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.json<{ source: string; jobs: { jobId: string; status: string }[] }>()).toMatchObject({
      source: 'log',
      jobs: expect.arrayContaining([expect.objectContaining({ jobId: j, status: 'rejected' })]),
    });
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

  it("publishes a drain's child commands (save, restore, cancel) into VMSAVE_CMD, deduplicated by request id", async () => {
    // services/scheduler/src/drain.ts: a drain asks its saves, restores and cancels as ordinary commands.
    for (const subject of [
      subjects.cmd.save,
      subjects.cmd.restore,
      subjects.cmd.cancel,
      subjects.cmd.partitioned('save', 7),
      subjects.cmd.partitioned('restore', 7),
      subjects.cmd.partitioned('cancel', 7),
    ]) {
      const id = uniq('drain-child');
      const a = await as.scheduler.bus.js.publish(subject, enc({ requestId: id }), { msgID: id });
      expect(a.stream, subject).toBe(streams.commands.name);
      expect((await as.scheduler.bus.js.publish(subject, enc({ requestId: id }), { msgID: id })).duplicate, subject).toBe(true);
    }
    expect(as.scheduler.violations).toEqual([]);
  });

  it('is refused drains and any other command subject, host announcements, heartbeats and progress', async () => {
    // Only clients ask for a drain; the scheduler's grant is the three child commands, not `vmsave.cmd.>`.
    await expectJsPublishDenied(as.scheduler, subjects.cmd.drain);
    await expectJsPublishDenied(as.scheduler, 'vmsave.cmd.anything');
    await expectJsPublishDenied(as.scheduler, `${subjects.cmd.drain}.07`);
    await expectJsPublishDenied(as.scheduler, 'vmsave.cmd.save.07.x');
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

describe('replicated images: the object store stream OBJ_VMSAVE_IMAGES (executor users only, no purge)', () => {
  const o = objectStoreSubjects(imageBucket.name);
  const nuid = uniq('chunk').replace(/[^A-Za-z0-9]/g, '');
  const chunk = `$O.${imageBucket.name}.C.${nuid}`;
  const meta = `$O.${imageBucket.name}.M.${Buffer.from(`${nuid}/part-0`).toString('base64url')}`;
  const rollup = () => {
    const h = headers();
    h.set('Nats-Rollup', 'sub');
    return h;
  };

  it('executor-h1 creates the bucket and uploads a chunk and its meta; executor-h2 reads them (stream get, direct get, ordered consumer)', async () => {
    const [before, beforeB] = [as.executor.violations.length, exB.violations.length];
    const jsm = as.executor.bus.jsm;
    // The stream nats.js's object store makes (`@nats-io/obj`): create only, never update.
    await jsm.streams.add({
      name: o.stream,
      subjects: [o.chunks, o.meta],
      allow_direct: true,
      allow_rollup_hdrs: true,
      discard: DiscardPolicy.New,
      storage: StorageType.Memory,
      num_replicas: 1,
    });
    expect((await as.executor.bus.js.publish(chunk, new Uint8Array([1, 2, 3]))).stream).toBe(o.stream);
    expect((await as.executor.bus.js.publish(meta, enc({ name: `${nuid}/part-0`, nuid, size: 3 }), { headers: rollup() })).stream).toBe(o.stream);
    const b = exB.bus.jsm;
    expect((await b.streams.info(o.stream)).state.messages).toBeGreaterThanOrEqual(2);
    expect((await b.streams.getMessage(o.stream, { last_by_subj: meta }))?.json<{ nuid: string }>().nuid).toBe(nuid);
    expect((await b.direct.getMessage(o.stream, { last_by_subj: meta }))?.json<{ nuid: string }>().nuid).toBe(nuid);
    const c = await exB.bus.js.consumers.get(o.stream, { filter_subjects: chunk });
    expect([...((await c.next({ expires: 5000 }))?.data ?? [])]).toEqual([1, 2, 3]);
    // (The ordered consumer is ephemeral: the server removes it; deleting it is not granted.)
    expect(as.executor.violations.slice(before)).toEqual([]);
    expect(exB.violations.slice(beforeB)).toEqual([]);
  });

  it("no executor may purge or delete the bucket: a delete writes the tombstone only, and the chunks stay for an operator's sweep", async () => {
    for (const c of [as.executor, exB]) {
      await expect(c.bus.jsm.streams.purge(o.stream, { filter: chunk }), c.user).rejects.toThrow(DENIED);
      await expect(c.bus.jsm.streams.purge(o.stream), c.user).rejects.toThrow(DENIED);
      await expect(c.bus.jsm.streams.deleteMessage(o.stream, 1), c.user).rejects.toThrow(DENIED);
      await expect(c.bus.jsm.streams.delete(o.stream), c.user).rejects.toThrow(DENIED);
      await expect(c.bus.jsm.streams.update(o.stream, { description: 'sealed?' }), c.user).rejects.toThrow(DENIED);
    }
    // What nats.js's `delete` can still do: the tombstone (a rolled-up meta), then its purge is refused.
    await as.executor.bus.js.publish(meta, enc({ name: `${nuid}/part-0`, nuid, size: 0, deleted: true }), { headers: rollup() });
    expect((await exB.bus.jsm.streams.getMessage(o.stream, { last_by_subj: meta }))?.json<{ deleted?: boolean }>().deleted).toBe(true);
    expect([...((await exB.bus.jsm.streams.getMessage(o.stream, { last_by_subj: chunk }))?.data ?? [])]).toEqual([1, 2, 3]);
  });

  it('no other role touches the bucket, and the executors no other bucket', async () => {
    for (const r of ['client', 'scheduler', 'verifier', 'dashboard'] as const) {
      await expectJsPublishDenied(as[r], chunk);
      await expect(as[r].bus.jsm.streams.info(o.stream), r).rejects.toThrow(DENIED);
      await expect(as[r].bus.jsm.direct.getMessage(o.stream, { last_by_subj: meta }), r).rejects.toThrow(DENIED);
    }
    await expectJsPublishDenied(as.executor, '$O.OTHER.C.x');
    await expect(as.executor.bus.jsm.streams.add({ name: 'OBJ_OTHER', subjects: ['$O.OTHER.C.>', '$O.OTHER.M.>'] })).rejects.toThrow(DENIED);
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

    // Without any consumer (issue 14): direct get on the log, the hosts and the dead letters.
    expect((await directGet(as.dashboard.bus, { lastBySubj: subjects.host(host) }, { stream: streams.hosts.name }))?.subject).toBe(subjects.host(host));
    // (The executor tests above announce a stub, which readHosts skips as invalid: it must end without a consumer.)
    for await (const _ of readHosts(as.dashboard.bus)) break;
    expect(await directGet(as.dashboard.bus, { nextBySubj: subjects.dlqAll, seq: 1 }, { stream: streams.deadLetters.name })).toBeNull();

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

type Family = 'core' | 'events' | 'JetStream API' | 'object store';
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
    // The scheduler publishes a drain's child commands (save, restore, cancel), never a drain.
    pub('publish `vmsave.cmd.save` (a command)', () => subjects.cmd.save, ['client', 'scheduler']),
    pub('publish `vmsave.cmd.restore`', () => subjects.cmd.restore, ['client', 'scheduler']),
    pub('publish `vmsave.cmd.cancel`', () => subjects.cmd.cancel, ['client', 'scheduler']),
    pub('publish `vmsave.cmd.drain`', () => subjects.cmd.drain, ['client']),
    // The partitioned subjects (several active schedulers): clients publish on them; the scheduler too (a drain's children, forwarding).
    pub('publish `vmsave.cmd.save.<NN>` (VM partition)', () => subjects.cmd.partitioned('save', 7), ['client', 'scheduler']),
    pub('publish `vmsave.cmd.restore.<NN>`', () => subjects.cmd.partitioned('restore', 15), ['client', 'scheduler']),
    pub('publish `vmsave.cmd.cancel.<NN>`', () => subjects.cmd.partitioned('cancel', 0), ['client', 'scheduler']),
    pub('publish `vmsave.cmd.drain.<NN>` (not a command)', () => `${subjects.cmd.drain}.03`, ['client']),
    pub('publish `vmsave.cmd.<any other>`', () => `vmsave.cmd.${m()}`, ['client']),
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
    // Clients and the dashboard read by direct get, never through a consumer (issue 14).
    [EVT, ['scheduler', 'executor', 'verifier']],
    [streams.hosts.name, ['scheduler', 'verifier']],
    [streams.deadLetters.name, []],
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
    // Several active schedulers: one command durable per VM partition (`scheduler-p<NN>`, filter `vmsave.cmd.*.<NN>`) and `scheduler-global`.
    api('create/update a partition durable `scheduler-p07` on `VMSAVE_CMD` (filter `vmsave.cmd.*.07`)', ['scheduler'], (c) =>
      requestAllowed(c, `$JS.API.CONSUMER.CREATE.${streams.commands.name}.scheduler-p07.${commandFilters.ofPartition(7)}`, {
        stream_name: streams.commands.name,
        config: { durable_name: 'scheduler-p07', ack_policy: 'explicit', filter_subject: commandFilters.ofPartition(7), mem_storage: true },
      }),
    ),
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
    api('create a durable with an unused name on `VMSAVE_EVT` (see the limits above)', ['scheduler', 'executor', 'verifier'], (c) => {
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
    api('direct get (`DIRECT.GET.VMSAVE_EVT`)', ['client', 'executor', 'dashboard'], (c) => requestAllowed(c, `$JS.API.DIRECT.GET.${EVT}`, { seq: 1 })),
    api('direct get (`DIRECT.GET.VMSAVE_HOSTS`)', ['client', 'dashboard'], (c) => requestAllowed(c, `$JS.API.DIRECT.GET.${streams.hosts.name}`, { seq: 1 })),
    api('direct get (`DIRECT.GET.VMSAVE_DLQ`)', ['dashboard'], (c) => requestAllowed(c, `$JS.API.DIRECT.GET.${streams.deadLetters.name}`, { seq: 1 })),
    api('direct get on `VMSAVE_CMD` or `VMSAVE_WORK`', [], async (c) => {
      const a = await requestAllowed(c, `$JS.API.DIRECT.GET.${streams.commands.name}`, { seq: 1 });
      const b = await requestAllowed(c, `$JS.API.DIRECT.GET.${streams.work.name}`, { seq: 1 });
      return a || b;
    }),
    api('consumer info on `VMSAVE_EVT` (`CONSUMER.INFO`)', ['scheduler', 'executor', 'verifier'], (c) => requestAllowed(c, `$JS.API.CONSUMER.INFO.${EVT}.verifier`)),
  );
  // Replicated images (`replicate: bus`): every executor user uploads and downloads, nobody purges.
  const o = objectStoreSubjects(imageBucket.name);
  const os = (what: string, allowed: readonly Role[], check: (c: RoleConnection) => Promise<boolean>): MatrixRow => ({ family: 'object store', what, allowed, check });
  const X: readonly Role[] = ['executor'];
  rows.push(
    os(`publish \`$O.${imageBucket.name}.C.<nuid>\` (a chunk)`, X, (c) => publishAllowed(c, `$O.${imageBucket.name}.C.${m()}`)),
    os(`publish \`$O.${imageBucket.name}.M.<name>\` (an object's meta)`, X, (c) => publishAllowed(c, `$O.${imageBucket.name}.M.${m()}`)),
    os('publish `$O.<another bucket>.C.<nuid>`', [], (c) => publishAllowed(c, `$O.${m()}.C.x`)),
    os(`stream info \`${o.stream}\``, X, (c) => requestAllowed(c, `$JS.API.STREAM.INFO.${o.stream}`)),
    // The body names another stream: the server answers an error and creates nothing.
    os(`create the stream \`${o.stream}\``, X, (c) => requestAllowed(c, `$JS.API.STREAM.CREATE.${o.stream}`, { name: 'MISMATCH' })),
    os('create the stream of another bucket (`OBJ_<other>`)', [], (c) => requestAllowed(c, `$JS.API.STREAM.CREATE.OBJ_${m()}`, { name: 'MISMATCH' })),
    os(`update \`${o.stream}\` (seal, limits)`, [], (c) => requestAllowed(c, `$JS.API.STREAM.UPDATE.${o.stream}`, { name: 'MISMATCH' })),
    os(`get a message of \`${o.stream}\` (\`STREAM.MSG.GET\`)`, X, (c) => requestAllowed(c, `$JS.API.STREAM.MSG.GET.${o.stream}`, { seq: 1 })),
    os(`direct get on \`${o.stream}\` (by sequence)`, X, (c) => requestAllowed(c, `$JS.API.DIRECT.GET.${o.stream}`, { seq: 1 })),
    os(`direct get on \`${o.stream}\` (an object's meta, last by subject)`, X, (c) => requestAllowed(c, `$JS.API.DIRECT.GET.${o.stream}.$O.${imageBucket.name}.M.x`)),
    os(`create an ephemeral consumer on \`${o.stream}\` (a part's chunks)`, X, (c) => {
      const name = m();
      return requestAllowed(c, `$JS.API.CONSUMER.CREATE.${o.stream}.${name}`, ephemeral(o.stream, name));
    }),
    // nats.js deletes an object's chunks (and a failed upload's) this way: refused, they stay for an operator.
    os(`purge \`${o.stream}\` (an object's chunks, by filter)`, [], (c) => requestAllowed(c, `$JS.API.STREAM.PURGE.${o.stream}`, { filter: `$O.${imageBucket.name}.C.${m()}` })),
    os(`delete a message of \`${o.stream}\``, [], (c) => requestAllowed(c, `$JS.API.STREAM.MSG.DELETE.${o.stream}`, { seq: 1 })),
    os(`delete the stream \`${o.stream}\``, [], (c) => requestAllowed(c, `$JS.API.STREAM.DELETE.${o.stream}`)),
    os(`delete a consumer on \`${o.stream}\``, [], (c) => requestAllowed(c, `$JS.API.CONSUMER.DELETE.${o.stream}.${m()}`)),
  );
  return rows;
}

const BEGIN = '<!-- permission-matrix:begin (written by test/infra/permissions.int.spec.ts with VMSAVE_WRITE_DOCS=1) -->';
const END = '<!-- permission-matrix:end -->';

describe('the permission matrix (every role × subject family × publish/subscribe/JetStream API)', () => {
  // About 90 rows × 5 roles, each a round trip (and 30 ms for core ones): well over vitest's default 5 s.
  it('allows and refuses exactly as documented', { timeout: 120_000 }, async () => {
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
