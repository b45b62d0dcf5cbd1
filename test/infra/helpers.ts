import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { PermissionViolationError } from '@nats-io/nats-core';
import { Bus } from '@vmsave/bus';
import { waitFor } from '@vmsave/testkit';
import { freePort, generateNatsPasswords, startNatsServer, type RunningServer } from '@vmsave/infra/servers';
import { executorUser, type Role } from '@vmsave/infra/permissions';

/** A private nats-server with the project's config, fresh passwords, a temp store; never the shared one. */
export interface PrivateNats {
  url: string;
  passwords: Record<Role, string>;
  /** The password of each executor host's user `executor-<host>` (none: the checked-in template, with the shared `executor` user). */
  executors: Record<string, string>;
  server: RunningServer;
  stop(): Promise<void>;
}

/**
 * `executors` given (host → password): the configuration `npm start` renders, one user per
 * executor host and no shared `executor`; otherwise the checked-in template infra/nats/nats.conf.
 */
export async function startPrivateNats(passwords: Record<Role, string> = generateNatsPasswords(), executors?: Record<string, string>): Promise<PrivateNats> {
  const dir = mkdtempSync(join(tmpdir(), 'vmsave-infra-nats-'));
  const port = await freePort();
  const server = await startNatsServer({ port, storeDir: join(dir, 'js'), passwords, executors, confPath: executors ? join(dir, 'nats.conf') : undefined });
  return {
    url: `nats://127.0.0.1:${port}`,
    passwords,
    executors: executors ?? {},
    server,
    async stop() {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A connection as one role, with every permission violation the server reported. */
export interface RoleConnection {
  role: Role;
  /** The NATS user (`executor-<host>` for an executor host). */
  user: string;
  bus: Bus;
  nc: NatsConnection;
  violations: PermissionViolationError[];
  close(): Promise<void>;
}

/** Connect as a role; `host` given, as that executor host's own user `executor-<host>`. */
export async function connectAs(nats: PrivateNats, role: Role, host?: string): Promise<RoleConnection> {
  const user = host === undefined ? role : executorUser(host);
  const pass = host === undefined ? nats.passwords[role] : nats.executors[host];
  if (pass === undefined) throw new Error(`no password for ${user} in this private NATS`);
  const bus = await Bus.connect({ servers: nats.url, user, pass, name: `infra-test-${user}` });
  const violations: PermissionViolationError[] = [];
  void (async () => {
    for await (const s of bus.nc.status()) {
      if (s.type === 'error' && s.error instanceof PermissionViolationError) violations.push(s.error);
    }
  })();
  return { role, user, bus, nc: bus.nc, violations, close: () => bus.close() };
}

/** Raw connection (for authentication tests). */
export function rawConnect(url: string, user?: string, pass?: string): Promise<NatsConnection> {
  return connect({ servers: url, user, pass, reconnect: false, timeout: 5000 });
}

/** A core publish the server must refuse: the violation arrives asynchronously on the status stream. */
export async function expectPublishDenied(c: RoleConnection, subject: string): Promise<void> {
  c.nc.publish(subject, 'x');
  await c.nc.flush();
  await waitFor(`${c.role}: permission violation for publish to ${subject}`, () => c.violations.find((v) => v.operation === 'publish' && v.subject === subject), 5000);
}

/** A subscription the server must refuse (the subscription ends with the error). */
export async function expectSubscribeDenied(c: RoleConnection, subject: string): Promise<void> {
  c.nc.subscribe(subject);
  await c.nc.flush();
  await waitFor(`${c.role}: permission violation for subscription to ${subject}`, () => c.violations.find((v) => v.operation === 'subscription' && v.subject === subject), 5000);
}

/** Nothing was refused for this subject (checked after a round trip to the server). */
export async function expectNoViolation(c: RoleConnection, subject: string): Promise<void> {
  await c.nc.flush();
  await new Promise((r) => setTimeout(r, 50));
  const v = c.violations.find((x) => x.subject === subject);
  if (v) throw new Error(`${c.role}: unexpected permission violation: ${v.message}`);
}
