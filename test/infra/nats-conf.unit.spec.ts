import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EVENT_PUBLISHERS, jobEventTypes, subjects } from '@vmsave/contracts';
import { passwordVar, permissions, renderNatsConf, roles, serviceDurables } from '@vmsave/infra/permissions';
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
    expect(publishers('vmsave.ctl.*')).toEqual(['scheduler']);
    expect(publishers('vmsave.cmd.>')).toEqual(['client']);
    expect(publishers('vmsave.host.*')).toEqual(['executor']);
    expect(publishers('vmsave.hb.*')).toEqual(['executor']);
    expect(publishers('vmsave.progress.*')).toEqual(['executor']);
    expect(publishers('vmsave.evt.>')).toEqual([]);
    expect(publishers('vmsave.dlq.*')).toEqual(['scheduler', 'executor', 'verifier', 'dashboard']);
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

  it("lets clients and the dashboard create only ephemeral consumers, and no role another role's durable", () => {
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
      expect(permissions[r].publishDeny).toContain('$JS.API.CONSUMER.DURABLE.CREATE.>');
      expect(permissions[r].publish.filter((s) => s.includes('DURABLE') || s.startsWith('$JS.ACK.'))).toEqual([]);
    }
  });

  it('grants no role a delete, purge or any-stream wildcard on the JetStream API', () => {
    for (const r of roles) {
      for (const s of permissions[r].publish) {
        expect(s).not.toMatch(/DELETE|PURGE|SNAPSHOT|RESTORE|^\$JS\.API\.>$|^\$JS\.>$|^>$/);
      }
    }
  });
});
