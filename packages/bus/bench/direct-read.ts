/**
 * Reading the event log through an ephemeral ordered consumer (the services, and clients before
 * issue 14) against direct get (clients and the dashboard now), on a private nats-server.
 *
 *   npx tsx --conditions=development packages/bus/bench/direct-read.ts [events=10000] [runs=5]
 *
 * Prints medians (ms) of: the whole log (10k events); one job's 10 events among them (what
 * `vmsave job <id>` reads); the first live event of a follow (what `vmsave watch` shows):
 * from opening the follow, and from the publish.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SaveRequest, jobIdFor, makeEvent, subjects } from '@vmsave/contracts';
import { answers, freePort, waitFor } from '@vmsave/testkit';
import { Bus, readDirect, readLog } from '../src/index.ts';

const total = Number(process.argv[2] ?? 10_000);
const runs = Number(process.argv[3] ?? 5);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const port = await freePort();
const dir = mkdtempSync(join(tmpdir(), 'vmsave-direct-bench-'));
const nats = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' });
try {
  await waitFor('nats-server', () => answers(port));
  const bus = await Bus.connect({ servers: `nats://127.0.0.1:${port}`, name: 'direct-bench' });
  await bus.ensureStreams();
  const request = SaveRequest.parse({ requestId: 'r', vm: 'vm1' });
  const jobs: string[] = [];
  // `total` events: jobs of 10 events each, interleaved in groups as a busy fleet writes them.
  const perJob = 10;
  for (let j = 0; j < total / perJob; j++) jobs.push(jobIdFor('save', `bench-${j}`));
  for (let i = 0; i < perJob; i++) {
    const batch: Promise<unknown>[] = [];
    for (const job of jobs) batch.push(bus.js.publish(subjects.evt(job, 'SaveRequested'), JSON.stringify(makeEvent('SaveRequested', job, { request }, { source: 'scheduler' }))));
    await Promise.all(batch);
  }
  const count = async (it: AsyncIterable<unknown>) => {
    let n = 0;
    for await (const _ of it) n++;
    return n;
  };
  const time = async (label: string, f: () => Promise<number>, expect: number) => {
    const ms: number[] = [];
    for (let r = 0; r < runs; r++) {
      const t = performance.now();
      const n = await f();
      ms.push(performance.now() - t);
      if (n !== expect) throw new Error(`${label}: read ${n}, expected ${expect}`);
    }
    console.log(`${label.padEnd(58)} median ${median(ms).toFixed(1).padStart(8)} ms  (runs ${ms.map((x) => x.toFixed(0)).join(' ')})`);
    return median(ms);
  };
  console.log(`${total} events, ${jobs.length} jobs of ${perJob}; ${runs} runs each`);
  const c = await time('whole log: ordered consumer', () => count(readLog(bus, { via: 'consumer' })), total);
  const w = await time('whole log: direct get, next_by_subj walk', () => count(readDirect(bus, { strategy: 'walk' })), total);
  for (const window of [16, 64, 256]) await time(`whole log: direct get by seq, ${window} in flight`, () => count(readDirect(bus, { strategy: 'seq', window })), total);
  const d = await time('whole log: readLog via direct (default: seq, 256)', () => count(readLog(bus, { via: 'direct' })), total);
  console.log(`whole log ratio direct/consumer ${(d / c).toFixed(2)}, walk/consumer ${(w / c).toFixed(2)}`);
  const job = jobs[Math.floor(jobs.length / 2)]!;
  const f = subjects.evtOfJob(job);
  const jc = await time('one job (vmsave job): ordered consumer', () => count(readLog(bus, { via: 'consumer', filter: f })), perJob);
  const jw = await time('one job (vmsave job): direct get walk (default)', () => count(readLog(bus, { via: 'direct', filter: f })), perJob);
  await time('one job: direct get by seq over the whole log, 256 in flight', () => count(readDirect(bus, { strategy: 'seq', window: 256, filter: f })), perJob);
  console.log(`one job ratio direct/consumer ${(jw / jc).toFixed(2)}`);
  // `vmsave job <id>`: how long until its first event is there (the read opened, one event out).
  const firstOf = async (via: 'consumer' | 'direct') => {
    const t = performance.now();
    const it = readLog(bus, { via, filter: f });
    await it.next();
    const ms = performance.now() - t;
    await it.return(undefined);
    return ms;
  };
  for (const via of ['consumer', 'direct'] as const) {
    const ms: number[] = [];
    for (let r = 0; r < runs * 2; r++) ms.push(await firstOf(via));
    console.log(`one job (vmsave job): first event after ${median(ms).toFixed(2)} ms via ${via} (median of ${ms.length})`);
  }

  // `vmsave watch`: follow from the end of the log; one event is published once the follow is open.
  for (const via of ['consumer', 'direct'] as const) {
    const sinceOpen: number[] = [];
    const sincePublish: number[] = [];
    for (let r = 0; r < runs * 2; r++) {
      const last = (await bus.jsm.streams.info('VMSAVE_EVT')).state.last_seq;
      const ac = new AbortController();
      const job2 = jobIdFor('save', `watch-${via}-${r}`);
      const t0 = performance.now();
      let published = 0;
      const it = readLog(bus, { fromSeq: last + 1, follow: true, signal: ac.signal, via });
      const first = it.next();
      // Publish after a short pause (the command's user starts a save in another terminal).
      await new Promise((res) => setTimeout(res, 50));
      published = performance.now();
      await bus.js.publish(subjects.evt(job2, 'SaveRequested'), JSON.stringify(makeEvent('SaveRequested', job2, { request }, { source: 'scheduler' })));
      await first;
      const t1 = performance.now();
      sinceOpen.push(t1 - t0);
      sincePublish.push(t1 - published);
      ac.abort();
      await it.return(undefined);
    }
    console.log(`watch (${via}): first live event ${median(sincePublish).toFixed(2)} ms after its publish (median of ${sincePublish.length})`);
  }
  await bus.close();
} finally {
  nats.kill('SIGTERM');
  await new Promise((r) => nats.once('exit', r));
  rmSync(dir, { recursive: true, force: true });
}
