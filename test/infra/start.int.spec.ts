/**
 * `npm start` (infra/start.ts built to infra/dist/start.js, starting each service's dist/main.js)
 * with private NATS and Redis on free loopback ports and a temp data directory holding freshly
 * generated secrets: the shared servers are never touched. Needs `npm run build` (turbo runs the
 * builds before this package's tests).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bus } from '@vmsave/bus';
import { VmsaveClient } from '@vmsave/client';
import { uniq, waitFor } from '@vmsave/testkit';
import { REPO_ROOT, findExecutable, freePort, generateNatsPasswords, generateSecret, portAnswers, startNatsServer, startRedisServer } from '@vmsave/infra/servers';
import { passwordVar, roles, type Role } from '@vmsave/infra/permissions';
import { EXECUTOR_SECRET_VAR, executorPassword } from '@vmsave/infra/service-env';

const SERVICES = ['scheduler', 'verifier', 'executor', 'dashboard'];
const present = SERVICES.filter((s) => existsSync(join(REPO_ROOT, 'services', s, 'src', 'main.ts')));

interface Run {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

let dataDir: string;
let passwords: Record<Role, string>;
let redisPass: string;
let dashboardToken: string;

beforeAll(() => {
  for (const f of ['infra/dist/start.js', ...present.map((s) => `services/${s}/dist/main.js`)]) {
    if (!existsSync(join(REPO_ROOT, f))) throw new Error(`${f} is missing: run npm run build first`);
  }
  dataDir = mkdtempSync(join(tmpdir(), 'vmsave-start-'));
  passwords = generateNatsPasswords();
  redisPass = generateSecret();
  dashboardToken = generateSecret();
  const lines = [`VMSAVE_DASHBOARD_TOKEN=${dashboardToken}`, ...roles.map((r) => `${passwordVar(r)}=${passwords[r]}`), `VMSAVE_REDIS_PASS=${redisPass}`];
  writeFileSync(join(dataDir, 'env'), `${lines.join('\n')}\n`, { mode: 0o600 });
});
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

function startStack(args: string[], env: Record<string, string>, dir = dataDir): Run {
  const base = { ...process.env };
  for (const k of ['NATS_URL', 'REDIS_URL', 'NATS_USER', 'NATS_PASS']) delete base[k];
  // What `npm start` runs (without npm in between, so a signal reaches start.js itself).
  const child = spawn(process.execPath, ['infra/dist/start.js', ...args], {
    cwd: REPO_ROOT,
    // No demo VM: the start tests check the services; an autostarted QEMU would outlive them.
    env: { ...base, VMSAVE_DATA_DIR: dir, VMSAVE_DASHBOARD_PORT: '0', VMSAVE_LOG_LEVEL: 'info', VMSAVE_NO_DEMO: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, output: () => out, exited };
}

/** Wait for the stack's output to show something; on timeout the error carries the output's tail. */
async function waitForOutput(run: Run, what: string, check: (out: string) => boolean, timeoutMs = 60_000): Promise<void> {
  try {
    await waitFor(what, () => check(run.output()), timeoutMs, 100);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n--- npm start output (tail) ---\n${run.output().slice(-4000)}`);
  }
}

/** The boxed warning of `--insecure` (its first line). */
const INSECURE_BANNER = 'WARNING: RUNNING WITHOUT NATS AUTHENTICATION (--insecure)';

/** A process's environment, as anyone allowed to read `/proc/<pid>/environ` sees it. */
function environOf(pid: number): Record<string, string> {
  const text = readFileSync(`/proc/${pid}/environ`, 'utf8');
  return Object.fromEntries(
    text
      .split('\0')
      .filter(Boolean)
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
  );
}

/** A nats-server without any user: it accepts anonymous clients (the machine's default NATS is one). */
async function startAnonymousNats(port: number, dir: string): Promise<ChildProcess> {
  const bin = findExecutable('nats-server');
  if (!bin) throw new Error('nats-server is not installed');
  const child = spawn(bin, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', join(dir, 'anon-js')], { stdio: 'ignore' });
  await waitFor('the anonymous nats-server', () => portAnswers('127.0.0.1', port), 20_000, 100);
  return child;
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await gone;
}

async function ports() {
  const nats = await freePort();
  const redis = await freePort();
  return { nats, redis, env: { NATS_URL: `nats://127.0.0.1:${nats}`, REDIS_URL: `redis://127.0.0.1:${redis}` } };
}

describe('npm start', () => {
  it('--check starts private servers and every service, reports them running, and stops it all', async () => {
    const p = await ports();
    // A `nats.url` left by a killed run (the CLI would follow it to a dead port) is removed.
    writeFileSync(join(dataDir, 'nats.url'), 'nats://127.0.0.1:1\n');
    const run = startStack(['--check', '--check-seconds', '5'], p.env);
    const code = await run.exited;
    const out = run.output();
    expect(code, out).toBe(0);
    expect(existsSync(join(dataDir, 'nats.url'))).toBe(false);
    // An env file from before the executor users (no master secret) keeps working: npm start adds the secret.
    expect(readFileSync(join(dataDir, 'env'), 'utf8')).toMatch(new RegExp(`^${EXECUTOR_SECRET_VAR}=[A-Za-z0-9]{48}$`, 'm'));
    expect(out).toContain(`generated ${EXECUTOR_SECRET_VAR} into`);
    // Its NATS config is rendered into the data directory, with this host's executor user and no password.
    const conf = readFileSync(join(dataDir, 'nats.conf'), 'utf8');
    expect(conf).toMatch(/\{ user: "executor-[^"]+", password: \$VMSAVE_NATS_PASS_EXECUTOR_HOST_/);
    expect(conf).not.toContain('{ user: "executor",');
    expect(conf).not.toMatch(/password:\s*"/);
    expect(out).toMatch(/nats\s+private/);
    expect(out).toMatch(/redis\s+private/);
    for (const s of present) {
      expect(out).toMatch(new RegExp(`^${s}\\s+running`, 'm'));
      expect(out).toContain(`started ${s} (pid`);
    }
    for (const s of SERVICES.filter((x) => !present.includes(x))) expect(out).toMatch(new RegExp(`^${s}\\s+skipped`, 'm'));
    // Stopped in reverse order of start, then the servers.
    const order = [...out.matchAll(/\[start\] stopping (\S+)/g)].map((m) => m[1]);
    expect(order).toEqual([...present].reverse().concat(['private', 'private']));
    expect(out).not.toMatch(/Violation/i);
    // Its own NATS has the roles: nothing to warn about.
    expect(out).not.toContain(INSECURE_BANNER);
    expect(out).not.toContain('"level":40');
    expect(await portAnswers('127.0.0.1', p.nats)).toBe(false);
    expect(await portAnswers('127.0.0.1', p.redis)).toBe(false);
  });

  it('runs the stack with role users: the client library request reaches the scheduler, which answers and logs it; SIGTERM stops cleanly', async () => {
    const p = await ports();
    const host = 'start-test-host';
    const run = startStack([], { ...p.env, VMSAVE_HOST: host });
    try {
      await waitForOutput(run, 'every service started', (out) => present.every((s) => out.includes(`started ${s} (pid`)));
      if (present.includes('scheduler')) await waitForOutput(run, 'the scheduler running', (out) => out.includes('"msg":"scheduler running"'));
      await waitForOutput(run, 'every service running', (out) => out.includes('[start] every service running'));
      expect(run.output()).not.toContain('from its sources');

      // Each service holds only its own secrets (what anyone who may read /proc/<pid>/environ sees).
      const master = /^VMSAVE_NATS_EXECUTOR_SECRET=(\S+)$/m.exec(readFileSync(join(dataDir, 'env'), 'utf8'))?.[1];
      expect(master).toBeTruthy();
      for (const s of present) {
        const pid = Number(new RegExp(`started ${s} \\(pid (\\d+)`).exec(run.output())?.[1]);
        const env = environOf(pid);
        // The executor connects as its host's own user, with the password derived for that host only.
        if (s === 'executor') {
          expect(env).toMatchObject({ NATS_USER: `executor-${host}`, NATS_PASS: executorPassword(master!, host), VMSAVE_HOST: host });
          expect(run.output()).toContain(`as NATS user executor-${host}`);
        } else expect(env, s).toMatchObject({ NATS_USER: s, NATS_PASS: passwords[s as Role] });
        expect(env[EXECUTOR_SECRET_VAR], s).toBeUndefined();
        expect(readFileSync(`/proc/${pid}/environ`, 'utf8'), `${s} holds the master secret`).not.toContain(master!);
        for (const r of roles) expect(env[passwordVar(r)], `${s}: ${passwordVar(r)}`).toBeUndefined();
        expect(env.VMSAVE_REDIS_PASS, s).toBeUndefined();
        const raw = readFileSync(`/proc/${pid}/environ`, 'utf8');
        for (const r of roles.filter((x) => x !== s)) expect(raw, `${s} holds the ${r} password`).not.toContain(passwords[r]);
        if (s === 'scheduler' || s === 'dashboard') expect(env.REDIS_URL, s).toContain(redisPass);
        else expect(raw, `${s} holds the Redis password`).not.toContain(redisPass);
        if (s === 'dashboard') expect(env.VMSAVE_DASHBOARD_TOKEN).toBe(dashboardToken);
        else expect(raw, `${s} holds the dashboard token`).not.toContain(dashboardToken);
      }

      const bus = await Bus.connect({ servers: p.env.NATS_URL, user: 'client', pass: passwords.client, name: 'start-test-client' });
      try {
        // The client library, as the `client` role: publish, admission reply on its inbox, the job's log.
        const client = new VmsaveClient(bus);
        const requestId = uniq('req');
        const { jobId, admission } = await client.save({ requestId, vm: 'no-such-vm' }, { admissionTimeoutMs: 30_000 });
        if (present.includes('scheduler')) {
          expect(admission).toMatchObject({ requestId });
          const history = await waitFor(
            'the job in the log',
            async () => {
              const h = await client.history(jobId);
              return h.length ? h : undefined;
            },
            30_000,
            200,
          );
          expect(history[0]!.type).toBe('SaveRequested');
        }
      } finally {
        await bus.close();
      }
    } finally {
      run.child.kill('SIGTERM');
    }
    const code = await run.exited;
    const out = run.output();
    expect(code, out).toBe(0);
    expect(out).not.toMatch(/Violation/i);
    expect(out).not.toContain('unexpectedly');
    expect(await portAnswers('127.0.0.1', p.nats)).toBe(false);
    expect(await portAnswers('127.0.0.1', p.redis)).toBe(false);
  });

  it("uses servers that already run with vmsave's users (a left-over private pair, docker compose's) with each role's credentials", async () => {
    const p = await ports();
    const dir = mkdtempSync(join(tmpdir(), 'vmsave-start-ext-'));
    const nats = await startNatsServer({ port: p.nats, storeDir: join(dir, 'nats'), passwords });
    const redis = await startRedisServer({ port: p.redis, dataDir: join(dir, 'redis'), password: redisPass });
    try {
      const run = startStack(['--check', '--check-seconds', '4'], p.env);
      const code = await run.exited;
      const out = run.output();
      expect(code, out).toBe(0);
      expect(out).toContain('which requires users: each service connects as its role');
      // This template-configured server (as docker compose's) has only the shared executor user.
      if (present.includes('executor')) expect(out).toMatch(/has no user executor-\S+: the executor connects as the shared user executor/);
      expect(out).toContain('with the generated password (it requires one)');
      expect(out).toMatch(/nats\s+external/);
      for (const s of present) expect(out).toMatch(new RegExp(`^${s}\\s+running`, 'm'));
      expect(nats.output()).not.toMatch(/Violation/);
      // Not ours: still running.
      expect(await portAnswers('127.0.0.1', p.nats)).toBe(true);
      expect(await portAnswers('127.0.0.1', p.redis)).toBe(true);
    } finally {
      await redis.stop();
      await nats.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("on a NATS an earlier npm start left behind (one user per executor host), the executor connects as its host's user", async () => {
    const p = await ports();
    const dir = mkdtempSync(join(tmpdir(), 'vmsave-start-left-'));
    const host = 'left-over-host';
    const master = generateSecret(48);
    const nats = await startNatsServer({ port: p.nats, storeDir: join(dir, 'nats'), passwords, executors: { [host]: executorPassword(master, host) } });
    const redis = await startRedisServer({ port: p.redis, dataDir: join(dir, 'redis'), password: redisPass });
    try {
      const run = startStack(['--check', '--check-seconds', '4'], { ...p.env, VMSAVE_HOST: host, [EXECUTOR_SECRET_VAR]: master });
      const code = await run.exited;
      const out = run.output();
      expect(code, out).toBe(0);
      expect(out).toContain('which requires users: each service connects as its role');
      expect(out).not.toContain('connects as the shared user executor');
      if (present.includes('executor')) {
        expect(out).toContain(`started executor (pid`);
        expect(out).toContain(`as NATS user executor-${host}`);
        expect(out).toMatch(/^executor\s+running/m);
      }
      expect(nats.output()).not.toMatch(/Violation/);
    } finally {
      await redis.stop();
      await nats.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a NATS_URL that accepts anonymous clients, saying why and how to proceed', async () => {
    const p = await ports();
    const dir = mkdtempSync(join(tmpdir(), 'vmsave-start-anon-'));
    const anon = await startAnonymousNats(p.nats, dir);
    try {
      const run = startStack(['--check', '--check-seconds', '3'], p.env);
      const code = await run.exited;
      const out = run.output();
      expect(code, out).toBe(1);
      expect(out).toContain(`the NATS at NATS_URL nats://127.0.0.1:${p.nats} accepts clients without user or password, so no role is enforced`);
      expect(out).toContain('npm start -- --insecure');
      expect(out).not.toContain('started scheduler');
      // Refused before Redis: nothing was started.
      expect(await portAnswers('127.0.0.1', p.redis)).toBe(false);
    } finally {
      await stopProcess(anon);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('with --insecure uses an anonymous NATS and warns once, loudly (a box on stderr, a warn log line)', async () => {
    const p = await ports();
    const dir = mkdtempSync(join(tmpdir(), 'vmsave-start-insecure-'));
    const anon = await startAnonymousNats(p.nats, dir);
    try {
      const run = startStack(['--insecure', '--check', '--check-seconds', '4'], p.env);
      const code = await run.exited;
      const out = run.output();
      expect(code, out).toBe(0);
      expect(out.split(INSECURE_BANNER).length - 1).toBe(1);
      expect(out).toContain(`The NATS at nats://127.0.0.1:${p.nats} accepts clients without user or password.`);
      const warns = out.split('\n').filter((l) => l.startsWith('{') && JSON.parse(l).service === 'start');
      expect(warns).toHaveLength(1);
      expect(JSON.parse(warns[0]!)).toMatchObject({ level: 40, msg: expect.stringContaining('accepts anonymous clients') });
      expect(out).toMatch(/nats\s+external\s+\S+, ANONYMOUS \(--insecure\)/);
      for (const s of present) expect(out).toMatch(new RegExp(`^${s}\\s+running`, 'm'));
    } finally {
      await stopProcess(anon);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // The README's `npm run setup && npm start` on a machine whose default NATS (127.0.0.1:4222)
  // accepts anonymous clients, NATS_URL unset. Run in a network namespace of its own, so that the
  // default ports are this test's alone.
  const netns = spawnSync('unshare', ['-n', 'true']).status === 0;
  it.runIf(netns)('NATS_URL unset and the default NATS anonymous: runs its own NATS with the roles on the next port, and the CLI finds it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmsave-start-default-'));
    try {
      writeFileSync(join(dir, 'env'), readFileSync(join(dataDir, 'env')), { mode: 0o600 });
      const script = [
        'set -u',
        'ip link set lo up',
        `"${findExecutable('nats-server')}" -a 127.0.0.1 -p 4222 -js -sd "$DIR/anon-js" >/dev/null 2>&1 & anon=$!`,
        'for i in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.1; done',
        // Long enough for the CLI below, run from its sources through tsx (slow on a loaded machine), to finish while the stack runs.
        `"${process.execPath}" infra/dist/start.js --check --check-seconds 30 > "$DIR/out" 2>&1 & start=$!`,
        'for i in $(seq 1 300); do grep -q "every service running" "$DIR/out" && break; sleep 0.1; done',
        'echo "url-file: $(cat "$DIR/nats.url" 2>/dev/null)"',
        `VMSAVE_CLI_FROM_SOURCE=1 "${process.execPath}" packages/cli/bin/vmsave.js hosts --json > "$DIR/hosts" 2>&1; echo "cli: $?"`,
        'wait $start; echo "start: $?"',
        'kill $anon; wait $anon 2>/dev/null',
        'echo "url-file-after: $(ls "$DIR/nats.url" 2>/dev/null)"',
      ].join('\n');
      const env: NodeJS.ProcessEnv = { ...process.env, DIR: dir, VMSAVE_DATA_DIR: dir, VMSAVE_DASHBOARD_PORT: '0', VMSAVE_NO_DEMO: '1' };
      for (const k of ['NATS_URL', 'REDIS_URL', 'NATS_USER', 'NATS_PASS']) delete env[k];
      const r = spawnSync('unshare', ['-n', 'bash', '-c', script], { cwd: REPO_ROOT, env, encoding: 'utf8', timeout: 180_000 });
      const out = existsSync(join(dir, 'out')) ? readFileSync(join(dir, 'out'), 'utf8') : '';
      const all = `${r.stdout}\n${r.stderr}\n--- npm start ---\n${out}\n--- hosts ---\n${existsSync(join(dir, 'hosts')) ? readFileSync(join(dir, 'hosts'), 'utf8') : ''}`;
      expect(r.stdout, all).toContain('start: 0');
      expect(out).toContain('the NATS at nats://127.0.0.1:4222 accepts anonymous clients (no role enforced): not using it');
      expect(out).toContain('nothing answers at nats://127.0.0.1:4223: starting a private nats-server on 127.0.0.1:4223');
      expect(out).toMatch(/nats\s+private\s+127\.0\.0\.1:4223, one user per role/);
      for (const s of present) expect(out).toMatch(new RegExp(`^${s}\\s+running`, 'm'));
      expect(out).not.toContain(INSECURE_BANNER);
      expect(r.stdout, all).toContain('url-file: nats://127.0.0.1:4223');
      // `npx vmsave` with NATS_URL unset reaches that NATS (as the client role) and sees the executor.
      expect(r.stdout, all).toContain('cli: 0');
      // …as the client role from the start: no anonymous attempt first, so the server logs no authentication error for it.
      expect(out).not.toMatch(/authentication error/i);
      if (present.includes('executor')) expect(readFileSync(join(dir, 'hosts'), 'utf8')).toContain('"host"');
      expect(r.stdout).toMatch(/url-file-after: *$/m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--dev runs every service from its sources through tsx', async () => {
    const p = await ports();
    const run = startStack(['--dev', '--check', '--check-seconds', '5'], p.env);
    const code = await run.exited;
    const out = run.output();
    expect(code, out).toBe(0);
    for (const s of present) {
      expect(out).toMatch(new RegExp(`^${s}\\s+running`, 'm'));
      expect(out).toMatch(new RegExp(`started ${s} \\(pid \\d+, from its sources\\)`));
    }
  });

  it('refuses to start a private NATS without the generated secrets, naming the fix', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'vmsave-start-empty-'));
    try {
      const p = await ports();
      const run = startStack(['--check', '--check-seconds', '1'], p.env, empty);
      expect(await run.exited).toBe(1);
      expect(run.output()).toMatch(/VMSAVE_NATS_PASS_CLIENT is not set.*npm run setup/);
      expect(await portAnswers('127.0.0.1', p.nats)).toBe(false);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
