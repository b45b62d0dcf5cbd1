import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchVm, type Accel } from '@vmsave/qemu';
import { Scratch, testAccel, testVm } from './helpers.ts';

const scratch = new Scratch();
let accel: Accel;

beforeAll(async () => {
  await scratch.init('vmsave-qemu-env-');
  accel = await testAccel();
});

afterAll(async () => {
  await scratch.dispose();
});

/** A process's environment as the kernel shows it to anyone allowed to read `/proc/<pid>/environ`. */
function environOf(pid: number): Record<string, string> {
  const entries = readFileSync(`/proc/${pid}/environ`, 'utf8')
    .split('\0')
    .filter(Boolean)
    .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]);
  return Object.fromEntries(entries);
}

describe('the environment of a QEMU vmsave starts', () => {
  const secrets = { NATS_PASS: 'nats-secret-for-env-test', REDIS_URL: 'redis://:redis-secret-for-env-test@127.0.0.1:6379', VMSAVE_DASHBOARD_TOKEN: 'token-secret-for-env-test' };
  const saved: Record<string, string | undefined> = {};

  beforeAll(() => {
    for (const [k, v] of Object.entries(secrets)) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
  });
  afterAll(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });

  it('holds none of the parent’s NATS, Redis or vmsave variables, and QEMU runs', async () => {
    const vm = scratch.vm(await launchVm(testVm('env', 64), { qmpSocketPath: scratch.path('env.qmp'), accel, killWithParent: true, startPaused: true }));
    const env = environOf(vm.pid);
    expect(readFileSync(`/proc/${vm.pid}/comm`, 'utf8')).toMatch(/qemu/);
    const leaked = Object.keys(env).filter((k) => /^(NATS_|REDIS_|VMSAVE_)/.test(k));
    expect(leaked).toEqual([]);
    const raw = readFileSync(`/proc/${vm.pid}/environ`, 'utf8');
    for (const v of Object.values(secrets)) expect(raw).not.toContain(v);
    expect(env['PATH']).toBeTruthy();
    const qmp = scratch.qmp(await vm.connectQmp());
    expect(await qmp.execute('query-status')).toMatchObject({ status: 'prelaunch' });
  });
});
