/**
 * Private NATS and Redis servers for `npm start` and the infra tests: started as child
 * processes on loopback, with the project's configuration and generated passwords.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createServer, connect as tcpConnect } from 'node:net';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { executorPasswordVar, renderNatsConf, roles, passwordVar, type Role } from '../nats/permissions.ts';

/**
 * The repository root: the nearest directory above this module holding `infra/nats/nats.conf`.
 * Found by walking up because this module runs both as `infra/lib/servers.ts` (tests, `npm run
 * dev`) and as `infra/dist/lib/servers.js` (`npm start`).
 */
export const REPO_ROOT = findRepoRoot(dirname(fileURLToPath(import.meta.url)));

function findRepoRoot(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'infra', 'nats', 'nats.conf'))) return `${dir}/`;
    if (dirname(dir) === dir) throw new Error(`no infra/nats/nats.conf in ${from} or any directory above it`);
  }
}
export const NATS_CONF = join(REPO_ROOT, 'infra/nats/nats.conf');
export const REDIS_CONF = join(REPO_ROOT, 'infra/redis/redis.conf');

/** A random secret of letters and digits (the same alphabet infra/setup.sh uses). */
export function generateSecret(length = 32): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = randomBytes(length * 2);
  let out = '';
  // Rejection sampling keeps the distribution uniform.
  for (const b of bytes) {
    if (b < 248 && out.length < length) out += alphabet[b % 62];
  }
  return out.length === length ? out : generateSecret(length);
}

/**
 * A value for a `$VARIABLE` of nats.conf. nats-server parses a variable's value as a config
 * value, so a secret such as `2fX…` is a parse error and `true` a boolean; quoted, it is
 * always the string itself.
 */
export function natsConfString(value: string): string {
  return `"${value}"`;
}

/** Fresh passwords for every NATS role, keyed by role. */
export function generateNatsPasswords(): Record<Role, string> {
  return Object.fromEntries(roles.map((r) => [r, generateSecret()])) as Record<Role, string>;
}

/** Does something accept TCP connections at host:port (within `timeoutMs`)? */
export function portAnswers(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ host, port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** A TCP port that is free on loopback right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** Find an executable on PATH, then in the sbin directories Debian installs daemons into. */
export function findExecutable(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface RunningServer {
  name: string;
  port: number;
  process: ChildProcess;
  /** The last lines the server wrote (for error messages). */
  output(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
}

function track(name: string, port: number, child: ChildProcess, ready: RegExp, timeoutMs: number, onLine?: (line: string) => void): Promise<RunningServer> {
  const lines: string[] = [];
  let exited = false;
  const exitP = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  const server: RunningServer = {
    name,
    port,
    process: child,
    output: () => lines.join('\n'),
    async stop(graceMs = 10_000) {
      if (exited) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exitP;
      clearTimeout(t);
    },
  };
  return new Promise((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => fail(new Error(`${name} did not become ready within ${timeoutMs} ms:\n${server.output()}`)), timeoutMs);
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      void server.stop(1000).then(() => reject(err));
    };
    const onData = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        lines.push(line);
        if (lines.length > 50) lines.shift();
        onLine?.(line);
        if (!settled && ready.test(line)) {
          settled = true;
          clearTimeout(timer);
          resolve(server);
        }
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('error', (err) => fail(new Error(`${name} could not be started: ${err.message}`)));
    // 'close', not 'exit': by then everything the server wrote has been read (its last words say why).
    child.once('close', (code, signal) => fail(new Error(`${name} exited (${signal ?? `code ${code}`}) before it was ready:\n${server.output()}`)));
  });
}

export interface NatsServerOptions {
  port: number;
  /** JetStream store directory (created if missing). */
  storeDir: string;
  passwords: Record<Role, string>;
  /**
   * One `executor-<host>` user per host, with its password (`npm start`: the hosts it runs). Given,
   * the configuration is rendered to `confPath` with these users and without the shared
   * `executor` user; absent, the checked-in template infra/nats/nats.conf is used.
   */
  executors?: Record<string, string>;
  /** Executor hosts that save their VMs at shutdown (`VMSAVE_ON_SHUTDOWN=save`): granted the save/restore/cancel commands. */
  shutdownSaveHosts?: readonly string[];
  /** Where the rendered configuration goes (default `nats.conf` beside `storeDir`); never in the repository. */
  confPath?: string;
  host?: string;
  timeoutMs?: number;
  /** Every line the server logs (e.g. to show warnings and permission violations). */
  onLine?: (line: string) => void;
}

/**
 * Start `nats-server` with infra/nats/nats.conf (or, with `executors`, a configuration rendered
 * from the same table with one user per executor host): JetStream on, the role users with their
 * permissions, passwords passed in the server's environment (never on its command line nor in
 * the file).
 */
export function startNatsServer(opts: NatsServerOptions): Promise<RunningServer> {
  const bin = findExecutable('nats-server');
  if (!bin) return Promise.reject(new Error('nats-server is not installed: run `npm run setup`'));
  mkdirSync(opts.storeDir, { recursive: true });
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '' };
  for (const r of roles) {
    const password = opts.passwords[r];
    if (!/^[A-Za-z0-9]+$/.test(password)) return Promise.reject(new Error(`the NATS password of role ${r} must be letters and digits only`));
    env[passwordVar(r)] = natsConfString(password);
  }
  let conf = NATS_CONF;
  if (opts.executors) {
    const hosts = Object.keys(opts.executors);
    let text: string;
    try {
      text = renderNatsConf({ hosts, shutdownSaveHosts: opts.shutdownSaveHosts });
    } catch (err) {
      return Promise.reject(err);
    }
    for (const host of hosts) {
      const password = opts.executors[host]!;
      if (!/^[A-Za-z0-9]+$/.test(password)) return Promise.reject(new Error(`the NATS password of executor host ${host} must be letters and digits only`));
      env[executorPasswordVar(host)] = natsConfString(password);
    }
    conf = opts.confPath ?? join(dirname(opts.storeDir), 'nats.conf');
    mkdirSync(dirname(conf), { recursive: true });
    writeFileSync(conf, text, { mode: 0o600 });
  }
  const child = spawn(bin, ['-c', conf, '-a', opts.host ?? '127.0.0.1', '-p', String(opts.port), '-js', '-sd', opts.storeDir], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
    // Own process group: a Ctrl-C in the terminal reaches start.ts only, which stops servers last.
    detached: true,
  });
  return track('nats-server', opts.port, child, /Server is ready/, opts.timeoutMs ?? 20_000, opts.onLine);
}

export interface RedisServerOptions {
  port: number;
  dataDir: string;
  password: string;
  host?: string;
  timeoutMs?: number;
  onLine?: (line: string) => void;
}

/**
 * Start `redis-server` with infra/redis/redis.conf; the password is written to its stdin
 * (`redis-server FILE … -` reads more configuration from stdin), so it never shows in `ps`.
 */
export function startRedisServer(opts: RedisServerOptions): Promise<RunningServer> {
  const bin = findExecutable('redis-server');
  if (!bin) return Promise.reject(new Error('redis-server is not installed: run `npm run setup`'));
  if (!/^[A-Za-z0-9]+$/.test(opts.password)) return Promise.reject(new Error('the Redis password must be letters and digits only'));
  mkdirSync(opts.dataDir, { recursive: true });
  const child = spawn(bin, [REDIS_CONF, '--bind', opts.host ?? '127.0.0.1', '--port', String(opts.port), '--dir', opts.dataDir, '-'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  child.stdin?.end(`requirepass ${opts.password}\n`);
  return track('redis-server', opts.port, child, /Ready to accept connections/, opts.timeoutMs ?? 20_000, opts.onLine);
}

/**
 * Does the NATS server at `servers` refuse a connection without credentials? (Then it is one
 * with users, e.g. a private server left running by an earlier `npm start`, or docker compose's.)
 */
export async function natsRequiresAuth(servers: string[]): Promise<boolean> {
  return (await probeNats(servers)).kind === 'auth';
}

/**
 * Connect to `servers` without any credentials: `anonymous` when the server lets such a client
 * in (it enforces no role), `auth` when it refuses it for lack of credentials, `error` otherwise.
 * Call it only once something answers (`portAnswers`).
 */
export async function probeNats(servers: string[]): Promise<{ kind: 'anonymous' } | { kind: 'auth' } | { kind: 'error'; message: string }> {
  const { connect } = await import('@nats-io/transport-node');
  try {
    const nc = await connect({ servers, reconnect: false, timeout: 3000, name: 'vmsave-start-probe' });
    await nc.close();
    return { kind: 'anonymous' };
  } catch (err) {
    const message = String((err as Error)?.message ?? err);
    return /authoriz|authentic/i.test(message) ? { kind: 'auth' } : { kind: 'error', message };
  }
}

/** Does the NATS at `servers` let `user` in with `pass`? (False when it refuses them; other failures throw.) */
export async function natsAccepts(servers: string[], user: string, pass: string): Promise<boolean> {
  const { connect } = await import('@nats-io/transport-node');
  try {
    const nc = await connect({ servers, user, pass, reconnect: false, timeout: 3000, name: 'vmsave-start-probe' });
    await nc.close();
    return true;
  } catch (err) {
    if (/authoriz|authentic/i.test(String((err as Error)?.message ?? err))) return false;
    throw err;
  }
}

/** Does the Redis at host:port answer `PING` with NOAUTH (a password is required)? */
export function redisRequiresAuth(host: string, port: number, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ host, port });
    let buf = '';
    const done = (v: boolean) => {
      s.destroy();
      resolve(v);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      if (buf.includes('\r\n')) done(buf.startsWith('-NOAUTH'));
    });
    s.once('error', () => done(false));
  });
}
