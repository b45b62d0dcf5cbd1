/**
 * `npm start`'s two pure decisions: which NATS it uses (and when it refuses one), and what each
 * service's environment holds.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '@vmsave/infra/servers';
import { chooseNats, fallbackNatsUrl, insecureWarning, type NatsChoiceInput } from '@vmsave/infra/nats-choice';
import { EXECUTOR_SECRET_VAR, SERVICE_SECRETS, executorCredentials, executorHost, executorPassword, serviceEnv, type ServiceName } from '@vmsave/infra/service-env';
import { passwordVar, roles, type Role } from '@vmsave/infra/permissions';

const base: NatsChoiceInput = { url: 'nats://127.0.0.1:4222', explicit: false, probe: { kind: 'none' }, insecure: false, loopback: true, natsUser: false, rolePasswords: true };
const choose = (over: Partial<NatsChoiceInput>) => chooseNats({ ...base, ...over }, 4222);

describe('chooseNats', () => {
  it('nothing answers on this machine: a private NATS with the roles; elsewhere: refused, naming the fix', () => {
    expect(choose({})).toEqual({ action: 'start-private' });
    expect(choose({ explicit: true })).toEqual({ action: 'start-private' });
    const r = choose({ explicit: true, loopback: false, url: 'nats://n1:4222' });
    expect(r).toMatchObject({ action: 'refuse' });
    expect(r.action === 'refuse' && r.message).toMatch(/nothing answers at NATS_URL nats:\/\/n1:4222.*fix NATS_URL/);
  });

  it('a NATS with users: each service as its role, or as NATS_USER when one is given', () => {
    expect(choose({ probe: { kind: 'auth' } })).toEqual({ action: 'use-roles' });
    expect(choose({ probe: { kind: 'auth' }, explicit: true })).toEqual({ action: 'use-roles' });
    expect(choose({ probe: { kind: 'auth' }, natsUser: true })).toEqual({ action: 'use-env' });
    expect(choose({ probe: { kind: 'auth' }, rolePasswords: false })).toEqual({ action: 'use-env' });
    expect(choose({ probe: { kind: 'error', message: 'TLS required' } })).toEqual({ action: 'use-env' });
  });

  it('an anonymous NATS named by NATS_URL is refused, saying why and how to proceed', () => {
    for (const over of [{}, { natsUser: true }, { rolePasswords: false }, { loopback: false }]) {
      const r = choose({ ...over, probe: { kind: 'anonymous' }, explicit: true });
      expect(r.action).toBe('refuse');
      if (r.action !== 'refuse') continue;
      expect(r.message).toContain('accepts clients without user or password');
      expect(r.message).toContain('no role is enforced');
      expect(r.message).toContain('--insecure');
      expect(r.message).toContain('docs/operations.md');
    }
  });

  it('an anonymous NATS at the default URL (NATS_URL unset): vmsave runs its own on the next port, once', () => {
    expect(choose({ probe: { kind: 'anonymous' } })).toEqual({ action: 'fallback', url: 'nats://127.0.0.1:4223' });
    expect(fallbackNatsUrl(4222)).toBe('nats://127.0.0.1:4223');
    // The fallback port is probed like any other; an anonymous NATS there too is refused, not chased further.
    expect(choose({ url: 'nats://127.0.0.1:4223', probe: { kind: 'none' }, fallbackFrom: 'nats://127.0.0.1:4222' })).toEqual({ action: 'start-private' });
    expect(choose({ url: 'nats://127.0.0.1:4223', probe: { kind: 'auth' }, fallbackFrom: 'nats://127.0.0.1:4222' })).toEqual({ action: 'use-roles' });
    const r = choose({ url: 'nats://127.0.0.1:4223', probe: { kind: 'anonymous' }, fallbackFrom: 'nats://127.0.0.1:4222' });
    expect(r.action === 'refuse' && r.message).toMatch(/4222 accepts anonymous clients, and so does the one at nats:\/\/127\.0\.0\.1:4223/);
  });

  it('--insecure uses an anonymous NATS, explicit or not', () => {
    expect(choose({ probe: { kind: 'anonymous' }, insecure: true })).toEqual({ action: 'use-insecure' });
    expect(choose({ probe: { kind: 'anonymous' }, insecure: true, explicit: true })).toEqual({ action: 'use-insecure' });
    // and changes nothing where there is a choice without it
    expect(choose({ probe: { kind: 'auth' }, insecure: true })).toEqual({ action: 'use-roles' });
  });

  it('the --insecure warning is a box naming the server and the risk', () => {
    const w = insecureWarning('nats://127.0.0.1:4222').split('\n');
    expect(w.length).toBeGreaterThan(4);
    expect(new Set(w.map((l) => l.length)).size).toBe(1);
    expect(w[0]).toMatch(/^\+-+\+$/);
    expect(w.at(-1)).toBe(w[0]);
    expect(w.join('\n')).toContain('nats://127.0.0.1:4222 accepts clients without user or password');
  });
});

describe('serviceEnv', () => {
  const passwords = Object.fromEntries(roles.map((r) => [r, `pw-${r}`])) as Record<Role, string>;
  const parent: NodeJS.ProcessEnv = {
    PATH: '/usr/bin',
    VMSAVE_LOG_LEVEL: 'debug',
    VMSAVE_DASHBOARD_TOKEN: 'dashboard-token-0123456789',
    VMSAVE_REDIS_PASS: 'redis-pass',
    REDIS_URL: 'redis://:from-the-environment@127.0.0.1:6379',
    NATS_USER: 'someone',
    NATS_PASS: 'their-pass',
    ...Object.fromEntries(roles.map((r) => [passwordVar(r), passwords[r]])),
  };
  const input = { natsUrl: 'nats://127.0.0.1:4223', natsPasswords: passwords, redisUrl: 'redis://:redis-pass@127.0.0.1:6390' };
  const services = Object.keys(SERVICE_SECRETS) as ServiceName[];

  it('gives each service its own NATS role and no generated secret of anyone', () => {
    for (const s of services) {
      const env = serviceEnv(parent, s, input);
      expect(env).toMatchObject({ NATS_URL: 'nats://127.0.0.1:4223', NATS_USER: s, NATS_PASS: `pw-${s}`, PATH: '/usr/bin', VMSAVE_LOG_LEVEL: 'debug' });
      for (const r of roles) expect(env[passwordVar(r)], `${s}: ${passwordVar(r)}`).toBeUndefined();
      expect(env.VMSAVE_REDIS_PASS).toBeUndefined();
      const values = Object.values(env).join('\n');
      for (const r of roles.filter((x) => x !== s)) expect(values).not.toContain(`pw-${r}`);
    }
  });

  it('the Redis URL only to the scheduler and the dashboard, the dashboard token only to the dashboard', () => {
    const got = Object.fromEntries(services.map((s) => [s, serviceEnv(parent, s, input)]));
    expect(got.scheduler!.REDIS_URL).toBe(input.redisUrl);
    expect(got.dashboard!.REDIS_URL).toBe(input.redisUrl);
    expect(got.verifier!.REDIS_URL).toBeUndefined();
    expect(got.executor!.REDIS_URL).toBeUndefined();
    expect(got.dashboard!.VMSAVE_DASHBOARD_TOKEN).toBe('dashboard-token-0123456789');
    for (const s of ['scheduler', 'verifier', 'executor'] as const) {
      expect(got[s]!.VMSAVE_DASHBOARD_TOKEN, s).toBeUndefined();
      expect(Object.values(got[s]!).join('\n'), s).not.toContain('dashboard-token-0123456789');
    }
    for (const s of ['verifier', 'executor'] as const) expect(Object.values(got[s]!).join('\n'), s).not.toContain('redis-pass');
  });

  it("gives the executor its host's own user and derived password, and the master secret to no service", () => {
    const master = 'master-secret-of-the-executors';
    const own = executorCredentials(master, 'h1');
    expect(own.user).toBe('executor-h1');
    const withMaster = { ...parent, [EXECUTOR_SECRET_VAR]: master };
    const ex = serviceEnv(withMaster, 'executor', { ...input, executorUser: own });
    expect(ex).toMatchObject({ NATS_USER: 'executor-h1', NATS_PASS: own.password });
    expect(Object.values(ex).join('\n')).not.toContain('pw-executor');
    for (const s of services) {
      const env = serviceEnv(withMaster, s, { ...input, executorUser: own });
      expect(env[EXECUTOR_SECRET_VAR], s).toBeUndefined();
      expect(Object.values(env).join('\n'), s).not.toContain(master);
      if (s !== 'executor') expect(Object.values(env).join('\n'), s).not.toContain(own.password);
    }
  });

  it("derives each host's password from the master secret: stable, different per host and per secret, letters and digits", () => {
    const a = executorPassword('m1', 'h1');
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(executorPassword('m1', 'h1')).toBe(a);
    expect(executorPassword('m1', 'h2')).not.toBe(a);
    expect(executorPassword('m2', 'h1')).not.toBe(a);
    expect(() => executorPassword('', 'h1')).toThrow(/VMSAVE_NATS_EXECUTOR_SECRET/);
  });

  it("names the executor's host as the executor would: VMSAVE_HOST, else the host name with other characters as -", () => {
    expect(executorHost({ VMSAVE_HOST: 'rack-1' })).toBe('rack-1');
    expect(executorHost({})).toMatch(/^[A-Za-z0-9_-]+$/);
  });

  it('on a NATS without roles each service keeps NATS_USER / NATS_PASS of the environment, and the URL start.ts chose', () => {
    const env = serviceEnv(parent, 'verifier', { natsUrl: 'nats://n1:4222', redisUrl: 'redis://r:6379' });
    expect(env).toMatchObject({ NATS_URL: 'nats://n1:4222', NATS_USER: 'someone', NATS_PASS: 'their-pass' });
    expect(env.REDIS_URL).toBeUndefined();
  });

  it('matches what each service reads (its sources name REDIS_URL / VMSAVE_DASHBOARD_TOKEN exactly when it gets them)', () => {
    for (const s of services) {
      const dir = join(REPO_ROOT, 'services', s, 'src');
      const code = readdirSync(dir, { recursive: true, encoding: 'utf8' })
        .filter((f) => f.endsWith('.ts') && !f.includes('.spec.'))
        .map((f) => readFileSync(join(dir, f), 'utf8'))
        .join('\n');
      expect({ redis: code.includes('REDIS_URL'), dashboardToken: code.includes('VMSAVE_DASHBOARD_TOKEN') }, s).toEqual(SERVICE_SECRETS[s]);
    }
  });
});
