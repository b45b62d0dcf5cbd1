/**
 * The production install, for real: `npm run build`, the pruned tree of the four services
 * (infra/prod-tree.sh, what the Dockerfile's images hold), `npm ci --omit=dev` in it, and every
 * service started from it as `node services/<name>/dist/main.js` against the real NATS and Redis
 * (testkit's urls; a Redis key prefix and an executor host of its own) until it logs that it is
 * running. Dev tools must be absent from that install and `npm ci` must not warn about engines.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import { REPO_ROOT, generateSecret } from '@vmsave/infra/servers';

const run = promisify(execFile);
const SERVICES = ['scheduler', 'verifier', 'executor', 'dashboard'] as const;
const MINUTES = 60_000;

let work: string;
let app: string;
let install = '';

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'vmsave-prod-'));
  app = join(work, 'app');
  // A cache hit when turbo has just built (the test task depends on the builds).
  await run('npm', ['run', 'build', '--', '--output-logs=errors-only'], { cwd: REPO_ROOT, timeout: 10 * MINUTES, maxBuffer: 64 << 20 });
  await run('bash', [join(REPO_ROOT, 'infra/prod-tree.sh'), app], { cwd: REPO_ROOT, timeout: 2 * MINUTES });
  const ci = await run('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund'], { cwd: app, timeout: 10 * MINUTES, maxBuffer: 64 << 20 });
  install = `${ci.stdout}${ci.stderr}`;
}, 25 * MINUTES);

// Removing the installed tree can take longer than the default 10 s hook timeout on a loaded machine.
afterAll(() => {
  if (work && !process.env.VMSAVE_KEEP_PROD) rmSync(work, { recursive: true, force: true });
}, 2 * MINUTES);

describe('the production install', () => {
  it('has the services and their packages as built JavaScript, and no dev tool', async () => {
    expect(install).not.toMatch(/EBADENGINE/);
    for (const s of SERVICES) expect(existsSync(join(app, 'services', s, 'dist', 'main.js')), s).toBe(true);
    for (const dev of ['tsx', 'vitest', 'typescript', 'turbo', '@vmsave/testkit', 'testcontainers', 'playwright-core']) {
      expect(existsSync(join(app, 'node_modules', dev)), `${dev} is installed`).toBe(false);
    }
    for (const test of ['test', 'examples', 'packages/cli', 'packages/testkit']) expect(existsSync(join(app, test)), test).toBe(false);
    // The native addons were built for this Node.
    expect(existsSync(join(app, 'node_modules/usocket/build/Release/uwrap.node'))).toBe(true);
    const { stdout } = await run('du', ['-sh', join(app, 'node_modules')]);
    console.log(`production node_modules: ${stdout.trim().split(/\s+/)[0]}`);
  });

  it(
    'starts every service with node services/<name>/dist/main.js until it is running, and stops it',
    async () => {
      const urls = await testUrls();
      const id = uniq('prod');
      const env: NodeJS.ProcessEnv = {
        PATH: process.env.PATH,
        HOME: process.env.HOME,
        NATS_URL: urls.natsUrl,
        REDIS_URL: urls.redisUrl,
        VMSAVE_REDIS_PREFIX: id.replace(/[^A-Za-z0-9_-]/g, '_'),
        VMSAVE_HOST: id.replace(/[^A-Za-z0-9_-]/g, '-'),
        VMSAVE_STATE_DIR: join(work, 'executor'),
        VMSAVE_DASHBOARD_PORT: '0',
        VMSAVE_DASHBOARD_TOKEN: generateSecret(),
        VMSAVE_LOG_LEVEL: 'info',
        // No --conditions=development: other packages resolve to their dist/.
        NODE_OPTIONS: '',
      };
      const procs: { name: string; child: ChildProcess; out: () => string; exited: Promise<number | null> }[] = [];
      try {
        for (const name of SERVICES) {
          const child = spawn(process.execPath, [`services/${name}/dist/main.js`], { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] });
          let out = '';
          child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
          child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
          const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
          procs.push({ name, child, out: () => out, exited });
        }
        for (const p of procs) {
          // The dashboard says it is listening once its HTTP server is up.
          const running = new RegExp(`"msg":"${p.name} (running|listening)"`);
          await waitFor(
            `${p.name} running`,
            () => {
              if (p.child.exitCode !== null) throw new Error(`${p.name} exited with ${p.child.exitCode}:\n${p.out().slice(-3000)}`);
              return running.test(p.out());
            },
            2 * MINUTES,
            200,
          ).catch((err: Error) => {
            throw new Error(`${err.message}\n--- ${p.name} output (tail) ---\n${p.out().slice(-3000)}`);
          });
          // Running from the pruned tree, not from the workspace.
          expect(p.out(), p.name).not.toContain(REPO_ROOT);
        }
      } finally {
        for (const p of procs) p.child.kill('SIGTERM');
        const codes = await Promise.all(procs.map((p) => p.exited));
        for (const [i, p] of procs.entries()) expect(codes[i], `${p.name}:\n${p.out().slice(-2000)}`).toBe(0);
      }
    },
    5 * MINUTES,
  );
});
