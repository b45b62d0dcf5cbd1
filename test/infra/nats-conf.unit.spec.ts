import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { passwordVar, permissions, renderNatsConf, roles } from '@vmsave/infra/permissions';
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
    expect(publishers('vmsave.evt.>')).toEqual(['scheduler', 'executor', 'verifier']);
    expect(publishers('vmsave.dlq.*')).toEqual(['scheduler', 'executor', 'verifier', 'dashboard']);
  });

  it('grants no role a delete, purge or any-stream wildcard on the JetStream API', () => {
    for (const r of roles) {
      for (const s of permissions[r].publish) {
        expect(s).not.toMatch(/DELETE|PURGE|SNAPSHOT|RESTORE|^\$JS\.API\.>$|^\$JS\.>$|^>$/);
      }
    }
  });
});
