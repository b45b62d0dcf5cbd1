/**
 * The environment `npm start` gives each service: everything of its own environment except
 * secrets, plus only the secrets that service reads (its `src/config.ts`):
 *
 * | service   | NATS                         | Redis URL (with password) | dashboard token |
 * |-----------|------------------------------|---------------------------|-----------------|
 * | scheduler | its role (or NATS_USER/PASS) | yes (leases)              | no              |
 * | verifier  | its role (or NATS_USER/PASS) | no                        | no              |
 * | executor  | `executor-<host>` (or …)     | no                        | no              |
 * | dashboard | its role (or NATS_USER/PASS) | yes (read models)         | yes             |
 *
 * The executor of a host connects as its own user `executor-<host>`, whose password is
 * `executorPassword(master, host)`: the master secret (`VMSAVE_NATS_EXECUTOR_SECRET`, generated
 * by set-up, or by `npm start` into an older `.vmsave/env`) never reaches any service, and a
 * host's executor knows only its own password.
 */
import { createHmac } from 'node:crypto';
import os from 'node:os';
import { executorUser, passwordVar, roles, type Role } from '../nats/permissions.ts';

/** The environment variable of the master secret the executor hosts' passwords are derived from. */
export const EXECUTOR_SECRET_VAR = 'VMSAVE_NATS_EXECUTOR_SECRET';

/**
 * The NATS password of `executor-<host>`: HMAC-SHA256(master secret, host) in hex. Set-up need
 * not know the hosts in advance; whoever holds the master secret (the operator, `npm start`)
 * can give a new host its password, and a host's password tells nothing of another's.
 */
export function executorPassword(master: string, host: string): string {
  if (!master) throw new TypeError(`${EXECUTOR_SECRET_VAR}: the master secret is empty`);
  return createHmac('sha256', master).update(`vmsave executor ${host}`).digest('hex');
}

/**
 * The bus host name of the executor `npm start` runs: VMSAVE_HOST, else this machine's host
 * name with every character other than letters, digits, _ and - replaced by - (the default of
 * services/executor/src/config.ts; start.ts passes the result to the executor as VMSAVE_HOST so
 * both always agree).
 */
export function executorHost(env: NodeJS.ProcessEnv): string {
  return env.VMSAVE_HOST || os.hostname().replace(/[^A-Za-z0-9_-]/g, '-');
}

export type ServiceName = 'scheduler' | 'verifier' | 'executor' | 'dashboard';

/** Which secrets each service reads; nothing else reaches it. */
export const SERVICE_SECRETS: Record<ServiceName, { redis: boolean; dashboardToken: boolean }> = {
  scheduler: { redis: true, dashboardToken: false },
  verifier: { redis: false, dashboardToken: false },
  executor: { redis: false, dashboardToken: false },
  dashboard: { redis: true, dashboardToken: true },
};

export interface ServiceEnvInput {
  /** The NATS every service connects to. */
  natsUrl: string;
  /** Each role's password when the services connect as their roles; otherwise NATS_USER / NATS_PASS of `base` are passed on. */
  natsPasswords?: Record<Role, string>;
  /**
   * With `natsPasswords`: the executor's own NATS user and password (`executor-<host>`); without
   * it the executor connects as the shared `executor` user with `natsPasswords.executor`.
   */
  executorUser?: { user: string; password: string };
  /** The Redis URL (with its password when the server needs one). */
  redisUrl: string;
}

/**
 * One service's environment built from `base` (start.ts's environment with `.vmsave/env`): the
 * generated secrets (`VMSAVE_NATS_PASS_*`, `VMSAVE_NATS_EXECUTOR_SECRET`, `VMSAVE_REDIS_PASS`) never pass; `REDIS_URL` and
 * `VMSAVE_DASHBOARD_TOKEN` only to the services of {@link SERVICE_SECRETS}; NATS as its role.
 */
export function serviceEnv(base: NodeJS.ProcessEnv, name: ServiceName, input: ServiceEnvInput): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  for (const r of roles) delete env[passwordVar(r)];
  delete env[EXECUTOR_SECRET_VAR];
  delete env.VMSAVE_REDIS_PASS;
  delete env.REDIS_URL;
  delete env.VMSAVE_DASHBOARD_TOKEN;
  const needs = SERVICE_SECRETS[name];
  env.NATS_URL = input.natsUrl;
  if (input.natsPasswords) {
    env.NATS_USER = name;
    env.NATS_PASS = input.natsPasswords[name];
    if (name === 'executor' && input.executorUser) {
      env.NATS_USER = input.executorUser.user;
      env.NATS_PASS = input.executorUser.password;
    }
  }
  if (needs.redis) env.REDIS_URL = input.redisUrl;
  if (needs.dashboardToken && base.VMSAVE_DASHBOARD_TOKEN) env.VMSAVE_DASHBOARD_TOKEN = base.VMSAVE_DASHBOARD_TOKEN;
  return env;
}

/** The executor user and password of `host` derived from the master secret. */
export function executorCredentials(master: string, host: string): { user: string; password: string } {
  return { user: executorUser(host), password: executorPassword(master, host) };
}
