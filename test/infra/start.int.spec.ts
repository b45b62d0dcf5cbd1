/**
 * `npm start` (infra/start.ts) with private NATS and Redis on free loopback ports and a temp
 * data directory holding freshly generated secrets: the shared servers are never touched.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createInbox } from '@nats-io/nats-core';
import { jobIdFor, messages, subjects } from '@vmsave/contracts';
import { Bus, publishValidated, readLog } from '@vmsave/bus';
import { uniq, waitFor } from '@vmsave/testkit';
import { REPO_ROOT, freePort, generateNatsPasswords, generateSecret, portAnswers } from '../../infra/lib/servers.ts';
import { passwordVar, roles, type Role } from '../../infra/nats/permissions.ts';

const SERVICES = ['scheduler', 'verifier', 'executor', 'dashboard'];
const present = SERVICES.filter((s) => existsSync(join(REPO_ROOT, 'services', s, 'src', 'main.ts')));

interface Run {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

let dataDir: string;
let passwords: Record<Role, string>;

beforeAll(() => {
  dataDir = mkdtempSync(join(tmpdir(), 'vmsave-start-'));
  passwords = generateNatsPasswords();
  const lines = [`VMSAVE_DASHBOARD_TOKEN=${generateSecret()}`, ...roles.map((r) => `${passwordVar(r)}=${passwords[r]}`), `VMSAVE_REDIS_PASS=${generateSecret()}`];
  writeFileSync(join(dataDir, 'env'), `${lines.join('\n')}\n`, { mode: 0o600 });
});
afterAll(() => rmSync(dataDir, { recursive: true, force: true }));

function startStack(args: string[], env: Record<string, string>, dir = dataDir): Run {
  const base = { ...process.env };
  for (const k of ['NATS_URL', 'REDIS_URL', 'NATS_USER', 'NATS_PASS']) delete base[k];
  const child = spawn(process.execPath, ['--import', 'tsx', 'infra/start.ts', ...args], {
    cwd: REPO_ROOT,
    env: { ...base, VMSAVE_DATA_DIR: dir, VMSAVE_DASHBOARD_PORT: '0', VMSAVE_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, output: () => out, exited };
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

  it('runs the stack with role users: a client request reaches the scheduler, which answers and logs it; SIGTERM stops cleanly', async () => {
    const p = await ports();
    const run = startStack([], p.env);
    try {
      await waitFor('every service started', () => present.every((s) => run.output().includes(`started ${s} (pid`)), 60_000);
      if (present.includes('scheduler')) await waitFor('the scheduler running', () => run.output().includes('"msg":"scheduler running"'), 60_000);

      const bus = await Bus.connect({ servers: p.env.NATS_URL, user: 'client', pass: passwords.client, name: 'start-test-client' });
      try {
        const requestId = uniq('req');
        const inbox = createInbox();
        const replies = bus.nc.subscribe(inbox, { max: 1 });
        await bus.nc.flush();
        await publishValidated(bus, messages.saveRequest, subjects.cmd.save, { requestId, vm: 'no-such-vm' }, { msgId: requestId, replyTo: inbox });
        if (present.includes('scheduler')) {
          for await (const m of replies) expect(m.json<{ requestId?: string }>()).toMatchObject({ requestId });
          const jobId = jobIdFor('save', requestId);
          const types = await waitFor('an event of the job in the log', async () => {
            const seen: string[] = [];
            for await (const e of readLog(bus, { filter: subjects.evtOfJob(jobId) })) seen.push(e.event.type);
            return seen.length ? seen : undefined;
          }, 30_000, 200);
          expect(types[0]).toBe('SaveRequested');
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
