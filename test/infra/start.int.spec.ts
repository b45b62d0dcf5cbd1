/**
 * `npm start` (infra/start.ts built to infra/dist/start.js, starting each service's dist/main.js)
 * with private NATS and Redis on free loopback ports and a temp data directory holding freshly
 * generated secrets: the shared servers are never touched. Needs `npm run build` (turbo runs the
 * builds before this package's tests).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bus } from '@vmsave/bus';
import { VmsaveClient } from '@vmsave/client';
import { uniq, waitFor } from '@vmsave/testkit';
import { REPO_ROOT, freePort, generateNatsPasswords, generateSecret, portAnswers, startNatsServer, startRedisServer } from '@vmsave/infra/servers';
import { passwordVar, roles, type Role } from '@vmsave/infra/permissions';

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

beforeAll(() => {
  for (const f of ['infra/dist/start.js', ...present.map((s) => `services/${s}/dist/main.js`)]) {
    if (!existsSync(join(REPO_ROOT, f))) throw new Error(`${f} is missing: run npm run build first`);
  }
  dataDir = mkdtempSync(join(tmpdir(), 'vmsave-start-'));
  passwords = generateNatsPasswords();
  redisPass = generateSecret();
  const lines = [`VMSAVE_DASHBOARD_TOKEN=${generateSecret()}`, ...roles.map((r) => `${passwordVar(r)}=${passwords[r]}`), `VMSAVE_REDIS_PASS=${redisPass}`];
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

async function ports() {
  const nats = await freePort();
  const redis = await freePort();
  return { nats, redis, env: { NATS_URL: `nats://127.0.0.1:${nats}`, REDIS_URL: `redis://127.0.0.1:${redis}` } };
}

describe('npm start', () => {
  it('--check starts private servers and every service, reports them running, and stops it all', async () => {
    const p = await ports();
    const run = startStack(['--check', '--check-seconds', '5'], p.env);
    const code = await run.exited;
    const out = run.output();
    expect(code, out).toBe(0);
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
    expect(await portAnswers('127.0.0.1', p.nats)).toBe(false);
    expect(await portAnswers('127.0.0.1', p.redis)).toBe(false);
  });

  it('runs the stack with role users: the client library request reaches the scheduler, which answers and logs it; SIGTERM stops cleanly', async () => {
    const p = await ports();
    const run = startStack([], p.env);
    try {
      await waitForOutput(run, 'every service started', (out) => present.every((s) => out.includes(`started ${s} (pid`)));
      if (present.includes('scheduler')) await waitForOutput(run, 'the scheduler running', (out) => out.includes('"msg":"scheduler running"'));
      await waitForOutput(run, 'every service running', (out) => out.includes('[start] every service running'));
      expect(run.output()).not.toContain('from its sources');

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
