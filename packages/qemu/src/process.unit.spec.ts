import { describe, expect, it } from 'vitest';
import { qemuEnvironment } from './process.ts';

describe('qemuEnvironment', () => {
  it("keeps only what QEMU may need, never the caller's secrets or settings", () => {
    const parent = {
      PATH: '/usr/bin:/bin',
      HOME: '/root',
      LANG: 'C.UTF-8',
      LC_ALL: 'C',
      LC_TIME: 'en_GB.UTF-8',
      TMPDIR: '/var/tmp',
      XDG_RUNTIME_DIR: '/run/user/0',
      TZ: 'UTC',
      NATS_URL: 'nats://127.0.0.1:4222',
      NATS_USER: 'executor',
      NATS_PASS: 'secret-nats',
      REDIS_URL: 'redis://:secret-redis@127.0.0.1:6379',
      VMSAVE_DASHBOARD_TOKEN: 'secret-token',
      VMSAVE_NATS_PASS_EXECUTOR: 'secret-role',
      VMSAVE_STATE_DIR: '/var/lib/vmsave',
      AWS_SECRET_ACCESS_KEY: 'other',
      NODE_OPTIONS: '--import tsx',
      UNSET: undefined,
    };
    expect(qemuEnvironment(parent)).toEqual({
      PATH: '/usr/bin:/bin',
      HOME: '/root',
      LANG: 'C.UTF-8',
      LC_ALL: 'C',
      LC_TIME: 'en_GB.UTF-8',
      TMPDIR: '/var/tmp',
      XDG_RUNTIME_DIR: '/run/user/0',
      TZ: 'UTC',
    });
  });

  it('gives QEMU a PATH when the caller has none (bash, setpriv and QEMU are found on it)', () => {
    expect(qemuEnvironment({ NATS_PASS: 'x' })).toEqual({ PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' });
  });
});
