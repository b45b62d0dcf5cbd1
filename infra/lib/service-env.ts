/**
 * The environment `npm start` gives each service: everything of its own environment except
 * secrets, plus only the secrets that service reads (its `src/config.ts`):
 *
 * | service   | NATS                         | Redis URL (with password) | dashboard token |
 * |-----------|------------------------------|---------------------------|-----------------|
 * | scheduler | its role (or NATS_USER/PASS) | yes (leases)              | no              |
 * | verifier  | its role (or NATS_USER/PASS) | no                        | no              |
 * | executor  | its role (or NATS_USER/PASS) | no                        | no              |
 * | dashboard | its role (or NATS_USER/PASS) | yes (read models)         | yes             |
 */
import { passwordVar, roles, type Role } from '../nats/permissions.ts';

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
  /** The Redis URL (with its password when the server needs one). */
  redisUrl: string;
}

/**
 * One service's environment built from `base` (start.ts's environment with `.vmsave/env`): the
 * generated secrets (`VMSAVE_NATS_PASS_*`, `VMSAVE_REDIS_PASS`) never pass; `REDIS_URL` and
 * `VMSAVE_DASHBOARD_TOKEN` only to the services of {@link SERVICE_SECRETS}; NATS as its role.
 */
export function serviceEnv(base: NodeJS.ProcessEnv, name: ServiceName, input: ServiceEnvInput): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base };
  for (const r of roles) delete env[passwordVar(r)];
  delete env.VMSAVE_REDIS_PASS;
  delete env.REDIS_URL;
  delete env.VMSAVE_DASHBOARD_TOKEN;
  const needs = SERVICE_SECRETS[name];
  env.NATS_URL = input.natsUrl;
  if (input.natsPasswords) {
    env.NATS_USER = name;
    env.NATS_PASS = input.natsPasswords[name];
  }
  if (needs.redis) env.REDIS_URL = input.redisUrl;
  if (needs.dashboardToken && base.VMSAVE_DASHBOARD_TOKEN) env.VMSAVE_DASHBOARD_TOKEN = base.VMSAVE_DASHBOARD_TOKEN;
  return env;
}
