import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EVENT_PUBLISHERS, jobEventTypes, streams, subjects } from '@vmsave/contracts';
import { executorPasswordVar, executorPermissions, executorUser, natsUsers, passwordVar, permissions, renderNatsConf, roles, serviceDurables } from '@vmsave/infra/permissions';
import { NATS_CONF } from '@vmsave/infra/servers';

describe('infra/nats/nats.conf', () => {
  const committed = readFileSync(NATS_CONF, 'utf8');

  it('is what infra/nats/permissions.ts renders (run `npx tsx --conditions=development infra/nats/render.ts` after a change)', () => {
    expect(committed).toBe(renderNatsConf());
  });

  it("holds no password, only a reference to each role's environment variable", () => {
    for (const r of roles) expect(committed).toContain(`password: $${passwordVar(r)},`);
    expect(committed).not.toMatch(/password:\s*"/);
  });

  it('lets only the scheduler publish work and control, only the executor host/heartbeat/progress subjects', () => {
    const publishers = (subject: string) => roles.filter((r) => permissions[r].publish.includes(subject));
    expect(publishers('vmsave.work.*')).toEqual(['scheduler']);
    // Clients ask an executor to prune its images (`vmsave images prune`).
    expect(publishers('vmsave.ctl.*')).toEqual(['client', 'scheduler']);
    expect(publishers('vmsave.cmd.>')).toEqual(['client']);
    expect(publishers('vmsave.host.*')).toEqual(['executor']);
    expect(publishers('vmsave.hb.*')).toEqual(['executor']);
    expect(publishers('vmsave.progress.*')).toEqual(['executor']);
    expect(publishers('vmsave.evt.>')).toEqual([]);
    expect(publishers('vmsave.dlq.*')).toEqual(['scheduler', 'executor', 'verifier', 'dashboard']);
  });

  it("lets the scheduler publish a drain's child commands (save, restore, cancel) and no other command; only clients ask drains", () => {
    const cmds = (r: (typeof roles)[number]) => permissions[r].publish.filter((s) => s.startsWith('vmsave.cmd.'));
    // Bare and partitioned (`vmsave.cmd.<kind>.<NN>`: drain children, and the bare commands the `_global` holder forwards).
    const { partitionedAll } = subjects.cmd;
    expect(cmds('scheduler')).toEqual([subjects.cmd.save, subjects.cmd.restore, subjects.cmd.cancel, partitionedAll.save, partitionedAll.restore, partitionedAll.cancel]);
    expect(cmds('client')).toEqual([subjects.cmd.all]);
    for (const r of ['executor', 'verifier', 'dashboard'] as const) expect(cmds(r), r).toEqual([]);
    expect(roles.filter((r) => permissions[r].publish.includes(subjects.cmd.drain))).toEqual([]);
  });

  it('binds every event type to the roles of EVENT_PUBLISHERS by subject (vmsave.evt.*.<Type>), and nothing else on the log', () => {
    for (const t of jobEventTypes) {
      const publishers = roles.filter((r) => permissions[r].publish.includes(subjects.evtOfType(t)));
      expect(publishers, t).toEqual(roles.filter((r) => (EVENT_PUBLISHERS[t] as readonly string[]).includes(r)));
    }
    for (const r of roles) {
      for (const s of permissions[r].publish.filter((x) => x.startsWith('vmsave.evt.'))) expect(s, r).toMatch(/^vmsave\.evt\.\*\.[A-Za-z]+$/);
    }
  });

  it("lets clients and the dashboard create no consumer at all (they read by direct get), and no role another role's durable", () => {
    for (const r of roles) {
      const p = permissions[r];
      // The bare CONSUMER.CREATE.<stream> would accept {name: "<a durable>"} and update it.
      expect(
        p.publish.filter((s) => /^\$JS\.API\.CONSUMER\.CREATE\.[^.]+$/.test(s)),
        r,
      ).toEqual([]);
      for (const d of serviceDurables.filter((x) => x.owner !== r)) {
        expect(p.publishDeny, r).toContain(`$JS.API.CONSUMER.CREATE.${d.stream}.${d.name}`);
        expect(p.publishDeny, r).toContain(`$JS.API.CONSUMER.CREATE.${d.stream}.${d.name}.>`);
      }
    }
    for (const r of ['client', 'dashboard'] as const) {
      expect(permissions[r].publishDeny).toContain('$JS.API.CONSUMER.>');
      expect(permissions[r].publish.filter((s) => s.includes('CONSUMER') || s.startsWith('$JS.ACK.'))).toEqual([]);
      expect(permissions[r].publish).toContain('$JS.API.DIRECT.GET.VMSAVE_EVT');
    }
  });

  it('lists each service durable once', () => {
    const keys = serviceDurables.map((d) => `${d.stream}/${d.name}`);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it("lets every user subscribe only to its own inbox prefix `_INBOX.<user>.>`, and only the scheduler publish to others' inboxes", () => {
    for (const u of natsUsers({ hosts: ['h1'], sharedExecutor: true })) {
      const inboxes = u.permissions.subscribe.filter((x) => x.startsWith('_INBOX'));
      expect(inboxes, u.user).toEqual([`_INBOX.${u.user}.>`]);
      expect(u.permissions.publish.includes('_INBOX.>'), u.user).toBe(u.user === 'scheduler');
    }
  });
  it('grants no role a delete, purge or any-stream wildcard on the JetStream API (but the scheduler deleting the old single durable `scheduler`)', () => {
    // The one exception: before partitioning, one durable `scheduler` (filter `vmsave.cmd.>`) took every
    // command; it overlaps the partitioned durables on the work-queue stream, so a new scheduler deletes it.
    const upgrade = `$JS.API.CONSUMER.DELETE.${streams.commands.name}.scheduler`;
    for (const u of natsUsers({ hosts: ['h1'], shutdownSaveHosts: ['h1'], sharedExecutor: true })) {
      expect(u.permissions.publish.includes(upgrade), u.user).toBe(u.user === 'scheduler');
      for (const s of u.permissions.publish) {
        if (s === upgrade) continue;
        expect(s, u.user).not.toMatch(/DELETE|PURGE|SNAPSHOT|RESTORE|^\$JS\.API\.>$|^\$JS\.>$|^>$/);
      }
    }
  });

  it('grants the object store of replicated images (OBJ_VMSAVE_IMAGES) to the executor users only, that bucket only, without update or purge', () => {
    const store = (publish: string[]) => publish.filter((s) => s.startsWith('$O.') || s.includes('OBJ_'));
    const expected = [
      '$O.VMSAVE_IMAGES.>',
      '$JS.API.STREAM.INFO.OBJ_VMSAVE_IMAGES',
      '$JS.API.STREAM.CREATE.OBJ_VMSAVE_IMAGES',
      '$JS.API.STREAM.MSG.GET.OBJ_VMSAVE_IMAGES',
      '$JS.API.DIRECT.GET.OBJ_VMSAVE_IMAGES',
      '$JS.API.DIRECT.GET.OBJ_VMSAVE_IMAGES.>',
      '$JS.API.CONSUMER.CREATE.OBJ_VMSAVE_IMAGES.>',
      '$JS.API.CONSUMER.INFO.OBJ_VMSAVE_IMAGES.*',
      '$JS.API.CONSUMER.MSG.NEXT.OBJ_VMSAVE_IMAGES.*',
    ];
    expect(store(permissions.executor.publish)).toEqual(expected);
    expect(store(executorPermissions('h1').publish)).toEqual(expected);
    expect(store(executorPermissions('h1', { shutdownSave: true }).publish)).toEqual(expected);
    for (const r of roles.filter((x) => x !== 'executor')) expect(store(permissions[r].publish), r).toEqual([]);
    // Nor may any executor reach another bucket through the object store's API.
    for (const s of executorPermissions('h1').publish) expect(s).not.toMatch(/^\$O\.\*|OBJ_\*|OBJ_>|^\$O\.>$/);
  });
});

describe("npm start's configuration: one executor user per host", () => {
  const conf = renderNatsConf({ hosts: ['h1', 'rack-2:b'] });

  it('has a user executor-<host> per host with its own password variable, and no shared executor user', () => {
    expect(conf).toContain(`{ user: "executor-h1", password: $${executorPasswordVar('h1')}, permissions: $VMSAVE_PERMS_EXECUTOR_HOST_H1 }`);
    expect(conf).toContain(`{ user: "executor-rack-2:b", password: $${executorPasswordVar('rack-2:b')},`);
    expect(executorPasswordVar('rack-2:b')).toBe('VMSAVE_NATS_PASS_EXECUTOR_HOST_RACK_2_B');
    expect(conf).not.toContain('{ user: "executor",');
    expect(conf).not.toContain(`password: $${passwordVar('executor')},`);
    for (const r of roles.filter((x) => x !== 'executor')) expect(conf).toContain(`{ user: ${JSON.stringify(r)}, password: $${passwordVar(r)},`);
    expect(conf).not.toMatch(/password:\s*"/);
    // The template (no host) keeps the shared executor for docker compose.
    expect(renderNatsConf()).toContain('{ user: "executor", password: $VMSAVE_NATS_PASS_EXECUTOR,');
  });

  it('refuses two hosts whose password variables would be the same', () => {
    expect(() => renderNatsConf({ hosts: ['a-b', 'a_b'] })).toThrow(/"a-b" and "a_b" map to the same password variable/);
  });

  it('grants an executor host only its own host, heartbeat and control subjects and its own work durable', () => {
    const p = executorPermissions('h1');
    const durable = executorUser('h1');
    expect(durable).toBe('executor-h1');
    expect(p.subscribe).toEqual([subjects.control('h1'), '_INBOX.executor-h1.>']);
    const hostish = p.publish.filter((s) => /^vmsave\.(host|hb|work|ctl)\./.test(s));
    expect(hostish).toEqual([subjects.host('h1'), subjects.heartbeat('h1')]);
    const work = p.publish.filter((s) => s.includes('VMSAVE_WORK') && !s.startsWith('$JS.API.STREAM.'));
    expect(work).toEqual([
      `$JS.API.CONSUMER.CREATE.VMSAVE_WORK.${durable}.vmsave.work.h1`,
      `$JS.API.CONSUMER.INFO.VMSAVE_WORK.${durable}`,
      `$JS.API.CONSUMER.MSG.NEXT.VMSAVE_WORK.${durable}`,
      `$JS.ACK.VMSAVE_WORK.${durable}.>`,
    ]);
    expect(p.publish.some((s) => s.includes('DURABLE.CREATE'))).toBe(false);
    // One job's events read by direct get at work receipt (the event log only: not the work or command queues).
    const direct = p.publish.filter((s) => s.startsWith('$JS.API.DIRECT.GET.') && !s.includes('OBJ_'));
    expect(direct).toEqual(['$JS.API.DIRECT.GET.VMSAVE_EVT']);
    expect(permissions.executor.publish.filter((s) => s.startsWith('$JS.API.DIRECT.GET.') && !s.includes('OBJ_'))).toEqual(['$JS.API.DIRECT.GET.VMSAVE_EVT']);
    for (const t of jobEventTypes.filter((x) => EVENT_PUBLISHERS[x].includes('executor'))) expect(p.publish).toContain(subjects.evtOfType(t));
  });
});

describe('save on host shutdown', () => {
  it('grants the save, restore and cancel commands only to the executor hosts that save at shutdown', () => {
    expect(executorPermissions('h1').publish).not.toContain('vmsave.cmd.save');
    const p = executorPermissions('h1', { shutdownSave: true }).publish;
    for (const s of ['vmsave.cmd.save', 'vmsave.cmd.restore', 'vmsave.cmd.cancel']) expect(p).toContain(s);
    const users = natsUsers({ hosts: ['h1', 'h2'], shutdownSaveHosts: ['h2'] });
    const of = (host: string) => users.find((u) => u.user === executorUser(host))!.permissions.publish;
    expect(of('h1')).not.toContain('vmsave.cmd.save');
    expect(of('h2')).toContain('vmsave.cmd.save');
  });
});
