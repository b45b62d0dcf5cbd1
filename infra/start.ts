/**
 * `npm start`: run the whole vmsave stack on this machine.
 *
 * 1. Loads `.vmsave/env` (secrets from `npm run setup`); variables already set in the
 *    environment win over the file.
 * 2. NATS (`chooseNats` in lib/nats-choice.ts has the whole table): when something answers at
 *    NATS_URL (default nats://127.0.0.1:4222) and refuses a client without credentials, it is
 *    used, with whatever NATS_USER / NATS_PASS the environment has; if none is set (a private
 *    server an earlier run left behind, docker compose's), each service connects as its role
 *    with the generated passwords. A NATS that lets an anonymous client in enforces no role: an
 *    explicit NATS_URL pointing at one is refused, the default URL is passed over for vmsave's
 *    own NATS on the next port (written to `<data dir>/nats.url` for the CLI while it runs), and
 *    `--insecure` uses it after one loud warning. When nothing answers, a private `nats-server`
 *    is started on that (loopback) port with `.vmsave/nats.conf`, rendered from
 *    infra/nats/permissions.ts with one user per role and, instead of the shared `executor`, the
 *    user `executor-<host>` of this stack's executor host (VMSAVE_HOST or the host name), and its
 *    data under `.vmsave/nats/`; each service then connects as its own user. The executor's
 *    password is derived from VMSAVE_NATS_EXECUTOR_SECRET (added to an older `.vmsave/env`
 *    that lacks it). Each service gets only its own secrets (lib/service-env.ts).
 * 3. Redis: the same with REDIS_URL (default redis://127.0.0.1:6379; VMSAVE_REDIS_PASS is added
 *    when the server answers NOAUTH); a private `redis-server` uses VMSAVE_REDIS_PASS and keeps
 *    its data under `.vmsave/redis/`.
 * 4. Starts every service that has `services/<name>/src/main.ts`, in the order scheduler,
 *    verifier, executor, dashboard (a service without one is skipped), as built JavaScript:
 *    `node services/<name>/dist/main.js` (`npm run build` makes it; a missing one stops
 *    start.ts with that advice); once each has logged that it runs, start.ts says "every
 *    service running". Lines a service writes
 *    are passed through: pino JSON lines unchanged (they name their service), any other line
 *    prefixed with `[name] `.
 * 5. Ctrl-C / SIGTERM stops the services in reverse order (SIGTERM, SIGKILL after a grace
 *    period), then the private servers. A service that dies is reported and the others keep
 *    running; when every service has died, start.ts stops the servers and exits 1.
 *
 * `--insecure`: accept a NATS that lets anonymous clients in (see 2.).
 *
 * `--check [--check-seconds N]`: start everything, wait N seconds (5), print a status table,
 * stop it all; exit 0 only when every started service was still running.
 *
 * `--dev` (`npm run dev`, for developers): the services run from their TypeScript sources
 * through tsx (`node --conditions=development --import tsx services/<name>/src/main.ts`), so
 * nothing needs building; tsx is a dev dependency, absent from a production install.
 *
 * First run: when the executor's VM directory holds no definition, a small `demo` VM (256 MiB,
 * q35, no disk, RAM content from a generated file under the executor's state directory) is
 * defined there; whenever that `demo` definition exists and VMSAVE_AUTOSTART is unset, the
 * executor starts it at boot (VMSAVE_AUTOSTART=demo), so `npx vmsave demo` has a VM to work on.
 * VMSAVE_NO_DEMO=1 turns this off.
 *
 * Overrides: VMSAVE_DATA_DIR (default `<repo>/.vmsave`) holds `env`, `nats/`, `redis/`;
 * VMSAVE_STOP_GRACE_MS (10000) is how long a service may take to stop.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { writeDemoVm } from '@vmsave/cli/demo-vm';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { passwordVar, roles, type Role } from './nats/permissions.ts';
import { readEnvFile } from './lib/env-file.ts';
import { REPO_ROOT, generateSecret, natsAccepts, portAnswers, probeNats, redisRequiresAuth, startNatsServer, startRedisServer, type RunningServer } from './lib/servers.ts';
import { DEFAULT_NATS_URL, chooseNats, insecureWarning, type NatsProbe } from './lib/nats-choice.ts';
import { EXECUTOR_SECRET_VAR, executorCredentials, executorHost, serviceEnv as baseServiceEnv } from './lib/service-env.ts';
import { isLoopback, natsEndpoints, redactUrl, redisEndpoint, redisUrlWithPassword } from './lib/urls.ts';

/** Services in start order; each connects to NATS as the role of the same name. */
const SERVICES = ['scheduler', 'verifier', 'executor', 'dashboard'] as const satisfies readonly Role[];
type ServiceName = (typeof SERVICES)[number];

const say = (msg: string) => process.stderr.write(`[start] ${msg}\n`);

class StartError extends Error {
  override name = 'StartError';
}

interface Args {
  check: boolean;
  checkSeconds: number;
  dev: boolean;
  /** Use a NATS that accepts anonymous clients (warned once, loudly) instead of refusing it. */
  insecure: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { check: false, checkSeconds: 5, dev: false, insecure: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--check') args.check = true;
    else if (a === '--dev') args.dev = true;
    else if (a === '--insecure') args.insecure = true;
    else if (a === '--check-seconds') {
      args.checkSeconds = Number(argv[++i]);
      if (!Number.isFinite(args.checkSeconds) || args.checkSeconds <= 0) throw new StartError('--check-seconds needs a positive number');
    } else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: npm start [-- [--check [--check-seconds N]] [--insecure]]   (npm run dev: the same from the sources, with --dev)\n');
      process.exit(0);
    } else throw new StartError(`unknown argument ${a} (try --help)`);
  }
  return args;
}

interface Service {
  name: ServiceName;
  /** Node's arguments that run it: its `dist/main.js`, or (`--dev`) tsx and its `src/main.ts`. */
  argv: string[];
  child?: ChildProcess;
  startedAt?: number;
  /** Set when it has logged that it runs (`<name> running`; the dashboard: `dashboard listening`). */
  ready?: boolean;
  /** Set once the process has exited. */
  exit?: { code: number | null; signal: NodeJS.Signals | null };
  exited?: Promise<void>;
}

interface Stack {
  env: NodeJS.ProcessEnv;
  dataDir: string;
  nats: {
    url: string;
    server?: RunningServer;
    passwords?: Record<Role, string>;
    /** The executor's own user `executor-<host>` and password, when the NATS has it. */
    executor?: { user: string; password: string };
    insecure?: boolean;
  };
  /** The bus host name of the executor this stack runs (passed to it as VMSAVE_HOST). */
  host: string;
  /** `<dataDir>/nats.url`, written while vmsave's own NATS runs on another port than the default URL's (the CLI reads it). */
  natsUrlFile?: string;
  redis: { url: string; server?: RunningServer };
  services: Service[];
  stopping: boolean;
}

async function anyAnswers(endpoints: { host: string; port: number }[]): Promise<boolean> {
  const answers = await Promise.all(endpoints.map((e) => portAnswers(e.host, e.port)));
  return answers.some(Boolean);
}

function need(env: NodeJS.ProcessEnv, key: string, dataDir: string): string {
  const v = env[key];
  if (!v) throw new StartError(`${key} is not set and not in ${join(dataDir, 'env')}: run \`npm run setup\` to generate local secrets`);
  return v;
}

async function startNats(stack: Stack, insecure: boolean): Promise<void> {
  const explicit = Boolean(stack.env.NATS_URL);
  let url = stack.env.NATS_URL || DEFAULT_NATS_URL;
  let fallbackFrom: string | undefined;
  // start.ts owns this file: one left by a run that was killed would send the CLI to a dead port.
  rmSync(join(stack.dataDir, 'nats.url'), { force: true });
  for (;;) {
    const endpoints = natsEndpoints(url);
    if (endpoints.length === 0) throw new StartError(`NATS_URL "${url}" names no server`);
    const first = endpoints[0]!;
    const servers = url
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const probe: NatsProbe = (await anyAnswers(endpoints)) ? await probeNats(servers) : { kind: 'none' };
    const choice = chooseNats(
      {
        url: redactUrl(url),
        explicit,
        probe,
        insecure,
        loopback: isLoopback(first.host),
        natsUser: Boolean(stack.env.NATS_USER),
        rolePasswords: roles.every((r) => stack.env[passwordVar(r)]),
        fallbackFrom,
      },
      first.port,
    );
    switch (choice.action) {
      case 'refuse':
        throw new StartError(choice.message);
      case 'fallback':
        say(`the NATS at ${redactUrl(url)} accepts anonymous clients (no role enforced): not using it; vmsave's own NATS, with one user per role, is at ${choice.url}`);
        fallbackFrom = redactUrl(url);
        url = choice.url;
        continue;
      case 'use-roles': {
        // A server with users but no credentials given (one an earlier `npm start` left behind, or
        // docker compose's): connect each service as its role with the generated passwords.
        const passwords = Object.fromEntries(roles.map((r) => [r, stack.env[passwordVar(r)]!])) as Record<Role, string>;
        stack.nats = { url, passwords };
        say(`using NATS at ${redactUrl(url)}, which requires users: each service connects as its role`);
        // A NATS an earlier `npm start` left behind has this host's executor user; docker
        // compose's has only the shared `executor` user (its config cannot know the hosts).
        const own = ownExecutor(stack);
        if (own && (await natsAccepts(servers, own.user, own.password))) stack.nats.executor = own;
        else say(`the NATS at ${redactUrl(url)} has no user ${own?.user ?? `executor-${stack.host}`}: the executor connects as the shared user executor`);
        break;
      }
      case 'use-env':
        if (probe.kind === 'error') say(`NATS at ${redactUrl(url)} answered a probe without credentials with: ${probe.message}`);
        stack.nats = { url };
        say(`using NATS at ${redactUrl(url)}${stack.env.NATS_USER ? ` as ${stack.env.NATS_USER}` : ''}`);
        break;
      case 'use-insecure':
        stack.nats = { url, insecure: true };
        warnInsecure(redactUrl(url));
        break;
      case 'start-private': {
        const passwords = Object.fromEntries(roles.map((r) => [r, need(stack.env, passwordVar(r), stack.dataDir)])) as Record<Role, string>;
        const storeDir = join(stack.dataDir, 'nats');
        say(`nothing answers at ${redactUrl(url)}: starting a private nats-server on 127.0.0.1:${first.port} (data in ${storeDir})`);
        // Warnings and errors only (permission violations show as `[ERR] … Violation`); the banner stays quiet.
        const onLine = (line: string) => {
          if (/\[(WRN|ERR|FTL)\]/.test(line) && !/Plaintext passwords/.test(line)) process.stderr.write(`[nats] ${line}\n`);
        };
        // The config is rendered into the data directory with one user for this host's executor (no shared `executor` user).
        const own = ownExecutor(stack);
        const executors = own ? { [stack.host]: own.password } : {};
        const shutdownSaveHosts = stack.env.VMSAVE_ON_SHUTDOWN === 'save' ? [stack.host] : [];
        const server = await startNatsServer({ port: first.port, storeDir, passwords, executors, shutdownSaveHosts, confPath: join(stack.dataDir, 'nats.conf'), onLine });
        stack.nats = { url: `nats://127.0.0.1:${first.port}`, server, passwords, executor: own };
        break;
      }
    }
    // vmsave's own NATS is not where the CLI looks by default: tell it (packages/cli reads this file when NATS_URL is unset).
    if (fallbackFrom !== undefined && stack.nats.passwords) {
      stack.natsUrlFile = join(stack.dataDir, 'nats.url');
      mkdirSync(stack.dataDir, { recursive: true });
      writeFileSync(stack.natsUrlFile, `${stack.nats.url}\n`);
      say(`wrote ${stack.natsUrlFile}: \`npx vmsave\` from this directory connects there (or set NATS_URL=${stack.nats.url})`);
    }
    return;
  }
}

/** This host's executor user and its password derived from the master secret (`VMSAVE_NATS_EXECUTOR_SECRET`). */
function ownExecutor(stack: Stack): { user: string; password: string } | undefined {
  const master = stack.env[EXECUTOR_SECRET_VAR];
  return master ? executorCredentials(master, stack.host) : undefined;
}

/**
 * An `.vmsave/env` written by an older set-up has no master secret of the executor users:
 * generate it and add it to the file (mode 600), as set-up would.
 */
function ensureExecutorSecret(stack: Stack, envFileExists: boolean): void {
  if (stack.env[EXECUTOR_SECRET_VAR] || !envFileExists) return;
  const secret = generateSecret(48);
  const file = join(stack.dataDir, 'env');
  // A file whose last line has no newline must not have the secret glued to that line.
  const sep = readFileSync(file, 'utf8').endsWith('\n') || statSync(file).size === 0 ? '' : '\n';
  appendFileSync(file, `${sep}${EXECUTOR_SECRET_VAR}=${secret}\n`, { mode: 0o600 });
  stack.env[EXECUTOR_SECRET_VAR] = secret;
  say(`generated ${EXECUTOR_SECRET_VAR} into ${join(stack.dataDir, 'env')} (the executor hosts' NATS passwords are derived from it)`);
}

/** `--insecure` on an anonymous NATS: once, loudly (a box on stderr and a pino `warn` line on stdout, like the services' logs). */
function warnInsecure(url: string): void {
  process.stderr.write(`${insecureWarning(url)}\n`);
  const line = { level: 40, time: Date.now(), service: 'start', pid: process.pid, msg: `NATS at ${url} accepts anonymous clients: running without any role enforced (--insecure)` };
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

async function startRedis(stack: Stack): Promise<void> {
  const url = stack.env.REDIS_URL || 'redis://127.0.0.1:6379';
  const ep = redisEndpoint(url);
  if (await portAnswers(ep.host, ep.port)) {
    const password = stack.env.VMSAVE_REDIS_PASS;
    if (!new URL(url).password && password && (await redisRequiresAuth(ep.host, ep.port))) {
      stack.redis = { url: redisUrlWithPassword(url, password) };
      say(`using Redis at ${redactUrl(url)} with the generated password (it requires one)`);
      return;
    }
    stack.redis = { url };
    say(`using Redis at ${redactUrl(url)}`);
    return;
  }
  if (!isLoopback(ep.host)) throw new StartError(`nothing answers at REDIS_URL ${redactUrl(url)}, and ${ep.host} is not this machine: start Redis there or fix REDIS_URL`);
  const password = need(stack.env, 'VMSAVE_REDIS_PASS', stack.dataDir);
  const dataDir = join(stack.dataDir, 'redis');
  say(`nothing answers at ${redactUrl(url)}: starting a private redis-server on 127.0.0.1:${ep.port} (data in ${dataDir})`);
  // Redis logs its start-up banner at warning level too: show real warnings and errors only.
  const onLine = (line: string) => {
    if (/ # .*(WARNING|error|fail|can't|cannot|bad )/i.test(line)) process.stderr.write(`[redis] ${line}\n`);
  };
  const server = await startRedisServer({ port: ep.port, dataDir, password, onLine });
  const local = new URL(url);
  local.hostname = '127.0.0.1';
  stack.redis = { url: redisUrlWithPassword(local.toString(), password), server };
}

/** The environment of one service: only its own secrets (`lib/service-env.ts`), its own NATS user when the NATS has roles. */
function serviceEnv(stack: Stack, name: ServiceName): NodeJS.ProcessEnv {
  const env = baseServiceEnv(stack.env, name, { natsUrl: stack.nats.url, natsPasswords: stack.nats.passwords, executorUser: stack.nats.executor, redisUrl: stack.redis.url });
  // The executor's VMs, QMP sockets and images live under the data directory unless configured.
  if (name === 'executor') {
    env.VMSAVE_HOST = stack.host;
    env.VMSAVE_STATE_DIR ||= join(stack.dataDir, 'executor');
    if (!env.VMSAVE_NO_DEMO && !env.VMSAVE_AUTOSTART && existsSync(join(executorVmDir(stack), 'demo.json'))) env.VMSAVE_AUTOSTART = 'demo';
  }
  return env;
}

function executorVmDir(stack: Stack): string {
  const stateDir = resolve(REPO_ROOT, stack.env.VMSAVE_STATE_DIR || join(stack.dataDir, 'executor'));
  return resolve(REPO_ROOT, stack.env.VMSAVE_VM_DIR || join(stateDir, 'vms'));
}

/** First run: define the `demo` VM when the executor has no VM at all (see the header). */
async function defineDemoVm(stack: Stack): Promise<void> {
  if (stack.env.VMSAVE_NO_DEMO) return;
  const vmDir = executorVmDir(stack);
  if (existsSync(vmDir) && readdirSync(vmDir).some((f) => f.endsWith('.json'))) return;
  mkdirSync(vmDir, { recursive: true });
  const def = await writeDemoVm(join(dirname(vmDir), 'demo'), { name: 'demo', memoryMiB: 256 });
  writeFileSync(join(vmDir, 'demo.json'), JSON.stringify(def, null, 2));
  say(`no VM defined yet: defined "demo" (${def.memoryMiB} MiB, ${def.machine}) in ${vmDir}; the executor starts it (try \`npx vmsave demo\`)`);
}

function pipeLines(name: string, from: NodeJS.ReadableStream | null, to: NodeJS.WritableStream, onLine?: (line: string) => void): void {
  if (!from) return;
  const rl = createInterface({ input: from, crlfDelay: Infinity });
  rl.on('line', (line) => {
    onLine?.(line);
    // pino lines carry their service already and stay machine-readable; anything else is labelled.
    to.write(line.startsWith('{') ? `${line}\n` : `[${name}] ${line}\n`);
  });
}

function startService(stack: Stack, svc: Service, onExit: (svc: Service) => void, onReady: (svc: Service) => void): void {
  const child = spawn(process.execPath, svc.argv, {
    // From the repository root, so relative paths in a service's settings mean the same for all.
    cwd: REPO_ROOT,
    env: serviceEnv(stack, svc.name),
    stdio: ['ignore', 'pipe', 'pipe'],
    // Own process group: a terminal's Ctrl-C reaches start.ts only, which stops services in order.
    detached: true,
  });
  svc.child = child;
  svc.startedAt = Date.now();
  const running = new RegExp(`"msg":"${svc.name} (running|listening)"`);
  pipeLines(svc.name, child.stdout, process.stdout, (line) => {
    if (svc.ready || !running.test(line)) return;
    svc.ready = true;
    onReady(svc);
  });
  pipeLines(svc.name, child.stderr, process.stderr);
  svc.exited = new Promise((resolveExit) => {
    child.once('exit', (code, signal) => {
      svc.exit = { code, signal };
      resolveExit();
      onExit(svc);
    });
    child.once('error', (err) => {
      say(`${svc.name} could not be started: ${err.message}`);
      if (!svc.exit) {
        svc.exit = { code: null, signal: null };
        resolveExit();
        onExit(svc);
      }
    });
  });
  const from = svc.argv.at(-1)!.endsWith('.ts') ? ', from its sources' : '';
  const user = svc.name === 'executor' && stack.nats.executor ? stack.nats.executor.user : svc.name;
  say(`started ${svc.name} (pid ${child.pid}${from})${stack.nats.passwords ? ` as NATS user ${user}` : ''}`);
}

async function stopService(svc: Service, graceMs: number): Promise<void> {
  const child = svc.child;
  if (!child || svc.exit) return;
  say(`stopping ${svc.name}`);
  child.kill('SIGTERM');
  const timer = setTimeout(() => {
    say(`${svc.name} did not stop within ${graceMs} ms: killing it`);
    killGroup(child, 'SIGKILL');
  }, graceMs);
  await svc.exited;
  clearTimeout(timer);
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    child.kill(signal);
  }
}

function describeExit(svc: Service): string {
  if (!svc.exit) return 'running';
  return svc.exit.signal ? `exited (${svc.exit.signal})` : `exited (code ${svc.exit.code})`;
}

async function stopAll(stack: Stack): Promise<void> {
  const grace = Number(stack.env.VMSAVE_STOP_GRACE_MS ?? 10_000) || 10_000;
  for (const svc of [...stack.services].reverse()) await stopService(svc, grace);
  for (const s of [stack.redis.server, stack.nats.server]) {
    if (!s) continue;
    say(`stopping private ${s.name}`);
    await s.stop(grace);
  }
  removeNatsUrlFile(stack);
}

function removeNatsUrlFile(stack: Stack): void {
  if (stack.natsUrlFile) rmSync(stack.natsUrlFile, { force: true });
  stack.natsUrlFile = undefined;
}

function printTable(stack: Stack, skipped: ServiceName[]): void {
  const rows: [string, string, string][] = [['component', 'state', 'detail']];
  const natsDetail = stack.nats.server
    ? `127.0.0.1:${stack.nats.server.port}, one user per role`
    : `${redactUrl(stack.nats.url)}${stack.nats.insecure ? ', ANONYMOUS (--insecure)' : ''}`;
  rows.push(['nats', stack.nats.server ? 'private' : 'external', natsDetail]);
  rows.push(['redis', stack.redis.server ? 'private' : 'external', stack.redis.server ? `127.0.0.1:${stack.redis.server.port}, password` : redactUrl(stack.redis.url)]);
  for (const svc of stack.services) {
    const up = svc.startedAt ? `${((Date.now() - svc.startedAt) / 1000).toFixed(1)} s` : '';
    rows.push([svc.name, describeExit(svc), svc.exit ? '' : `pid ${svc.child?.pid}, up ${up}`]);
  }
  for (const name of skipped) rows.push([name, 'skipped', `no services/${name}/src/main.ts`]);
  const w = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => c.padEnd(w[i]!))
      .join('  ')
      .trimEnd();
  process.stdout.write(`${line(rows[0]!)}\n${w.map((n) => '-'.repeat(n)).join('  ')}\n${rows.slice(1).map(line).join('\n')}\n`);
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  if (!args.dev) {
    const unbuilt = SERVICES.filter((n) => existsSync(join(REPO_ROOT, 'services', n, 'src', 'main.ts')) && !existsSync(join(REPO_ROOT, 'services', n, 'dist', 'main.js')));
    if (unbuilt.length) throw new StartError(`${unbuilt.map((n) => `services/${n}/dist/main.js`).join(', ')} missing: run npm run build (or npm run setup) first`);
  }
  const dataDir = resolve(process.env.VMSAVE_DATA_DIR || join(REPO_ROOT, '.vmsave'));
  const fromFile = readEnvFile(join(dataDir, 'env'));
  if (!fromFile) say(`no ${join(dataDir, 'env')} (run \`npm run setup\`): using the environment only`);
  const stack: Stack = {
    env: { ...fromFile, ...process.env },
    dataDir,
    nats: { url: '' },
    host: '',
    redis: { url: '' },
    services: [],
    stopping: false,
  };

  stack.host = executorHost(stack.env);
  ensureExecutorSecret(stack, fromFile !== undefined);

  let finish!: (code: number) => void;
  const finished = new Promise<number>((r) => (finish = r));
  const shutdown = async (why: string, code: number) => {
    if (stack.stopping) return;
    stack.stopping = true;
    say(`${why}: stopping everything`);
    await stopAll(stack);
    finish(code);
  };
  let firstSignalAt = 0;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      // A terminal's Ctrl-C can arrive twice within milliseconds (from the terminal and relayed
      // by npm / tsx): only a signal a moment after the first means "kill it now".
      if (firstSignalAt && Date.now() - firstSignalAt < 1000) return;
      if (firstSignalAt) {
        say(`${sig} again: killing everything now`);
        for (const svc of stack.services) if (svc.child && !svc.exit) killGroup(svc.child, 'SIGKILL');
        for (const s of [stack.redis.server, stack.nats.server]) if (s) killGroup(s.process, 'SIGKILL');
        process.exit(130);
      }
      firstSignalAt = Date.now();
      void shutdown(sig, 0);
    });
  }
  // Last resort if start.ts itself fails: leave no process behind.
  process.on('exit', () => {
    for (const svc of stack.services) if (svc.child && !svc.exit) killGroup(svc.child, 'SIGKILL');
    for (const s of [stack.redis.server, stack.nats.server]) if (s && s.process.exitCode === null && s.process.signalCode === null) killGroup(s.process, 'SIGKILL');
    removeNatsUrlFile(stack);
  });

  try {
    await startNats(stack, args.insecure);
    await startRedis(stack);
  } catch (err) {
    await stopAll(stack);
    throw err;
  }
  if (stack.stopping) return finished;
  await defineDemoVm(stack);

  const skipped: ServiceName[] = [];
  // Sources run through tsx, resolving other packages to their sources too (the `development` export condition).
  const tsxLoader = args.dev ? import.meta.resolve('tsx') : undefined;
  for (const name of SERVICES) {
    const dir = join(REPO_ROOT, 'services', name);
    if (!existsSync(join(dir, 'src', 'main.ts'))) {
      skipped.push(name);
      continue;
    }
    // The scheduler holds every open job in one heap: V8's parallel GC paused it for seconds under a burst (docs/scheduler.md).
    const node = name === 'scheduler' ? ['--single-threaded-gc'] : [];
    stack.services.push({
      name,
      argv: tsxLoader ? [...node, '--conditions=development', '--import', tsxLoader, join(dir, 'src', 'main.ts')] : [...node, join(dir, 'dist', 'main.js')],
    });
  }
  if (skipped.length) say(`skipping ${skipped.join(', ')}: no src/main.ts`);
  if (stack.services.length === 0) say('no service to start: the servers keep running until Ctrl-C');
  const onExit = (svc: Service) => {
    if (stack.stopping) {
      say(`${svc.name} ${describeExit(svc)}`);
      return;
    }
    const alive = stack.services.filter((s) => !s.exit);
    say(`!!! ${svc.name} ${describeExit(svc)} unexpectedly; ${alive.length ? `still running: ${alive.map((s) => s.name).join(', ')}` : 'no service is left'}`);
    if (alive.length === 0 && !args.check) void shutdown('every service has died', 1);
  };
  for (const svc of stack.services) {
    if (stack.stopping) break;
    startService(stack, svc, onExit, () => {
      if (!stack.stopping && stack.services.every((s) => s.ready)) say(`every service running${args.check ? '' : ' (Ctrl-C stops everything)'}`);
    });
  }

  if (args.check) {
    await Promise.race([new Promise((r) => setTimeout(r, args.checkSeconds * 1000)), finished]);
    if (!stack.stopping) {
      printTable(stack, skipped);
      const dead = stack.services.filter((s) => s.exit);
      await shutdown('check done', dead.length ? 1 : 0);
    }
  }
  return finished;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    say(err instanceof StartError ? err.message : `failed: ${(err as Error)?.stack ?? String(err)}`);
    process.exit(1);
  },
);
