/**
 * What one `pump()` costs with N jobs waiting, in isolation (no NATS, no Redis): the scheduler's
 * state is filled with N requested jobs spread over H hosts whose slots are all taken. The first
 * pass places the whole backlog (what a restart does, once); each later pass follows a change on
 * one host and visits only that host, so its cost does not grow with the backlog. `pickNext` over
 * the whole queue is shown for comparison (pump never hands it more than a host's queue heads).
 *
 *   npx tsx --conditions=development bench/pump-cost.ts [--backlogs 1000,10000,100000] [--hosts 50]
 */
import { performance } from 'node:perf_hooks';
import { makeEvent, type JobEvent } from '@vmsave/contracts';
import { createLogger, type Bus } from '@vmsave/bus';
import { evolve, initialState } from '@vmsave/jobs';
import type { Leases } from '@vmsave/store';
import { loadConfig } from '../src/config.ts';
import { Journal } from '../src/journal.ts';
import { Placement } from '../src/placement.ts';
import { SchedulerState } from '../src/state.ts';
import { pickNext, type QueuedJob } from '../src/policy.ts';
import { hostName, hostOfVm, vmName } from './fleet.ts';
import { percentile } from './stats.ts';

const argv = process.argv.slice(2);
const opt = (k: string, d: string) => {
  const i = argv.indexOf(`--${k}`);
  return i >= 0 ? argv[i + 1]! : d;
};
const backlogs = opt('backlogs', '1000,5000,10000').split(',').map(Number);
const hosts = Number(opt('hosts', '50'));
const vms = 1000;

async function measure(n: number): Promise<{ firstMs: number; pumpMs: number[]; pickMs: number[] }> {
  const cfg = loadConfig({});
  // The scheduler's state and its placement part, without NATS or Redis (nothing is dispatched).
  const log = createLogger('pump-cost', { level: 'silent' });
  const state = new SchedulerState();
  const deps = { bus: {} as Bus, state, leases: {} as Leases, cfg, log };
  const journal = new Journal({ ...deps, wake: () => undefined });
  const placement = new Placement({ ...deps, journal, signal: new AbortController().signal });
  const s = {
    setHost: (v: { announcement: unknown; lastSeenMs: number }) => state.setHost(v as Parameters<typeof state.setHost>[0]),
    put: state.put.bind(state),
    pump: () => placement.pump(),
  };
  const now = new Date().toISOString();
  for (let h = 0; h < hosts; h++) {
    s.setHost({
      lastSeenMs: Date.now(),
      announcement: {
        schemaVersion: 1,
        host: hostName(h),
        executorId: 'x',
        at: now,
        startedAt: now,
        sharedImageDir: false,
        qemu: { version: '10.0.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
        imageDir: '/images',
        freeBytes: 2 ** 50,
        vms: Array.from({ length: vms / hosts }, (_, k) => ({ name: vmName(k * hosts + h), uuid: 'u', machine: 'q35', memoryMiB: 1024, vcpus: 1, status: 'running' })),
      },
    });
  }
  const add = (id: string, events: JobEvent[]) => s.put(id, events.reduce(evolve, initialState()));
  // Two running jobs per host: every slot is taken, so pump only walks the queue.
  for (let h = 0; h < hosts * 2; h++) {
    const id = `s-busy${h}`;
    const vm = vmName(h % vms);
    add(id, [
      makeEvent(
        'SaveRequested',
        id,
        { request: { schemaVersion: 1, requestId: id, vm, format: 'auto', channels: 1, directIo: false, after: 'running', priority: 'normal' } },
        { source: 'probe' },
      ),
      makeEvent('SaveScheduled', id, { host: hostName(hostOfVm(h % vms, hosts)), attempt: 1, fencingToken: h + 1, deadlineAt: now }, { source: 'probe' }),
    ]);
  }
  for (let i = 0; i < n; i++) {
    const id = `s-q${i}`;
    add(id, [
      makeEvent(
        'SaveRequested',
        id,
        { request: { schemaVersion: 1, requestId: id, vm: vmName(i % vms), format: 'auto', channels: 1, directIo: false, after: 'running', priority: 'normal' } },
        { source: 'probe', at: new Date(Date.now() + i) },
      ),
    ]);
  }
  // The first pass places the whole backlog (once, as after a restart); every later pass visits
  // only the hosts where something changed: here one host per pass, whose slots are all taken.
  const t0 = performance.now();
  await s.pump();
  const firstMs = performance.now() - t0;
  const pumpMs: number[] = [];
  for (let k = 0; k < 60; k++) {
    state.revisit(hostName(k % hosts));
    const t = performance.now();
    await s.pump();
    pumpMs.push(performance.now() - t);
  }
  // pickNext alone, on the same queue.
  const queue: QueuedJob[] = Array.from({ length: n }, (_, i) => ({
    jobId: `s-q${i}`,
    host: hostName(hostOfVm(i % vms, hosts)),
    vm: vmName(i % vms),
    priority: 'normal',
    requestedAtMs: Date.now() + i,
  }));
  const active = new Map(Array.from({ length: hosts }, (_, h) => [hostName(h), 2] as const));
  const busy = new Set(Array.from({ length: hosts * 2 }, (_, h) => vmName(h)));
  const pickMs: number[] = [];
  for (let k = 0; k < 60; k++) {
    const t = performance.now();
    pickNext(queue, active, busy, () => 2, Date.now() + n);
    pickMs.push(performance.now() - t);
  }
  return { firstMs, pumpMs: pumpMs.slice(10), pickMs: pickMs.slice(10) };
}

console.log('| jobs queued | first pump() (places the backlog once) | pump() after a change on one host p50 | p90 | pickNext() over the whole queue p50 (not what pump calls) |');
console.log('|---:|---:|---:|---:|---:|');
for (const n of backlogs) {
  const { firstMs, pumpMs, pickMs } = await measure(n);
  console.log(
    `| ${n.toLocaleString('en-US')} | ${firstMs.toFixed(1)} ms | ${percentile(pumpMs, 50).toFixed(3)} ms | ${percentile(pumpMs, 90).toFixed(3)} ms | ${percentile(pickMs, 50).toFixed(2)} ms |`,
  );
}
