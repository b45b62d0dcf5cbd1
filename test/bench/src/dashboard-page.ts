/**
 * Paging and filter benchmark of the read model (not a test): seeds 100,000 jobs through the real
 * projection under a unique Redis prefix, then times `GET /api/jobs` on a real dashboard (HTTP),
 * the store's `queryJobs` alone, and the `vmsave jobs` command (a whole CLI process), printing
 * p50/p99 per query. Target: every page ≤ 200 ms.
 *
 *   npm run bench:page -w @vmsave/dashboard
 *   npm run bench:page -w @vmsave/dashboard -- --jobs 100000 --reps 50 --cli-reps 5
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Bus, createLogger } from '@vmsave/bus';
import { connectRedis, Projection, queryJobs, type JobQuery } from '@vmsave/store';
import { REPO, killAllNow, startNats, stopAll } from '@vmsave/scheduler/bench/procs';
import { createDashboard } from '@vmsave/dashboard';
import { seedHost, seedJobs, seedVm } from '@vmsave/dashboard/test/seed';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : def;
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name}: a positive integer, got ${process.argv[i + 1]}`);
  return v;
}
const N = arg('jobs', 100_000);
const REPS = arg('reps', 50);
const CLI_REPS = arg('cli-reps', 5);
const say = (m: string) => console.log(`[page ${new Date().toISOString().slice(11, 19)}] ${m}`);
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const prefix = `bench-page-${Date.now().toString(36)}`;
const dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-bench-page-'));
process.on('exit', killAllNow);
const redis = await connectRedis(redisUrl, { name: 'bench-page' });
const projection = new Projection(redis, prefix);
try {
  const t0 = performance.now();
  const seeded = await seedJobs(redis, prefix, { jobs: N });
  const seedS = (performance.now() - t0) / 1000;
  say(
    `seeded ${seeded.jobs} jobs (${seeded.events} events) through Projection.applyBatch in ${seedS.toFixed(1)} s (${Math.round(seeded.events / seedS)} events/s), prefix ${prefix}`,
  );

  const nats = await startNats(dir);
  const bus = await Bus.connect({ servers: nats.url, name: 'bench-page' });
  await bus.ensureStreams();
  const app = await createDashboard({ bus, redis, prefix, log: createLogger('bench-page', { level: 'warn' }), project: false });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const port = (app.server.address() as { port: number }).port;

  const day = Date.now() - 86_400_000;
  const cases: Array<[string, JobQuery, string]> = [
    ['first page, all', { limit: 50 }, ''],
    ['page 101, all', { limit: 50, offset: 5000 }, '&offset=5000'],
    ['last page, all', { limit: 50, offset: N - 50 }, `&offset=${Math.min(N - 50, 1_000_000)}`],
    ['oldest first', { limit: 50, order: 'oldest' }, '&order=oldest'],
    ['state failed', { states: ['failed'], limit: 50 }, '&state=failed'],
    ['state verified, page 20', { states: ['verified'], limit: 50, offset: 1000 }, '&state=verified&offset=1000'],
    ['active tab (4 states)', { states: ['requested', 'scheduled', 'running', 'completed'], limit: 50 }, '&state=requested,scheduled,running,completed'],
    ['problems tab (2 states)', { states: ['failed', 'rejected'], limit: 50 }, '&state=failed,rejected'],
    ['vm', { vm: seedVm(42), limit: 50 }, `&vm=${seedVm(42)}`],
    ['host', { host: seedHost(7), limit: 50 }, `&host=${seedHost(7)}`],
    ['host + state failed', { host: seedHost(7), states: ['failed'], limit: 50 }, `&host=${seedHost(7)}&state=failed`],
    ['kind restore + completed', { kind: 'restore', states: ['completed'], limit: 50 }, '&kind=restore&state=completed'],
    ['last 24 h', { since: day, limit: 50 }, `&since=${day}`],
    ['kind save, last 24 h, failed', { kind: 'save', since: day, states: ['failed'], limit: 50 }, `&kind=save&since=${day}&state=failed`],
  ];

  const rows: string[][] = [];
  for (const [name, q, qs] of cases) {
    const http: number[] = [];
    const store: number[] = [];
    let total = 0;
    for (let r = 0; r < REPS; r++) {
      let t = performance.now();
      const res = await fetch(`http://127.0.0.1:${port}/api/jobs?limit=50${qs}`);
      const body = (await res.json()) as { total: number; items: unknown[] };
      if (!res.ok) throw new Error(`${name}: ${res.status} ${JSON.stringify(body)}`);
      http.push(performance.now() - t);
      total = body.total;
      t = performance.now();
      await queryJobs(redis, prefix, q);
      store.push(performance.now() - t);
    }
    rows.push([name, total.toLocaleString('en'), pct(http, 50).toFixed(1), pct(http, 99).toFixed(1), pct(store, 50).toFixed(1), pct(store, 99).toFixed(1)]);
  }

  // `vmsave jobs`: a whole CLI process (start, NATS, Redis, the same queryJobs), and the query's share.
  const cli: number[] = [];
  let cliOut = '';
  for (let r = 0; r < CLI_REPS; r++) {
    const t = performance.now();
    const p = spawnSync(
      process.execPath,
      ['--conditions=development', '--import', 'tsx', 'packages/cli/src/main.ts', 'jobs', '--state', 'verified', '--vm', seedVm(42), '--json'],
      {
        cwd: REPO,
        env: { ...process.env, NATS_URL: nats.url, REDIS_URL: redisUrl, VMSAVE_REDIS_PREFIX: prefix },
        encoding: 'utf8',
      },
    );
    cli.push(performance.now() - t);
    if (p.status !== 0) throw new Error(`vmsave jobs exited ${p.status}: ${p.stderr}`);
    cliOut = p.stdout;
  }
  const cliDoc = JSON.parse(cliOut) as { source: string; total: number };

  const w = [30, 9, 10, 10, 10, 10];
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  console.log(`\n${N.toLocaleString('en')} jobs in the read model, ${REPS} repetitions per query, page size 50 (ms)\n`);
  console.log(line(['query', 'matches', 'HTTP p50', 'HTTP p99', 'store p50', 'store p99']));
  console.log(line(w.map((n) => '-'.repeat(n))));
  for (const r of rows) console.log(line(r));
  console.log(
    `\nvmsave jobs --state verified --vm ${seedVm(42)} --json (whole process, source ${cliDoc.source}, ${cliDoc.total} matches): p50 ${pct(cli, 50).toFixed(0)} ms, max ${Math.max(...cli).toFixed(0)} ms over ${CLI_REPS} runs`,
  );
  const worst = Math.max(...rows.map((r) => Number(r[3])));
  console.log(`worst HTTP p99 ${worst.toFixed(1)} ms: ${worst <= 200 ? 'within' : 'ABOVE'} the 200 ms target`);
  await app.close();
  await bus.close();
} finally {
  await projection.clear();
  redis.disconnect();
  await stopAll();
  await rm(dir, { recursive: true, force: true });
}
